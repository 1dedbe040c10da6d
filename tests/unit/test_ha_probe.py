"""Reachability probes against real sockets on 127.0.0.1: a listener that answers like PostgreSQL,
a closed port, a listener that never answers; a stand-in ping program; a route table file."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.ha import probe
from safehold.ha.probe import (
    SSL_REQUEST,
    Target,
    default_gateway,
    icmp_reachable,
    icmp_reachable_async,
    probe_database,
    probe_database_async,
    target_reachable_async,
    tcp_reachable,
    tcp_reachable_async,
)

HOST = "127.0.0.1"


class Listener:
    """A TCP listener on 127.0.0.1; ``answer`` (if any) is sent after the 8 bytes of an SSLRequest."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        if answer is not None:
            self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    data = b""
                    while len(data) < 8:
                        chunk = conn.recv(8 - len(data))
                        if not chunk:
                            break
                        data += chunk
                    self.requests.append(data)
                    conn.sendall(self.answer or b"")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sock.close()


@pytest.fixture()
def listener(request: pytest.FixtureRequest) -> Iterator[Listener]:
    lst = Listener(request.param)
    try:
        yield lst
    finally:
        lst.close()


@pytest.fixture()
def closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])  # nothing listens there once it is closed


@pytest.mark.parametrize("listener", [b"S", b"N"], indirect=True)
def test_database_answering(listener: Listener) -> None:
    assert probe_database(HOST, listener.port, 2) is True
    assert asyncio.run(probe_database_async(HOST, listener.port, 2)) is True
    assert listener.requests == [SSL_REQUEST, SSL_REQUEST]


@pytest.mark.parametrize("listener", [b"H"], indirect=True)
def test_database_wrong_answer(listener: Listener) -> None:
    assert probe_database(HOST, listener.port, 2) is False
    assert asyncio.run(probe_database_async(HOST, listener.port, 2)) is False


def test_database_closed_port(closed_port: int) -> None:
    assert probe_database(HOST, closed_port, 1) is False
    assert asyncio.run(probe_database_async(HOST, closed_port, 1)) is False


@pytest.mark.parametrize("listener", [None], indirect=True)
def test_database_never_answering(listener: Listener) -> None:
    # the kernel completes the connection (backlog), nobody answers: a timeout, not a hang
    assert probe_database(HOST, listener.port, 0.3) is False
    assert asyncio.run(probe_database_async(HOST, listener.port, 0.3)) is False


@pytest.mark.parametrize("listener", [None], indirect=True)
def test_tcp(listener: Listener, closed_port: int) -> None:
    assert tcp_reachable(HOST, listener.port, 1) is True
    assert asyncio.run(tcp_reachable_async(HOST, listener.port, 1)) is True
    assert tcp_reachable(HOST, closed_port, 1) is False
    assert asyncio.run(tcp_reachable_async(HOST, closed_port, 1)) is False
    assert asyncio.run(target_reachable_async(Target(HOST, listener.port), 1)) is True
    assert asyncio.run(target_reachable_async(Target(HOST, closed_port), 1)) is False


# --- ICMP through a stand-in ping program --------------------------------------------------------------


def fake_ping(tmp_path: Path, body: str) -> str:
    path = tmp_path / "ping"
    path.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'args'}\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_icmp_answered_and_not(tmp_path: Path) -> None:
    ok = fake_ping(tmp_path, "exit 0")
    assert icmp_reachable(HOST, 1.5, program=ok) is True
    assert asyncio.run(icmp_reachable_async(HOST, 1.5, program=ok)) is True
    assert (tmp_path / "args").read_text().splitlines()[0] == f"-c 1 -W 2 -- {HOST}"
    failing = fake_ping(tmp_path, "exit 1")
    assert icmp_reachable(HOST, 1, program=failing) is False
    assert asyncio.run(icmp_reachable_async(HOST, 1, program=failing)) is False


def test_icmp_without_a_ping_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "ping_program", lambda: None)
    assert icmp_reachable(HOST, 1) is None
    assert asyncio.run(icmp_reachable_async(HOST, 1)) is None
    assert asyncio.run(target_reachable_async(Target(HOST), 1)) is None


def test_icmp_hanging_ping_is_stopped(tmp_path: Path) -> None:
    hanging = fake_ping(tmp_path, f"echo $$ > {tmp_path / 'pid'}\nexec sleep 60")
    assert asyncio.run(icmp_reachable_async(HOST, 0.1, program=hanging)) is False  # gives up after timeout + 2 s
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists()


def test_icmp_cancelled_ping_is_stopped(tmp_path: Path) -> None:
    hanging = fake_ping(tmp_path, f"echo $$ > {tmp_path / 'pid'}\nexec sleep 60")

    async def main() -> None:
        task = asyncio.create_task(icmp_reachable_async(HOST, 30, program=hanging))
        while not (tmp_path / "pid").exists():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists()


# --- the default gateway -----------------------------------------------------------------------------------

ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""


def test_default_gateway(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    assert default_gateway(routes) == "192.0.2.1"  # the lower metric
    routes.write_text(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[3] + "\n")
    assert default_gateway(routes) is None
    assert default_gateway(tmp_path / "missing") is None


# --- the app --------------------------------------------------------------------------------------------


