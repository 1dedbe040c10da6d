"""The write lease as tables (no servers, no clock: times are given): how heartbeats renew it, how a stall
breaks it, and what only a peer (or an operator) can mend; plus the pure helpers around it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from safehold.config import FailoverSection, HaSection, lease_problem
from safehold.ha.fencing import (
    ConfirmedLeases,
    confirmation_from,
    lease_runout,
    request_override,
    take_override,
)
from safehold.ha.peers import LocalReport
from safehold.runtime.writelease import Confirmation, WriteLease, clock

OK, NONE, OVERRIDE, DENIED = (Confirmation.CONFIRMED, Confirmation.UNCONFIRMED, Confirmation.OVERRIDE,
                              Confirmation.DENIED)


def replay(ticks: list[tuple[float, Confirmation]], duration: float = 3.0,
           start: WriteLease | None = None) -> WriteLease:
    lease = start or WriteLease(duration)
    for at, confirmation in ticks:
        lease = lease.renew(at, confirmation)
    return lease


@pytest.mark.parametrize(("ticks", "now", "valid"), [
    pytest.param([], 0.0, False, id="never renewed: no write"),
    pytest.param([(0, OK)], 2.9, True, id="confirmed by a peer: holds for its length"),
    pytest.param([(0, OK)], 3.0, False, id="...and no longer"),
    pytest.param([(0, NONE)], 1.0, False, id="a first tick without a peer renews nothing"),
    pytest.param([(0, OK), (1, NONE), (2, NONE), (3.5, NONE), (5, NONE)], 7.9, True,
                 id="punctual ticks without a peer (dead read-only server) keep it"),
    pytest.param([(0, OK), (1, NONE), (10, NONE)], 10.5, False,
                 id="a stall longer than the lease breaks the chain: a late tick does not renew"),
    pytest.param([(0, OK), (1, NONE), (10, NONE), (11, NONE)], 11.5, False,
                 id="...nor do the punctual ticks after it"),
    pytest.param([(0, OK), (1, NONE), (10, NONE), (11, OK)], 13.9, True, id="only a peer mends it"),
    pytest.param([(0, OK), (10, NONE), (11, OVERRIDE)], 13.9, True, id="or an operator's override"),
    pytest.param([(0, OK), (10, OVERRIDE), (11, NONE), (12, NONE)], 14.9, True,
                 id="after an override, punctual ticks keep it again"),
    pytest.param([(0, OK), (2.9, NONE)], 5.8, True, id="a tick just inside the lease renews it"),
    pytest.param([(0, OK), (3.0, NONE)], 3.1, False, id="a tick at its very end does not"),
    pytest.param([(0, OK), (1, DENIED)], 2.9, True, id="a peer being promoted takes nothing away..."),
    pytest.param([(0, OK), (1, DENIED), (2, NONE)], 3.1, False,
                 id="...but breaks the chain: no punctual tick renews it after"),
    pytest.param([(0, OK), (1, DENIED), (2, DENIED), (2.5, NONE)], 4.0, False, id="it runs out where it was"),
    pytest.param([(0, OK), (1, DENIED), (2, OK)], 3.5, False,
                 id="another peer's confirmation does not mend it soon after (the promoted one missed a question)"),
    pytest.param([(0, OK), (1, DENIED), (7.5, OK)], 9.0, True, id="two lease lengths after the denial, it does"),
    pytest.param([(0, OK), (1, DENIED), (7.5, OK), (8.5, NONE)], 11.0, True,
                 id="...and punctual ticks keep it again after that confirmation"),
    pytest.param([(0, OK), (1, DENIED), (6.0, NONE)], 6.5, False, id="but not before one"),
    pytest.param([(0, OK), (1, DENIED), (2, OVERRIDE)], 4.5, True, id="an operator's override mends it at once"),
])
def test_renewal(ticks: list[tuple[float, Confirmation]], now: float, valid: bool) -> None:
    assert replay(ticks).valid(now) is valid


def test_a_request_that_began_before_a_stall_is_judged_when_it_commits() -> None:
    lease = replay([(0, OK), (1, NONE)])
    began, commits = 1.5, 9.0  # frozen in between
    assert lease.valid(began) and not lease.valid(commits)


def test_the_clock_never_goes_back() -> None:
    a = clock()
    assert clock() >= a
    lease = replay([(5, OK)])
    assert not lease.valid(4.0)  # a time before the renewal proves nothing


def test_descriptions() -> None:
    assert "never confirmed" in WriteLease(3.0).describe(0)
    assert replay([(0, OK)]).describe(1.0) == "the write lease holds for 2.0 s more"
    assert replay([(0, OK)]).describe(10.0).startswith("the write lease ran out 7.0 s ago (it lasts 3 s)")
    assert replay([(0, OK)]).remaining(10.0) == 0.0


@pytest.mark.parametrize(("peers", "reports", "expected"), [
    pytest.param([], [], OK, id="no other server: nobody could have taken over"),
    pytest.param(["https://ro"], [], NONE, id="a peer that did not answer"),
    pytest.param(["https://ro"], [LocalReport(cluster_id="c1", generation=1)], OK, id="a peer of the cluster answered"),
    pytest.param(["https://x"], [LocalReport(cluster_id="other")], NONE, id="a server of another cluster proves nothing"),
    pytest.param(["https://ro"], [LocalReport.from_json({"cluster_id": "c1"})], NONE,
                 id="a report that names no generation proves nothing"),
    pytest.param(["https://ro"], [LocalReport(cluster_id="c1", generation=2)], NONE,
                 id="a newer generation never confirms (even when no fence could be read from it)"),
    pytest.param(["https://ro", "https://s"], [LocalReport(cluster_id="c1", generation=2),
                                               LocalReport(cluster_id="c1", generation=1)], OK,
                 id="a peer at this generation confirms"),
    pytest.param(["https://ro"], [LocalReport(cluster_id="c1", generation=1, promoting=True)], DENIED,
                 id="a peer being promoted denies it"),
    pytest.param(["https://ro", "https://s"], [LocalReport(cluster_id="c1", generation=1, promoting=True),
                                               LocalReport(cluster_id="c1", generation=1)], DENIED,
                 id="...whatever the others say"),
    pytest.param(["https://x", "https://s"], [LocalReport(cluster_id="other", generation=1, promoting=True),
                                              LocalReport(cluster_id="c1", generation=1)], OK,
                 id="a promotion in another cluster is not this one's business"),
])
def test_confirmation_from_peer_reports(peers: list[str], reports: list[LocalReport],
                                        expected: Confirmation) -> None:
    assert confirmation_from("c1", 1, peers, reports) is expected


@pytest.mark.parametrize(("lease", "interval", "failover", "problem"), [
    (10.0, 2.0, FailoverSection(), None),
    (3.0, 2.0, FailoverSection(), "must be at least 2 x check_interval + peer_timeout (4)"),
    (10.0, 2.0, FailoverSection(enabled=True, ping_interval=1, ping_iterations=3), "must be shorter than"),
    (2.0, 0.5, FailoverSection(enabled=True, ping_interval=1, ping_iterations=3), None),
    (10.0, 2.0, FailoverSection(enabled=False, ping_interval=1, ping_iterations=3), None),  # not on: no clash
])
def test_lease_against_the_failover_threshold(lease: float, interval: float, failover: FailoverSection,
                                              problem: str | None) -> None:
    found = lease_problem(lease, interval, failover)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_the_default_lease_follows_the_check_interval() -> None:
    assert HaSection().write_lease == 10.0
    assert HaSection(check_interval=0.5).write_lease == 3.5  # 3 x 0.5 + the peer timeout (2)
    assert HaSection(check_interval=0.5, peer_timeout=0.5).write_lease == 2.5
    assert HaSection(check_interval=0.5, write_lease_seconds=1.5, peer_timeout=0.5).write_lease == 1.5
    with pytest.raises(ValueError, match="write_lease_seconds"):
        HaSection(failover=FailoverSection(enabled=True, ping_interval=1, ping_iterations=3))
    with pytest.raises(ValueError, match="peer_timeout"):  # a hung peer would make a heartbeat outlast it
        HaSection(check_interval=0.5, write_lease_seconds=2, peer_timeout=2)
    assert HaSection(check_interval=0.5, write_lease_seconds=2, peer_timeout=0.5).write_lease == 2


def test_a_promotion_is_in_the_report_both_ways() -> None:
    report = LocalReport(cluster_id="c1", generation=1, promoting=True)
    assert report.to_json()["promoting"] is True
    assert LocalReport.from_json(report.to_json()).promoting is True
    assert LocalReport.from_json({"cluster_id": "c1", "generation": 1}).promoting is False  # an older peer
    assert LocalReport.from_json({"promoting": "yes"}).promoting is False  # malformed: not a promotion


def test_the_promotion_waits_longer_than_the_lease() -> None:
    assert lease_runout(10.0) == 11.0
    assert lease_runout(2.0) == 2.5


def test_a_read_only_server_knows_how_long_the_leases_it_confirmed_may_last() -> None:
    leases = ConfirmedLeases(2.0)
    assert leases.wait(clock()) == 0.0  # it never answered: nothing to wait for
    assert leases.answer(False) is False
    answered = clock()
    assert 2.0 < leases.wait(answered) <= 2.5
    assert leases.wait(answered + 2.5) == 0.0
    assert leases.answer(True) is True  # "promoting" confirms nothing: the wait still counts from before
    assert leases.wait(answered + 2.5) == 0.0


def test_an_override_is_taken_once_by_each_process(tmp_path: Path) -> None:
    settings: Any = SimpleNamespace(data_dir=tmp_path)
    assert take_override(settings) is False  # none asked for
    request_override(settings)
    assert take_override(settings) is True
    assert take_override(settings) is False  # this process used it; another worker still finds it
    assert (tmp_path / "lease-override").exists()
    stamp = (tmp_path / "lease-override").stat().st_mtime_ns
    os.utime(tmp_path / "lease-override", ns=(stamp + 10**9, stamp + 10**9))  # asked for again
    assert take_override(settings) is True
    old = time.time() - 600
    os.utime(tmp_path / "lease-override", (old, old))  # too old: ignored
    assert take_override(settings) is False


def test_a_promotion_that_cannot_write_its_mark_changes_nothing(tmp_path: Path) -> None:
    from safehold.ha.promote import PromotionRefused, outlast_leases

    settings: Any = SimpleNamespace(data_dir=tmp_path / "gone", ha=SimpleNamespace(write_lease=2.0))
    said: list[str] = []
    with pytest.raises(PromotionRefused, match="cannot write promoting .*: not promoting"):
        outlast_leases(settings, said.append)
    assert said == []  # it did not start waiting
