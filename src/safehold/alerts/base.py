"""What every alert channel shares: the interface, its error, and the retry schedule."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Protocol

from safehold.alerts.events import AlertEvent
from safehold.alerts.settings import RetrySection
from safehold.errors import SafeholdError

ICMP_WAIT = 0.25  # seconds to listen for "port unreachable" after a UDP datagram


class AlertError(SafeholdError):
    """A channel could not deliver (or is misconfigured).  ``transient`` errors are retried; the
    message never holds a secret."""

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = True) -> None:
        super().__init__(message, hint=hint)
        self.transient = transient


class Channel(Protocol):
    """One alert channel: ``send`` delivers one event synchronously (with its own timeouts) and
    returns a short secret-free description of what it did, or raises :class:`AlertError`."""

    name: str

    def target(self) -> str:
        """Where it sends to, without secrets (shown by 'alerts show' and the API)."""
        ...

    def check(self) -> None:
        """Validate what can be validated without sending (secret files, script ownership)."""
        ...

    def send(self, event: AlertEvent) -> str: ...


def backoff_delays(retry: RetrySection) -> list[float]:
    """The waits between the ``attempts`` tries of one delivery: initial_delay, then multiplied by
    ``multiplier`` each time, capped at ``max_delay``."""
    delays: list[float] = []
    delay = retry.initial_delay
    for _ in range(retry.attempts - 1):
        delays.append(min(delay, retry.max_delay))
        delay *= retry.multiplier
    return delays


def read_secret_file(path: Path, what: str) -> str:
    """A secret from its file (first line-trimmed content); the error names the file, never its
    content."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        raise AlertError(f"the {what} file {path} is missing", transient=False,
                         hint="create it (mode 0600) or fix the path in safehold.toml") from None
    except OSError as exc:
        raise AlertError(f"cannot read the {what} file {path}: {exc.strerror}", transient=False) from None
    if not value:
        raise AlertError(f"the {what} file {path} is empty", transient=False)
    return value


def stored_or_file(value: str | None, path: Path | None, what: str, channel: str) -> str:
    """A channel's secret: as stored (the cluster's settings), else read from its file (safehold.toml)."""
    if value is not None:
        return value
    if path is None:
        raise AlertError(f"{channel}: no {what} is configured", transient=False)
    return read_secret_file(path, what)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify against the system CAs, or only against ``ca_file`` when one is configured."""
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except FileNotFoundError:
        raise AlertError(f"the CA file {ca_file} is missing", transient=False) from None
    except (OSError, ssl.SSLError) as exc:
        raise AlertError(f"the CA file {ca_file} cannot be used ({type(exc).__name__})",
                         transient=False) from None


def network_error(what: str, where: str, exc: BaseException) -> AlertError:
    """A clear, secret-free message for a failure to reach ``where``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return AlertError(f"{what}: the certificate of {where} is not trusted ({exc.verify_message})",
                          hint="configure ca_file with the CA that signed it")
    if isinstance(exc, ConnectionRefusedError):
        return AlertError(f"{what}: {where} refused the connection (nothing listens there?)",
                          hint="check host and port, and that the receiver is running")
    if isinstance(exc, TimeoutError | socket.timeout):
        return AlertError(f"{what}: {where} did not answer in time")
    if isinstance(exc, socket.gaierror):
        return AlertError(f"{what}: cannot resolve the host of {where}", transient=True)
    if isinstance(exc, OSError) and exc.strerror:
        return AlertError(f"{what}: cannot reach {where}: {exc.strerror}")
    return AlertError(f"{what}: cannot reach {where} ({type(exc).__name__})")


def raise_if_refused(sock: socket.socket, wait: float = ICMP_WAIT) -> None:
    """UDP has no answer, but a closed port answers with ICMP "port unreachable", which a connected
    socket reports (ConnectionRefusedError) on its next receive: listen for it briefly."""
    sock.settimeout(wait)
    try:
        sock.recv(1)
    except (TimeoutError, BlockingIOError):
        return
