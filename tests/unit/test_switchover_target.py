"""The switchover's preflight judgement on its target's own report, as a table (no servers)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from safehold.errors import SafeholdError
from safehold.ha.peers import LocalReport
from safehold.ha.switchover import Target, check_target

T = Target("id-r", "ro-1", "https://ro-1:8443")
READY = LocalReport(cluster_id="c1", role="readonly", mode="read-write", database_ok=True, data_age_seconds=1.0)


def ready(**changes: Any) -> LocalReport:
    return dataclasses.replace(READY, **changes)


@pytest.mark.parametrize(("report", "refusal"), [
    pytest.param(READY, None, id="a current read-only server of the cluster"),
    pytest.param(ready(data_age_seconds=10.0), None, id="data exactly as old as allowed"),
    pytest.param(ready(database_ok=None), None, id="an older version that does not say whether its database answers"),
    pytest.param(None, "ro-1 at https://ro-1:8443 does not answer", id="no answer"),
    pytest.param(ready(cluster_id="c2"), "serves another cluster", id="another cluster"),
    pytest.param(LocalReport(), "serves another cluster", id="an empty report"),
    pytest.param(ready(role="primary"), "is not a read-only server now (primary, read-write)", id="a primary"),
    pytest.param(ready(mode="fenced"), "is not a read-only server now (readonly, fenced)", id="fenced"),
    pytest.param(ready(role="", mode=""), "is not a read-only server now (None, None)", id="no role said"),
    pytest.param(ready(database_ok=False), "replica database does not answer", id="its database is down"),
    pytest.param(ready(data_age_seconds=None), "(data age unknown, at most 10 s needed)", id="data age unknown"),
    pytest.param(ready(data_age_seconds=10.5), "(data age 10.5 s, at most 10 s needed)", id="too old"),
])
def test_check_target(report: LocalReport | None, refusal: str | None) -> None:
    if refusal is None:
        check_target(T, report, "c1", 10.0)
        return
    with pytest.raises(SafeholdError) as e:
        check_target(T, report, "c1", 10.0)
    assert refusal in e.value.message and "not switching over" in e.value.message
