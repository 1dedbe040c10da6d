"""sd_notify (safehold.systemd): the environment it takes, what the supervisor tells systemd about its workers
(a table, no sockets), and datagrams through real sockets: a path, the abstract namespace, the socket pair."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold import systemd
from safehold.ha import agent, watchdog
from safehold.systemd import WorkerBeats

LABEL = "serving on https://127.0.0.1:8443"


@pytest.fixture(autouse=True)
def no_notifier() -> Iterator[None]:
    systemd.claim({})
    yield
    systemd.claim({})


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


# --- the environment ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "address"), [
    ("/run/systemd/notify", "/run/systemd/notify"), ("@safehold/notify", "\0safehold/notify"), ("@", None),
    ("", None), ("relative/socket", None), ("vsock:2:1234", None),
])
def test_the_socket_address(value: str, address: str | None) -> None:
    assert systemd.socket_address(value) == address


@pytest.mark.parametrize(("env", "seconds"), [
    ({"WATCHDOG_USEC": "30000000"}, 30.0), ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, None),  # another process's watchdog
    ({"WATCHDOG_USEC": "0"}, None), ({"WATCHDOG_USEC": "soon"}, None), ({}, None),
])
def test_the_watchdog_interval(env: dict[str, str], seconds: float | None) -> None:
    assert systemd.watchdog_seconds(env, pid=42) == seconds


def test_claim_takes_the_variables_out_of_the_environment() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = systemd.claim(env)
    assert env == {"PATH": "/bin"}  # PostgreSQL and alert scripts started later do not inherit them
    assert notifier is not None and notifier.address == "\0x" and notifier.watchdog == 2.0


def test_without_a_manager_nothing_is_sent() -> None:
    assert systemd.claim({"WATCHDOG_USEC": "1000000"}) is None
    assert not systemd.notify("READY=1") and not systemd.alive()
    assert systemd.Relay.open(2, LABEL) is None


def test_parse() -> None:
    assert systemd.parse(b"READY=1\nSTATUS=a=b\nnonsense\n=x") == {"READY": "1", "STATUS": "a=b"}


# --- real datagrams -------------------------------------------------------------------------------------------

def test_notify_a_socket_path(tmp_path: Path) -> None:
    with receiver(str(tmp_path / "notify")) as sock:
        systemd.claim({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "4000000"})
        assert systemd.notify("READY=1", "STATUS=serving")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
        assert systemd.alive()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_an_abstract_socket() -> None:
    name = f"safehold-test-{uuid.uuid4().hex}"
    with receiver("\0" + name) as sock:
        systemd.claim({"NOTIFY_SOCKET": "@" + name})
        assert systemd.notify("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1"
        assert not systemd.alive()  # no WATCHDOG_USEC: no pings expected


def test_a_manager_that_went_away_is_no_error(tmp_path: Path) -> None:
    systemd.claim({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not systemd.notify("READY=1")


def test_the_relay_passes_on_what_the_supervisor_decides(tmp_path: Path) -> None:
    with receiver(str(tmp_path / "notify")) as sock:
        systemd.claim({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "10000000"})
        relay = systemd.Relay.open(1, LABEL)
        assert relay is not None
        try:
            worker_side = systemd.Notifier(sock=relay._theirs, worker=True)  # what in_worker sets after a fork
            assert worker_side.send("READY=1")
            relay.poll({os.getpid(): 0}, now=100.0)
            assert sock.recv(4096) == f"READY=1\nSTATUS={LABEL} with 1 workers".encode()
            worker_side.send("WATCHDOG=1")
            relay.poll({12345: 0}, now=102.0)  # not a live worker's pid: ignored
            worker_side.send("WATCHDOG=1")
            relay.poll({os.getpid(): 0}, now=103.0)
            assert sock.recv(4096) == b"WATCHDOG=1"
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(4096)
        finally:
            relay.close()


# --- what the supervisor tells systemd about its workers (pure) ------------------------------------------------

def beats(count: int = 2, watchdog: float | None = 10.0) -> WorkerBeats:
    return WorkerBeats(count=count, watchdog=watchdog, label=LABEL)


def test_ready_once_every_worker_serves() -> None:
    b = beats(3)
    assert b.heard(0, {"READY": "1"}, 1.0) == ["STATUS=starting: 1 of 3 workers serving"]
    assert b.heard(0, {"WATCHDOG": "1"}, 1.5) == []  # not announced yet: nothing to ping
    assert b.heard(2, {"READY": "1"}, 2.0) == ["STATUS=starting: 2 of 3 workers serving"]
    assert b.heard(1, {"READY": "1"}, 3.0) == ["READY=1", f"STATUS={LABEL} with 3 workers"]


def test_pings_pass_while_every_serving_worker_pings() -> None:
    b = beats(2, watchdog=10.0)
    b.heard(0, {"READY": "1"}, 0.0)
    b.heard(1, {"READY": "1"}, 0.0)
    assert b.heard(0, {"WATCHDOG": "1"}, 2.0) == ["WATCHDOG=1"]
    assert b.heard(1, {"WATCHDOG": "1"}, 2.5) == []  # at most one a second
    assert b.heard(1, {"WATCHDOG": "1"}, 4.0) == ["WATCHDOG=1"]
    # worker 1 hangs: worker 0's pings pass only while worker 1's last one is under half the interval old
    assert b.heard(0, {"WATCHDOG": "1"}, 8.0) == ["WATCHDOG=1"]
    assert b.heard(0, {"WATCHDOG": "1"}, 9.1) == []
    assert b.heard(0, {"WATCHDOG": "1"}, 30.0) == []
    assert b.heard(1, {"WATCHDOG": "1"}, 31.0) == ["WATCHDOG=1"]  # it is well again


def test_a_dead_worker_is_excused_until_its_replacement_serves() -> None:
    b = beats(2, watchdog=10.0)
    b.heard(0, {"READY": "1"}, 0.0)
    b.heard(1, {"READY": "1"}, 0.0)
    assert b.gone(1) == [f"STATUS={LABEL}: worker 1 is being replaced (1 of 2 workers serving)"]
    assert b.heard(0, {"WATCHDOG": "1"}, 20.0) == ["WATCHDOG=1"]
    assert b.heard(1, {"WATCHDOG": "1"}, 20.5) == []  # the new worker 1, still starting
    assert b.heard(1, {"READY": "1"}, 25.0) == [f"STATUS={LABEL} with 2 workers"]  # no second READY=1


def test_a_stopping_worker_is_excused() -> None:
    b = beats(2, watchdog=10.0)
    b.heard(0, {"READY": "1"}, 0.0)
    b.heard(1, {"READY": "1"}, 0.0)
    assert b.heard(1, {"STOPPING": "1"}, 1.0) == []
    assert b.heard(0, {"WATCHDOG": "1"}, 20.0) == ["WATCHDOG=1"]


def test_no_pings_without_a_watchdog_or_without_a_serving_worker() -> None:
    b = beats(1, watchdog=None)
    b.heard(0, {"READY": "1"}, 0.0)
    assert b.heard(0, {"WATCHDOG": "1"}, 1.0) == []
    b = beats(1)
    b.heard(0, {"READY": "1"}, 0.0)
    b.gone(0)
    assert b.heard(0, {"WATCHDOG": "1"}, 1.0) == []


# --- the HA loop's ping -----------------------------------------------------------------------------------------

def test_the_main_loops_are_the_agents() -> None:
    for name in watchdog.MAIN_LOOPS:
        assert callable(getattr(agent.HaAgent, name)), name


def test_only_a_main_loop_pings(tmp_path: Path) -> None:
    with receiver(str(tmp_path / "notify")) as sock:
        systemd.claim({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "4000000"})
        watchdog.cycle_went_well("ship_audit")
        watchdog.cycle_went_well("heartbeat")
        assert sock.recv(4096) == b"WATCHDOG=1"
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
