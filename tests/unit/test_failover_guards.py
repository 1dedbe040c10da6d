"""The two guards before an automatic promotion, as tables (no servers, no mocks): the lag guard (what the
replica had when the primary was last heard from) and the write-lease guard (not before a frozen primary's
lease has surely run out)."""

from __future__ import annotations

import pytest

from safehold.ha.failover import (
    FAILOVER_LAG,
    Action,
    Contact,
    FailoverPolicy,
    FailoverState,
    Observation,
    ReplicaReport,
    WriterReport,
    decide,
    lag_problem,
    lease_wait,
)
from safehold.ha.lsn import lag_bytes, parse_lsn

N, P, R, C = Action.NONE, Action.PROMOTE, Action.RAISE_ALARM, Action.CLEAR_ALARM
POLICY = FailoverPolicy(ping_iterations=3, max_lag_bytes=1000, probe_timeout=1.0, writer_lease=4.0)


def up(t: float, primary: str = "0/1000", received: str = "0/1000", streaming: bool = True,
       lease: float | None = 2.0, heard: float | None = 1.0) -> Observation:
    return Observation(True, True, now=t, writer=WriterReport(primary, lease),
                       replica=ReplicaReport(streaming, received, heard))


def down(t: float, received: str | None = "0/1000", streaming: bool = False) -> Observation:
    # a witness answers: the fault is not on this server's side
    return Observation(False, False, gateway_ok=None, witnesses_ok=(True,), now=t,
                       replica=None if received is None else ReplicaReport(streaming, received))


def run(rounds: list[Observation], policy: FailoverPolicy = POLICY) -> tuple[list[Action], list[str], FailoverState]:
    state, actions, messages = FailoverState(), [], []
    for obs in rounds:
        state, d = decide(state, obs, policy)
        actions.append(d.action)
        messages.append(d.message)
    return actions, messages, state


@pytest.mark.parametrize(("rounds", "expected"), [
    pytest.param([up(0), down(10), down(11), down(14)], [N, N, N, P],
                 id="caught up and streaming when last heard from: promote"),
    pytest.param([up(0, primary="0/5000", received="0/1000"), down(10), down(11), down(12)], [N, N, N, R],
                 id="16 KiB behind (limit 1000 bytes): alarm, no promotion"),
    pytest.param([up(0, primary="0/1200", received="0/1000"), down(10), down(11), down(14)], [N, N, N, P],
                 id="512 bytes behind, within the limit: promote"),
    pytest.param([up(0, primary="0/5000", received="0/1000"), down(10, received="0/5000"), down(11, received="0/5000"),
                  down(14, received="0/5000")], [N, N, N, P],
                 id="behind when last heard from, but the rest arrived since: promote"),
    pytest.param([up(0, streaming=False), down(10), down(11), down(12)], [N, N, N, R],
                 id="replication cut when last heard from (the issue's story): alarm, no promotion"),
    pytest.param([up(0, heard=40.0), down(10), down(11), down(14)], [N, N, N, R],
                 id="'streaming' but silent for 40 s when last heard from (a black-holed link): no promotion"),
    pytest.param([up(0, heard=None), down(10), down(11), down(14)], [N, N, N, R],
                 id="'streaming' with no message ever received: no promotion"),
    pytest.param([down(10), down(11), down(12)], [N, N, R],
                 id="never heard from the primary: its lag is unknown, no promotion"),
    pytest.param([up(0), down(10, received=None), down(11, received=None), down(14, received=None)], [N, N, N, R],
                 id="the replica cannot be read: unknown lag, no promotion"),
    pytest.param([up(0, primary="0/5000", received="0/1000"), down(10), down(11), down(12), down(13), down(14)],
                 [N, N, N, R, N, N], id="the alarm is raised once"),
    pytest.param([up(0, primary="0/5000", received="0/1000"), down(10), down(11), down(12), up(13)],
                 [N, N, N, R, C], id="the primary is back: the alarm is cleared"),
])
def test_lag_guard(rounds: list[Observation], expected: list[Action]) -> None:
    actions, _, _ = run(rounds)
    assert actions == expected


def test_the_lag_alarm_says_how_far_behind() -> None:
    _, messages, state = run([up(0, primary="0/5000", received="0/1000"), down(10), down(11), down(12)])
    assert state.alarm == FAILOVER_LAG and not state.promoted
    assert "lacks 16384 bytes" in messages[-1] and "max_lag_bytes = 1000" in messages[-1]
    assert "safehold ha promote --force" in messages[-1]


@pytest.mark.parametrize(("rounds", "expected"), [
    # first failure at 10, probe timeout 1 s, the primary's lease 2 s: not before 13
    pytest.param([up(0), down(10), down(10.5), down(11)], [N, N, N, N], id="at the limit before the lease is out"),
    pytest.param([up(0), down(10), down(10.5), down(11), down(12), down(13)], [N, N, N, N, N, P],
                 id="promote once the lease is surely out"),
    pytest.param([up(0, lease=None), down(10), down(11), down(12), down(14), down(15)], [N, N, N, N, N, P],
                 id="lease not reported: this server's own setting (4 s) counts"),
    pytest.param([up(0), down(10), up(10.5), down(11), down(12), down(13), down(14)], [N, N, N, N, N, N, P],
                 id="a good round starts the count and the wait again"),
])
def test_lease_guard(rounds: list[Observation], expected: list[Action]) -> None:
    actions, _, _ = run(rounds)
    assert actions == expected


def test_lease_wait_message() -> None:
    _, messages, _ = run([up(0), down(10), down(10.5), down(11)])
    assert messages[-1].endswith("waiting 2.0 s more for the primary's write lease to run out before promoting")


def test_pure_helpers() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert parse_lsn(None) is None and parse_lsn("nonsense") is None and parse_lsn("x/y") is None
    assert lag_bytes("0/2000", "0/1000") == 4096 and lag_bytes("0/1000", "0/2000") == 0
    assert lag_bytes("0/1000", None) is None
    heard = FailoverState(contact=Contact(0.0, "0/1000", True, 2.0), failing_since=10.0)
    assert lease_wait(heard, down(11), POLICY) == pytest.approx(2.0)
    assert lease_wait(heard, down(14), POLICY) == 0.0
    assert lag_problem(heard, down(11), POLICY) is None
