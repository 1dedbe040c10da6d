"""Reachability probes for automatic failover and the readiness check.

- a target (witness or gateway) is ``host`` (an ICMP ping through the system ``ping`` program) or
  ``host:port`` (a TCP connect); :func:`parse_target` reads one;
- :func:`probe_database`: is a PostgreSQL server listening there (it answers an SSLRequest)?
- :func:`default_gateway`: the default route's gateway, from /proc/net/route.

Each probe has a blocking form and an ``_async`` form for the event loop; none raises for an
unreachable host: it answers False (or None when it cannot tell).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import shutil
import socket
import ssl
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: The PostgreSQL SSLRequest: length 8, code 1234.5679; a server answers one byte, 'S' or 'N'.
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
PG_ANSWERS = (b"S", b"N")
ROUTE_FILE = Path("/proc/net/route")
_PING_FALLBACKS = ("/usr/bin/ping", "/bin/ping", "/usr/sbin/ping", "/sbin/ping")


# --- targets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A witness or gateway: ``port`` None means an ICMP ping, else a TCP connect."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def key(self) -> str:
        """For comparisons: case-insensitive, IP addresses in their canonical form."""
        return f"{normalise_host(self.host)}|{self.port}"


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


def normalise_host(host: str) -> str:
    """An IP address in its canonical form, a name in lower case without a trailing dot."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return h.lower().rstrip(".")


def _check_host(host: str, text: str) -> str:
    if not host:
        raise ValueError(f"{text!r}: no host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if (not name or len(name) > 253 or not set(name) <= _HOST_CHARS
            or any(not lab or len(lab) > 63 or lab.startswith("-") or lab.endswith("-") for lab in labels)):
        raise ValueError(f"{text!r}: {host!r} is not a valid host name or IP address")
    return host


def parse_target(text: str) -> Target:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (a bare IPv6 address is accepted too);
    raises ValueError with a clear message for anything else."""
    s = text.strip()
    if not s:
        raise ValueError("empty target: give host or host:port")
    port_text: str | None = None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        host, rest = s[1:end], s[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':port' after ']'")
            port_text = rest[1:]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif s.count(":") > 1:
        try:
            host = str(ipaddress.IPv6Address(s))
        except ValueError:
            raise ValueError(f"{text!r}: put an IPv6 address in brackets, like [2001:db8::1]:443") from None
    else:
        host, sep, rest = s.partition(":")
        port_text = rest if sep else None
        host = _check_host(host, text)
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    return Target(host, port)


# --- TCP ---------------------------------------------------------------------------------------


def tcp_reachable(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to host:port succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def tcp_reachable_async(host: str, port: int, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    await _close(writer)
    return True


# --- ICMP (the system ping program) ---------------------------------------------------------------


def ping_program() -> str | None:
    """The system ``ping``, if there is one."""
    found = shutil.which("ping")
    if found:
        return found
    return next((p for p in _PING_FALLBACKS if os.access(p, os.X_OK)), None)


def _ping_args(program: str, host: str, timeout: float) -> list[str]:
    return [program, "-c", "1", "-W", str(max(1, math.ceil(timeout))), "--", host]


def icmp_reachable(host: str, timeout: float, *, program: str | None = None) -> bool | None:
    """Whether one ICMP echo to ``host`` is answered (``ping -c 1 -W n``); None when there is no
    ping program to ask."""
    program = program or ping_program()
    if program is None:
        return None
    try:
        done = subprocess.run(_ping_args(program, host, timeout), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout + 2)
    except subprocess.TimeoutExpired:
        return False
    except OSError:
        return None
    return done.returncode == 0


async def icmp_reachable_async(host: str, timeout: float, *, program: str | None = None) -> bool | None:
    program = program or ping_program()
    if program is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(*_ping_args(program, host, timeout), stdin=subprocess.DEVNULL,
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    try:
        return await asyncio.wait_for(proc.wait(), timeout + 2) == 0
    except TimeoutError:
        return False
    finally:  # also on cancellation: never leave a ping running
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())


async def target_reachable_async(target: Target, timeout: float) -> bool | None:
    """A TCP connect for ``host:port``, else an ICMP ping (None: no ping program)."""
    if target.port is not None:
        return await tcp_reachable_async(target.host, target.port, timeout)
    return await icmp_reachable_async(target.host, timeout)


# --- the default gateway -----------------------------------------------------------------------------


def default_gateway(route_file: Path = ROUTE_FILE) -> str | None:
    """The IPv4 gateway of the default route (the lowest metric), None if there is none."""
    try:
        lines = route_file.read_text().splitlines()[1:]
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags, metric = (int(fields[1], 16), int(fields[2], 16), int(fields[3], 16),
                                                   int(fields[6]))
            mask = int(fields[7], 16)
        except ValueError:
            continue
        # RTF_UP (1) and RTF_GATEWAY (2); addresses are in host (little-endian) byte order
        if destination == 0 and mask == 0 and flags & 0x3 == 0x3 and gateway:
            address = str(ipaddress.IPv4Address(struct.pack("<I", gateway)))
            if best is None or metric < best[0]:
                best = (metric, address)
    return best[1] if best else None


# --- PostgreSQL ----------------------------------------------------------------------------------------


def _quiet_tls() -> ssl.SSLContext:
    # Only to finish the handshake the server expects after answering 'S' (then it logs nothing
    # when the connection closes); no data is sent over it, so nothing is verified.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def probe_database(host: str, port: int, timeout: float) -> bool:
    """Whether a PostgreSQL server answers at host:port: it answers an SSLRequest with 'S' or 'N'."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(SSL_REQUEST)
            answer = sock.recv(1)
            if answer == b"S":
                with contextlib.suppress(OSError, ValueError):
                    # a clean TLS close (close_notify both ways): no reset for the server to log
                    with _quiet_tls().wrap_socket(sock, server_hostname=None) as tls:
                        tls.unwrap().close()
            return answer in PG_ANSWERS
    except OSError:
        return False


async def probe_database_async(host: str, port: int, timeout: float) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(SSL_REQUEST)
        await asyncio.wait_for(writer.drain(), timeout)
        answer = await asyncio.wait_for(reader.read(1), timeout)
        if answer == b"S":
            with contextlib.suppress(OSError, ValueError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.start_tls(_quiet_tls()), timeout)
        return answer in PG_ANSWERS
    except (OSError, TimeoutError):
        return False
    finally:
        await _close(writer)
