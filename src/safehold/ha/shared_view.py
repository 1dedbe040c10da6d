"""One read-only server, one view of its cluster, whichever worker answers.

The first worker of a read-only server watches the cluster (its peer check, the audit shipper, the automatic
failover watch) and writes what it concluded to ``run/readonly-view.json`` after every step: where users are
sent, the peers as seen, how old the replica's data may be, its alarm, the shipper's last error, the
automatic failover's gateway and witnesses as last probed.  The other
workers answer from that file (re-read when it changed: a ``stat`` per look), so every request to the server
is redirected, or served in emergency mode, alike; the server's status and alarm read the same on every
worker, and its events and alerts are sent once.  A view older than :data:`STALE_CYCLES` check intervals (the
first worker is frozen, or being replaced) is not followed: each worker then decides for itself, as it would
alone, until the first worker writes again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safehold.domain import ServerRole
from safehold.ha.failover_inputs import InputState, inputs_from_json
from safehold.ha.policy import PeerObservation

if TYPE_CHECKING:
    from safehold.runtime import Runtime

log = logging.getLogger(__name__)

VIEW_FILE = "run/readonly-view.json"
STALE_CYCLES = 3


@dataclass(frozen=True)
class SharedView:
    written_at: float  # time.time() of the writer
    redirect: PeerObservation | None
    peers: tuple[PeerObservation, ...]
    data_age_seconds: float | None
    alarm: tuple[str, str] | None
    last_ship_error: str | None
    inputs: tuple[InputState, ...] = ()


def _peer(d: dict[str, Any]) -> PeerObservation:
    return PeerObservation(str(d["server_id"]), str(d["name"]), ServerRole(d["role"]), str(d["url"]),
                           bool(d["healthy"]))


def _peer_json(p: PeerObservation) -> dict[str, Any]:
    return {"server_id": p.server_id, "name": p.name, "role": p.role.value, "url": p.url, "healthy": p.healthy}


def encode(view: SharedView) -> bytes:
    return json.dumps({
        "written_at": view.written_at, "redirect": _peer_json(view.redirect) if view.redirect else None,
        "peers": [_peer_json(p) for p in view.peers], "data_age_seconds": view.data_age_seconds,
        "alarm": list(view.alarm) if view.alarm else None, "last_ship_error": view.last_ship_error,
        "inputs": [i.to_json() for i in view.inputs],
    }).encode()


def decode(data: bytes) -> SharedView:
    d = json.loads(data)
    alarm = d.get("alarm")
    return SharedView(float(d["written_at"]), _peer(d["redirect"]) if d.get("redirect") else None,
                      tuple(_peer(p) for p in d.get("peers") or ()), d.get("data_age_seconds"),
                      (str(alarm[0]), str(alarm[1])) if alarm else None, d.get("last_ship_error"),
                      inputs_from_json(d.get("inputs")))


class SharedViewFile:
    """The file, for the first worker (``write``) and the others (``fresh``)."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path, self.interval = path, interval
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of what was last read
        self._view: SharedView | None = None

    def write(self, view: SharedView) -> None:
        """Replace the file whole (a reader never sees half of it); a failure is logged, never raised."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, encode(view))
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("the read-only server's view cannot be shared with its other workers (%s): they decide "
                        "for themselves meanwhile", exc.strerror)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def fresh(self, now: float | None = None) -> SharedView | None:
        """The first worker's view, if it wrote one within the last :data:`STALE_CYCLES` check intervals."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        if (st.st_mtime_ns, st.st_size) != self._seen:
            try:
                self._view = decode(self.path.read_bytes())
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                return None  # being replaced, or damaged: not followed
            self._seen = (st.st_mtime_ns, st.st_size)
        view = self._view
        if view is None or (time.time() if now is None else now) - view.written_at > STALE_CYCLES * self.interval:
            return None
        return view

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


class FollowsFirstWorker:
    """What the HA agent shows (its redirect, peers, data age, alarm, shipper error): its own, except on a
    read-only server's other workers while the first worker's view is fresh, which they show instead."""

    first_worker: bool
    rt: Runtime
    _view_file: SharedViewFile
    _redirect: PeerObservation | None
    _peers: list[PeerObservation]
    _data_age: float | None
    _alarm: tuple[str, str] | None
    _ship_error: str | None
    _watch: Any  # the automatic failover watch (``ha/failover_agent.py``), while one runs in this worker

    def followed(self) -> SharedView | None:
        if self.first_worker or not self.rt.readonly or self.rt.fence is not None:
            return None
        return self._view_file.fresh()

    def share(self) -> None:
        """The first worker of a read-only server: write its view for the others."""
        if self.first_worker and self.rt.readonly and self.rt.fence is None:
            self._view_file.write(SharedView(time.time(), self._redirect, tuple(self._peers), self._data_age,
                                             self._alarm, self._ship_error, self._own_inputs()))

    def _own_inputs(self) -> tuple[InputState, ...]:
        return tuple(self._watch.inputs) if self._watch is not None else ()

    @property
    def failover_inputs(self) -> tuple[InputState, ...]:
        """The automatic failover's gateway and witnesses as its watch last confirmed them (none while no
        watch runs on this server)."""
        v = self.followed()
        return v.inputs if v is not None else self._own_inputs()

    @property
    def redirect(self) -> PeerObservation | None:
        v = self.followed()
        return v.redirect if v is not None else self._redirect

    @redirect.setter
    def redirect(self, value: PeerObservation | None) -> None:
        self._redirect = value

    @property
    def peers(self) -> list[PeerObservation]:
        v = self.followed()
        return list(v.peers) if v is not None else self._peers

    @peers.setter
    def peers(self, value: list[PeerObservation]) -> None:
        self._peers = value

    @property
    def data_age_seconds(self) -> float | None:
        v = self.followed()
        return v.data_age_seconds if v is not None else self._data_age

    @data_age_seconds.setter
    def data_age_seconds(self, value: float | None) -> None:
        self._data_age = value

    @property
    def alarm(self) -> tuple[str, str] | None:
        v = self.followed()
        return v.alarm if v is not None else self._alarm

    @alarm.setter
    def alarm(self, value: tuple[str, str] | None) -> None:
        self._alarm = value

    @property
    def last_ship_error(self) -> str | None:
        v = self.followed()
        return v.last_ship_error if v is not None else self._ship_error

    @last_ship_error.setter
    def last_ship_error(self, value: str | None) -> None:
        self._ship_error = value
