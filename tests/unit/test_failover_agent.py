"""The failover executor with fake probes and fake callbacks: it counts rounds, probes the own side
every round (a dead witness is reported while the primary is well), promotes once, raises and clears
alarms, never raises itself and stops cleanly when cancelled. No network, no servers, no real sleeping."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from safehold.config import FailoverSection, HaSection, ServerSection, Settings
from safehold.domain import ServerRole
from safehold.ha.failover import Contact, FailoverState, ReplicaReport
from safehold.ha.failover_agent import MISCONFIGURED, PROMOTION_FAILED, FailoverWatch, Probes
from safehold.ha.probe import Target

DB = ("10.0.0.5", 5432)


def settings(primary_db: tuple[str, int] | None = DB, **failover: Any) -> Settings:
    fo = FailoverSection.model_validate({"enabled": True, "ping_interval": 5, "ping_iterations": 3,
                                         "witness_targets": ["10.1.1.1:53", "10.1.1.2"], **failover})
    ha = HaSection(primary_db_host=primary_db[0] if primary_db else None,
                   primary_db_port=primary_db[1] if primary_db else None, failover=fo, write_lease_seconds=6)
    return Settings(server=ServerSection(id=str(uuid.uuid4()), name="ro", role=ServerRole.READONLY), ha=ha)


@dataclass
class World:
    """Scripted probe results (the last value repeats) and what the watch did."""

    db: list[bool]
    targets: dict[str, list[bool | None]] = field(default_factory=dict)
    gateway: str | None = "10.0.0.254"
    db_calls: int = 0
    target_calls: list[str] = field(default_factory=list)
    app_calls: list[str] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    promote_error: Exception | None = None
    alarm: tuple[str, str] | None = None  # the server's alarm, as the agent holds it

    @staticmethod
    def _next(script: list[Any], i: int) -> Any:
        return script[min(i, len(script) - 1)]

    async def database(self, host: str, port: int, timeout: float) -> bool:
        assert (host, port) == DB and timeout > 0
        self.db_calls += 1
        return bool(self._next(self.db, self.db_calls - 1))

    async def app(self, url: str, timeout: float) -> bool:
        self.app_calls.append(url)
        return False

    async def target(self, t: Target, timeout: float) -> bool | None:
        self.target_calls.append(str(t))
        script = self.targets.get(str(t), [False])
        return self._next(script, sum(1 for c in self.target_calls if c == str(t)) - 1)  # type: ignore[no-any-return]

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)

    async def promote(self) -> None:
        self.calls.append(("promote",))
        if self.promote_error:
            raise self.promote_error

    async def raise_alarm(self, condition: str, message: str) -> None:
        self.calls.append(("raise", condition, message))
        self.alarm = (condition, message)

    async def clear_alarm(self, text: str) -> None:
        self.calls.append(("clear", text))
        self.alarm = None

    def watch(self, s: Settings | None = None, primary_url: str | None = "https://primary:8443") -> FailoverWatch:
        async def url() -> str | None:
            return primary_url

        probes = Probes(database=self.database, app=self.app, target=self.target, gateway=lambda: self.gateway,
                        ping_available=lambda: True)
        # the watch heard from the primary just before these rounds: its replica was streaming and caught up
        # (the lag and lease guards have tables of their own: test_failover_guards.py)
        heard = FailoverState(contact=Contact(0.0, "0/1000", True, None))

        async def replica() -> ReplicaReport:
            return ReplicaReport(True, "0/1000")

        return FailoverWatch(s or settings(), promote=self.promote, raise_alarm=self.raise_alarm,
                             clear_alarm=self.clear_alarm, primary_url=url, probes=probes, sleep=self.sleep,
                             replica=replica, clock=lambda: sum(self.sleeps), state=heard,
                             current_alarm=lambda: self.alarm, wall_clock=lambda: 1000.0 + sum(self.sleeps))


def kinds(calls: Iterable[tuple[str, ...]]) -> list[str]:
    return [c[0] if c[0] != "raise" else f"raise {c[1]}" for c in calls]


def test_promotes_once_after_the_limit_and_returns() -> None:
    w = World(db=[False], targets={"10.1.1.2": [True]})
    watch = w.watch()
    asyncio.run(asyncio.wait_for(watch.run_forever(), 5))
    assert watch.rounds == 3 and w.db_calls == 3
    assert kinds(w.calls) == ["promote"]
    assert len(w.sleeps) == 2 and all(0 < s <= 5 for s in w.sleeps)
    # the own side was probed every round: both witnesses and the default gateway
    assert sorted(w.target_calls) == ["10.0.0.254"] * 3 + ["10.1.1.1:53"] * 3 + ["10.1.1.2"] * 3
    assert w.app_calls == ["https://primary:8443"] * 3
    assert watch.state.promoted


def test_isolated_alarm_then_clear_then_promote() -> None:
    w = World(db=[False], targets={"10.1.1.2": [False, False, False, False, True]})
    watch = w.watch()
    asyncio.run(asyncio.wait_for(watch.run_forever(), 5))
    # 3: isolated (the failover's alarm holds the server's alarm; the dead witness and gateway wait), 4: still
    # isolated, 5: own side back (cleared; the witness alarm now names those confirmed down: 10.1.1.2 answered
    # once, not yet the three times in a row that count), 6: promote; the watch ends, and its alarm with it
    assert kinds(w.calls) == ["raise StandbyIsolated", "clear", "raise WitnessUnreachable", "promote", "clear"]
    assert watch.rounds == 6
    assert "not promoting" in w.calls[0][2]
    assert "own side is reachable again" in w.calls[1][1]
    assert "witness 10.1.1.1:53, witness 10.1.1.2, gateway 10.0.0.254 do not answer" in w.calls[2][2]
    assert w.alarm is None and watch.inputs == ()


def test_primary_back_resets_and_clears() -> None:
    w = World(db=[False, False, False, True, False, False, True])

    async def main() -> None:
        watch = w.watch()
        for _ in range(7):
            await watch.round()
        assert watch.state.consecutive_failures == 0 and not watch.state.alarm_raised

    asyncio.run(main())
    # the isolation alarm cleared, the witnesses and gateway still do not answer: their alarm follows
    assert kinds(w.calls) == ["raise StandbyIsolated", "clear", "raise WitnessUnreachable"]
    assert w.calls[1][1] == "StandbyIsolated cleared: the primary database is reachable again"
    assert len(w.target_calls) == 7 * 3  # own side probed every round


def test_may_promote_false() -> None:
    w = World(db=[False], targets={"10.1.1.2": [True]})

    async def main() -> None:
        watch = w.watch(settings(may_promote=False))
        for _ in range(5):
            await watch.round()

    asyncio.run(main())
    assert kinds(w.calls) == ["raise FailoverNotAllowed"]  # the witness alarm waits behind it
    assert len(w.target_calls) == 5 * 3  # probed all the same: their state is reported


def test_runs_until_cancelled_when_the_primary_is_up() -> None:
    w = World(db=[True], targets={t: [True] for t in ("10.1.1.1:53", "10.1.1.2", "10.0.0.254")})

    async def main() -> FailoverWatch:
        watch = w.watch()
        task = asyncio.create_task(watch.run_forever())
        while watch.rounds < 10:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return watch

    watch = asyncio.run(main())
    assert w.calls == [] and not watch.state.promoted and len(w.target_calls) >= 9 * 3


def test_failed_rounds_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    w = World(db=[False, False, True])
    caplog.set_level(logging.INFO, logger="safehold.ha.failover_agent")

    async def main() -> None:
        watch = w.watch()
        for _ in range(3):
            await watch.round()

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records]
    assert ("automatic failover: ping 1/3 failed: primary database 10.0.0.5:5432 unreachable; "
            "its app does not answer") in lines
    assert any(line.startswith("automatic failover: ping 2/3 failed") for line in lines)
    assert "automatic failover: primary database 10.0.0.5:5432 reachable again after 2 failed pings" in lines


def test_misconfigured_raises_an_alarm_and_returns() -> None:
    w = World(db=[False])
    asyncio.run(asyncio.wait_for(w.watch(settings(primary_db=None)).run_forever(), 5))
    assert kinds(w.calls) == [f"raise {MISCONFIGURED}"]
    assert "primary_db_host" in w.calls[0][2] and w.db_calls == 0

    w = World(db=[False])
    bad = Settings.model_validate({**settings().model_dump(), "ha": {
        **settings().ha.model_dump(), "failover": {"enabled": True, "witness_targets": ["bad host"]}}})
    asyncio.run(asyncio.wait_for(w.watch(bad).run_forever(), 5))
    assert kinds(w.calls) == [f"raise {MISCONFIGURED}"] and "'bad host'" in w.calls[0][2]


def test_failed_promotion_is_reported_not_retried() -> None:
    w = World(db=[False], targets={"10.1.1.1:53": [True]}, promote_error=RuntimeError("pg_ctl promote failed"))
    watch = w.watch()
    asyncio.run(asyncio.wait_for(watch.run_forever(), 5))
    assert kinds(w.calls) == ["promote", f"raise {PROMOTION_FAILED}"]
    assert "pg_ctl promote failed" in w.calls[1][2]


def test_a_broken_probe_skips_the_round() -> None:
    w = World(db=[False])

    async def broken(host: str, port: int, timeout: float) -> bool:
        raise RuntimeError("probe bug")

    async def main() -> FailoverWatch:
        watch = w.watch()
        watch._probes = Probes(database=broken, app=w.app, target=w.target, gateway=lambda: None)
        for _ in range(5):
            await watch.round()
        return watch

    watch = asyncio.run(main())
    assert watch.state.consecutive_failures == 0 and w.calls == []


def test_no_ping_program_gateway_unknown_witness_down() -> None:
    # host-only witness with no ping program: it counts as unreachable; the gateway as unknown
    w = World(db=[False], targets={"10.1.1.2": [None], "10.0.0.254": [None], "10.1.1.1:53": [False]})
    asyncio.run(_rounds(w, 3))
    assert kinds(w.calls) == ["raise StandbyIsolated"]


async def _rounds(w: World, n: int) -> None:
    watch = w.watch()
    for _ in range(n):
        await watch.round()


def test_a_dead_witness_is_reported_while_the_primary_answers_and_cleared_when_back() -> None:
    # 10.1.1.2 stops answering in round 2 and answers again from round 6; the primary answers throughout
    w = World(db=[True], targets={"10.1.1.1:53": [True], "10.0.0.254": [True],
                                  "10.1.1.2": [True, False, False, False, False, True]})

    async def main() -> list[str]:
        watch = w.watch()
        seen = []
        for _ in range(9):
            await watch.round()
            seen.append(next(i.reachable for i in watch.inputs if i.target == "10.1.1.2"))
        return seen

    seen = asyncio.run(main())
    # confirmed after three probes in a row each way (ha.status_confirm_checks): rounds 4 and 8
    assert seen == [True, True, True, False, False, False, False, True, True]
    assert kinds(w.calls) == ["raise WitnessUnreachable", "clear"]
    assert w.calls[0][2].startswith("witness 10.1.1.2 does not answer")
    assert "answer again" in w.calls[1][1] and w.alarm is None
    assert not any(c[0] == "promote" for c in w.calls)


def test_the_witness_alarm_never_replaces_another() -> None:
    w = World(db=[True], targets={"10.1.1.1:53": [True], "10.0.0.254": [True], "10.1.1.2": [False]})
    w.alarm = ("AuditSpoolFailed", "the disk is full")

    async def main() -> None:
        watch = w.watch()
        for _ in range(5):
            await watch.round()

    asyncio.run(main())
    assert w.calls == [] and w.alarm == ("AuditSpoolFailed", "the disk is full")
    w.alarm = None  # the other alarm cleared: the witness alarm is raised in the next round
    asyncio.run(main())
    assert kinds(w.calls) == ["raise WitnessUnreachable"]
