"""The schedules lease policy as a table: (what a server saw) -> what it does, and why."""

from __future__ import annotations

import asyncio

import pytest

from safehold.domain import ServerRole
from safehold.ha.lease import Decision, LeaseAction, LeaseConfig, LeaseView, ScheduledJobs, decide

P, S, SA, RO = ServerRole.PRIMARY, ServerRole.SECONDARY, ServerRole.STANDALONE, ServerRole.READONLY
ACQUIRE, KEEP, RELEASE, WAIT = LeaseAction.ACQUIRE, LeaseAction.KEEP, LeaseAction.RELEASE, LeaseAction.WAIT
CONFIG = LeaseConfig(primary_grace=30, free_grace=60)
OTHER = "7f0c2a52-0000-4000-8000-000000000002"

# (role, held by me, other holder, holder's heartbeat age, primary's heartbeat age, free for) -> action, reason
TABLE: list[tuple[tuple[ServerRole, bool, str | None, float | None, float | None, float], LeaseAction, str]] = [
    # the primary (or a standalone server) takes a free lease at once and keeps it
    ((P, False, None, None, None, 0), ACQUIRE, "the lease is free and I am the primary; taking it"),
    ((SA, False, None, None, None, 0), ACQUIRE, "the lease is free and I am the standalone; taking it"),
    ((P, True, None, None, None, 0), KEEP, "I am the primary and hold the lease"),
    ((P, True, None, None, 5, 0), KEEP, "I am the primary and hold the lease"),
    # ...but never takes it from a secondary that holds it: that one hands it back
    ((P, False, OTHER, 1, None, 0), WAIT, f"{OTHER} holds the lease; it hands it back to me, the primary"),
    # a secondary waits while the primary lives, whether the lease is free or not
    ((S, False, None, None, 3, 0), WAIT, "the lease is free but the primary is alive (heartbeat 3s ago); it takes it"),
    ((S, False, None, None, 30, 100), WAIT, "the lease is free but the primary is alive (heartbeat 30s ago); it takes it"),
    ((S, False, OTHER, 2, 2, 0), WAIT, f"{OTHER} holds the lease"),
    # a secondary takes a free lease once the primary has been silent for the grace period
    ((S, False, None, None, 31, 0), ACQUIRE, "the lease is free and the primary has not heartbeat for 31s; taking it"),
    # but not a held one, even from a silent holder: the lock goes only with its session
    ((S, False, OTHER, 400, 400, 0), WAIT,
     f"{OTHER} holds the lease but has not heartbeat for 400s; it is released when its connection dies"),
    ((S, False, "", None, None, 0), WAIT, "another server holds the lease"),
    # no primary heartbeat known (heartbeats not kept): free for free_grace seconds is enough
    ((S, False, None, None, None, 10), WAIT,
     "the lease is free for 10s, no primary heartbeat is known; waiting 60s for the primary"),
    ((S, False, None, None, None, 60), ACQUIRE,
     "the lease has been free for 60s and no primary heartbeat is known; taking it"),
    # a secondary holding the lease keeps it while the primary is silent, hands it back when it returns
    ((S, True, None, None, 90, 0), KEEP, "I am the secondary and hold the lease"),
    ((S, True, None, None, None, 0), KEEP, "I am the secondary and hold the lease"),
    ((S, True, None, None, 1, 0), RELEASE, "the primary is alive again (heartbeat 1s ago); handing the lease back"),
    # a read-only server never runs schedules
    ((RO, False, None, None, None, 999), WAIT, "a readonly server does not run schedules"),
    ((RO, True, None, None, None, 0), RELEASE, "a readonly server does not run schedules; releasing"),
]


@pytest.mark.parametrize(("seen", "action", "reason"), TABLE, ids=[r for _, _, r in TABLE])
def test_decide(seen: tuple[ServerRole, bool, str | None, float | None, float | None, float],
                action: LeaseAction, reason: str) -> None:
    role, mine, holder, holder_age, primary_age, free_for = seen
    view = LeaseView(role=role, held_by_me=mine, holder=holder, holder_heartbeat_age=holder_age,
                     primary_heartbeat_age=primary_age, free_for=free_for)
    assert decide(view, CONFIG) == Decision(action, reason)


def test_primary_and_secondary_never_both_want_a_free_lease_while_the_primary_lives() -> None:
    """Whatever the ages, a living primary (heartbeat within grace) and a secondary never both
    decide to acquire: at most one candidate at a time, the primary preferred."""
    for age in (0.0, 10.0, 29.9, 30.0):
        for free_for in (0.0, 59.0, 60.0, 600.0):
            primary = decide(LeaseView(P, False, free_for=free_for), CONFIG)
            secondary = decide(LeaseView(S, False, primary_heartbeat_age=age, free_for=free_for), CONFIG)
            assert primary.action == ACQUIRE
            assert secondary.action == WAIT, (age, free_for, secondary)


def test_jobs_run_every_interval_while_started_and_not_after_stop() -> None:
    async def scenario() -> tuple[int, int, bool]:
        calls: list[float] = []

        async def job() -> None:
            calls.append(asyncio.get_running_loop().time())

        jobs = ScheduledJobs({"backup": (0.02, job)})
        await jobs.start()
        await asyncio.sleep(0.15)
        await jobs.stop(False)
        after_stop = len(calls)
        await asyncio.sleep(0.1)
        return after_stop, len(calls), jobs.running

    after_stop, later, running = asyncio.run(scenario())
    assert after_stop >= 3
    assert later == after_stop
    assert not running


def test_a_handed_back_lease_lets_the_running_job_finish_a_lost_one_cancels_it() -> None:
    async def scenario(lost: bool) -> list[str]:
        events: list[str] = []
        started = asyncio.Event()

        async def slow() -> None:
            events.append("start")
            started.set()
            await asyncio.sleep(0.2)
            events.append("end")

        jobs = ScheduledJobs({"slow": (0.01, slow)})
        await jobs.start()
        await started.wait()
        await jobs.stop(lost)
        return events

    assert asyncio.run(scenario(False)) == ["start", "end"]
    assert asyncio.run(scenario(True)) == ["start"]


def test_a_failing_job_is_called_again() -> None:
    async def scenario() -> int:
        calls = 0

        async def broken() -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("disk full")

        jobs = ScheduledJobs({"broken": (0.01, broken)})
        await jobs.start()
        await asyncio.sleep(0.1)
        await jobs.stop(False)
        return calls

    assert asyncio.run(scenario()) >= 3
