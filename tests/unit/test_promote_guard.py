"""The checks before a promotion (``check_promotable``) as a table: the facts gathered from the replica and
the operator's limit and --force -> refused, the reasons not to promote, or go ahead.  Pure, no mocks."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from safehold.domain import ServerRole
from safehold.ha.cycle import data_age
from safehold.ha.promote import PromotionRefused, ReplicaFacts, check_promotable
from safehold.storage.replication import ReplicaView

R = ServerRole
FRESH = ReplicaFacts(role=R.READONLY, in_recovery=True, key_matches=True, data_age_seconds=2.0)
UNKNOWN = "the replica never heard from its primary: its data age is unknown"
TOO_OLD = "the replica's data is 120 s old, more than the limit of 60 s (ha.promote_max_data_age)"


@pytest.mark.parametrize(("facts", "limit", "force", "reasons"), [
    pytest.param(FRESH, 60.0, False, [], id="fresh data: go ahead"),
    pytest.param(replace(FRESH, data_age_seconds=60.0), 60.0, False, [], id="exactly at the limit: go ahead"),
    pytest.param(replace(FRESH, data_age_seconds=120.0), 60.0, False, [TOO_OLD], id="too old: refused"),
    pytest.param(replace(FRESH, data_age_seconds=120.0), 60.0, True, [], id="too old, --force: go ahead"),
    pytest.param(replace(FRESH, data_age_seconds=None), 60.0, False, [UNKNOWN], id="unknown data age: refused"),
    pytest.param(replace(FRESH, data_age_seconds=None), 60.0, True, [], id="unknown data age, --force: go ahead"),
    pytest.param(replace(FRESH, data_age_seconds=0.5), 0.0, False,
                 ["the replica's data is 0 s old, more than the limit of 0 s (ha.promote_max_data_age)"],
                 id="a limit of 0 s refuses any age"),
    pytest.param(replace(FRESH, in_recovery=False, data_age_seconds=None), 60.0, False, [],
                 id="already promoted (a promotion interrupted halfway, run again): go ahead"),
    pytest.param(replace(FRESH, in_recovery=False, data_age_seconds=500.0), 60.0, False, [],
                 id="already promoted: its data age no longer matters"),
])
def test_reasons_not_to_promote(facts: ReplicaFacts, limit: float, force: bool, reasons: list[str]) -> None:
    assert check_promotable(facts, max_data_age=limit, force=force) == reasons


@pytest.mark.parametrize(("facts", "force", "message"), [
    pytest.param(replace(FRESH, role=R.PRIMARY), False,
                 "this server is a primary server; only a read-only server (which has its own replica) can be "
                 "promoted", id="a primary"),
    pytest.param(replace(FRESH, role=R.SECONDARY), True,
                 "this server is a secondary server; only a read-only server (which has its own replica) can be "
                 "promoted", id="a secondary, even with --force"),
    pytest.param(replace(FRESH, role=R.STANDALONE), False,
                 "this server is a standalone server; only a read-only server (which has its own replica) can be "
                 "promoted", id="a standalone server"),
    pytest.param(replace(FRESH, key_matches=False), False,
                 "the key file does not match this replica's cluster; refusing to promote", id="the wrong key"),
    pytest.param(replace(FRESH, key_matches=False), True,
                 "the key file does not match this replica's cluster; refusing to promote",
                 id="the wrong key is never overridden by --force"),
    pytest.param(replace(FRESH, key_matches=False, in_recovery=False), True,
                 "the key file does not match this replica's cluster; refusing to promote",
                 id="the wrong key, already promoted, --force"),
])
def test_refused_whatever_the_force(facts: ReplicaFacts, force: bool, message: str) -> None:
    with pytest.raises(PromotionRefused) as refused:
        check_promotable(facts, max_data_age=60.0, force=force)
    assert refused.value.message == message


def test_the_wrong_key_says_which_key_to_use() -> None:
    with pytest.raises(PromotionRefused) as refused:
        check_promotable(replace(FRESH, key_matches=False), max_data_age=60.0, force=True)
    assert refused.value.hint == "use this cluster's key file (security.key_file)"


# --- the data age the limit is weighed against (ha.cycle.data_age) ----------------------------------------

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
STREAMING = ReplicaView(in_recovery=True, receiver_status="streaming", sender_host="10.0.0.5", sender_port=5432,
                        slot_name="ro", last_msg_send_time=None, last_msg_receipt_time=NOW - dt.timedelta(seconds=3),
                        latest_end_lsn=None, receive_lsn="0/10", replay_lsn="0/10", replay_backlog_bytes=0,
                        replay_delay_seconds=40.0)
CUT = replace(STREAMING, receiver_status=None)


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(("view", "caught_up_at", "age"), [
    pytest.param(STREAMING, None, 3.0, id="streaming, all replayed: as old as the last message from the primary"),
    pytest.param(STREAMING, ago(1), 1.0, id="the primary's reported position was replayed more recently: that"),
    pytest.param(STREAMING, ago(10), 3.0, id="the fresher of the two wins"),
    pytest.param(replace(STREAMING, replay_backlog_bytes=100), None, 40.0,
                 id="a replay backlog: only the last replayed commit's age"),
    pytest.param(CUT, None, 40.0, id="not streaming: the last replayed commit's age"),
    pytest.param(CUT, ago(25), 25.0, id="not streaming, but caught up 25 s ago"),
    pytest.param(replace(CUT, replay_delay_seconds=None), None, None, id="never heard from its primary: unknown"),
    pytest.param(replace(CUT, replay_delay_seconds=-2.0), None, 0.0, id="a clock ahead: never negative"),
    pytest.param(replace(STREAMING, in_recovery=False), ago(1), None, id="promoted: no data age"),
])
def test_data_age(view: ReplicaView, caught_up_at: dt.datetime | None, age: float | None) -> None:
    assert data_age(view, NOW, caught_up_at) == age
