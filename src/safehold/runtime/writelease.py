"""The write lease: how long a primary or secondary may go on acknowledging writes without
confirming that it is still the cluster's writer (pure logic; no I/O, the clock is passed in).

Why: a standby with automatic failover promotes itself after the primary database stopped answering
for ``ping_interval x ping_iterations`` seconds.  A primary that was frozen for that long (SIGSTOP,
a paused VM, a blocked event loop) does not know it when it thaws: requests queued during the
freeze would be acknowledged by a superseded primary and lost at its rejoin.  So every write checks
the lease immediately before COMMIT, and the lease is shorter than any standby's failover threshold.

How it is renewed (at the start ``t`` of each HA heartbeat cycle, once the cycle has read its
database and asked its peers):

1. a peer of the cluster answered and none reports a newer generation: renewed from ``t``
   (``CONFIRMED``), whatever happened before — this is the only way back after a stall;
2. no peer answered (or the cluster has no other server): renewed from ``t`` only while the lease
   still held at ``t`` (``LOCAL``) — a chain of punctual heartbeats; a dead read-only server does not
   stop a healthy primary.  Once a tick comes late (the process stalled longer than the lease), the
   chain is broken and only a peer (or an operator's override) renews it;
3. a peer answered that it is being promoted (``DENIED``): not renewed, for two lease lengths not even by
   another peer's confirmation (the one being promoted may just have missed a question), and after that
   only by a confirmation, never by punctual heartbeats — the cluster is moving on, and the promotion waits
   for this lease to run out before it promotes the database;
4. a peer reports a newer generation: the server is fenced (not this module's business).

The clock must count every second that passed, frozen or not: :func:`clock` uses ``CLOCK_BOOTTIME``
where the platform has it (it also counts a suspended machine), else the monotonic clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from enum import StrEnum


def clock() -> float:
    """Seconds on a clock that never goes back and keeps counting while the process is stopped."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime(boottime)
    return time.monotonic()


class Confirmation(StrEnum):
    """What a heartbeat cycle learned about this server's right to write."""

    CONFIRMED = "confirmed"      # a peer answered; none is newer
    UNCONFIRMED = "unconfirmed"  # no peer answered (or there is none)
    DENIED = "denied"            # a peer answered that it is being promoted: the lease must run out
    OVERRIDE = "override"        # an operator said so ('safehold ha override-lease')


@dataclass(frozen=True)
class WriteLease:
    """The lease as a value: ``renewed_at`` on :func:`clock`, ``None`` before the first renewal."""

    duration: float
    renewed_at: float | None = None
    how: Confirmation | None = None
    denied_at: float | None = None  # the last cycle in which a peer said it was being promoted

    def denied(self, now: float) -> bool:
        """Whether a peer's promotion still bars a renewal: for two lease lengths after it was last seen, by
        which time that promotion went through (its server then fences this one) or was given up."""
        return self.denied_at is not None and now < self.denied_at + 2 * self.duration

    def valid(self, now: float) -> bool:
        return self.renewed_at is not None and self.renewed_at <= now < self.renewed_at + self.duration

    def remaining(self, now: float) -> float:
        if self.renewed_at is None:
            return 0.0
        return max(0.0, self.renewed_at + self.duration - now)

    def renew(self, started: float, confirmation: Confirmation) -> WriteLease:
        """The lease after a heartbeat cycle that started at ``started`` learned ``confirmation``."""
        if confirmation is Confirmation.OVERRIDE:
            return replace(self, renewed_at=max(started, self.renewed_at or started), how=confirmation,
                           denied_at=None)
        if confirmation is Confirmation.DENIED:
            return replace(self, how=confirmation, denied_at=max(started, self.denied_at or started))
        if self.denied(started):  # not even a peer at this generation: the one being promoted may not answer it
            return self
        if confirmation is Confirmation.CONFIRMED:
            return replace(self, renewed_at=max(started, self.renewed_at or started), how=confirmation)
        if self.how is not Confirmation.DENIED and self.valid(started):
            return replace(self, renewed_at=started, how=self.how)
        return self

    def describe(self, now: float) -> str:
        """One sentence for logs, status and errors."""
        if self.renewed_at is None:
            return "the write lease was never confirmed with a peer of the cluster"
        if self.valid(now):
            return f"the write lease holds for {self.remaining(now):.1f} s more"
        return (f"the write lease ran out {now - self.renewed_at - self.duration:.1f} s ago (it lasts "
                f"{self.duration:g} s): this server may have been frozen long enough for a standby to take over")
