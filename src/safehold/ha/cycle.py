"""What the HA agent's loops decide each cycle, as pure functions (no I/O here).

Every cycle a loop of :class:`safehold.ha.agent.HaAgent` reads the truth into an immutable view, asks
one ``decide_*`` function here for ONE decision — an action and one human sentence — and carries it
out; the sentence is logged when it changes (and asserted in ``tests/unit/test_ha_cycle.py``).

- the writer's heartbeat (primary, secondary, standalone) — :func:`decide_writer`:

  1. its database became a replica (a switchover, a rejoin) and its settings say read-only: follow it
     and carry on as a read-only server;
  2. a peer reports a newer primary (a higher generation, see services.fencing): fence this server;
  3. its database is a replica but its settings do not say read-only yet: wait for the switchover or
     rejoin to finish, writing nothing;
  4. a standalone server whose settings file 'ha pack' (or 'ha add-secondary') made a primary: adopt
     that role, then heartbeat;
  5. else heartbeat, renewing the write lease (:mod:`safehold.runtime.writelease`) with the peers'
     confirmation or an operator's override; the alarm ``WriterUnconfirmed`` is raised while the lease
     cannot be confirmed and cleared when it is again.

- the read-only server's peer check — :func:`decide_readonly`: while a promotion of this server runs,
  nothing else; when its replica was promoted, the promotion names it the acting primary and its
  settings say primary: take over; otherwise redirect users to the primary, else a secondary, else
  serve them here in read-only emergency mode.  A promotion interrupted halfway — the database promoted
  but the promotion not recorded in the cluster, or recorded but the settings file not yet written — is
  said in the sentence at once and, when it lasts longer than a promotion takes, raises the alarm
  ``PromotionIncomplete`` ('safehold ha promote' again finishes it).

- the fenced server's watch — :func:`decide_fenced`: follow its database when an operator rejoined it as
  a replica; take a newer fence; redirect users to the acting primary while it answers.

:func:`data_age` (how old a read-only server's data may be) is pure too: the peer check, the promotion's
checks and the readiness checks weigh it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from safehold.domain import ServerRole
from safehold.ha.policy import Event, EventKind, PeerObservation, redirect_target
from safehold.runtime.writelease import Confirmation, WriteLease

if TYPE_CHECKING:
    from safehold.runtime import Fence
    from safehold.storage.replication import ReplicaView

#: Alarm conditions (the first argument of a ``RaiseAlarm`` event); the values never change.
WRITER_UNCONFIRMED = "WriterUnconfirmed"
PROMOTION_INCOMPLETE = "PromotionIncomplete"
#: How long a promotion may look interrupted (promoted, not yet recorded or written) before the alarm: a
#: promotion in progress passes through these states in a second or two.
PROMOTION_GRACE = 15.0


def raise_alarm(subject: str, condition: str, message: str) -> Event:
    return Event(EventKind.RAISE_ALARM, subject, message, (condition, message))


def clear_alarm(subject: str, text: str) -> Event:
    return Event(EventKind.CLEAR_ALARM, subject, text, (text,))


# --- the writer's heartbeat ------------------------------------------------------------------------------


class WriterAction(StrEnum):
    FOLLOW = "follow"        # carry on as a read-only server of the acting primary
    FENCE = "fence"          # a newer primary superseded this server
    WAIT = "wait"            # renew the lease, write nothing: the database is a replica already
    ADOPT = "adopt"          # take the primary role the settings file gives, then heartbeat
    HEARTBEAT = "heartbeat"  # renew the lease, write the heartbeat


@dataclass(frozen=True)
class WriterView:
    """One heartbeat cycle of a primary, secondary or standalone server, as read."""

    name: str                          # this server's (the subject of its events)
    role: ServerRole                   # the role it runs as
    database_is_replica: bool          # its database is in recovery (False when it cannot be read)
    settings_role: ServerRole | None   # the role its settings file names, when read this cycle
    newer: Fence | None                # the newest primary among the peers' reports superseding this server
    confirmation: Confirmation         # what the peers' reports say about the write lease (none newer)
    override: bool                     # an operator's 'safehold ha override-lease' was waiting
    lease: WriteLease | None           # before this cycle (None: no lease needed)
    started: float                     # the cycle's start, on the lease clock
    now: float                         # after the peers answered
    alarm: str | None                  # the condition of this server's raised alarm, if any


@dataclass(frozen=True)
class WriterDecision:
    action: WriterAction
    sentence: str
    confirmation: Confirmation | None = None  # renew the lease with this (WAIT, ADOPT, HEARTBEAT)
    event: Event | None = None                # an alarm raised or cleared, or the Fenced event


def lease_alarm(name: str, lease: WriteLease | None, now: float, alarm: str | None) -> Event | None:
    """Raise ``WriterUnconfirmed`` when the lease (as renewed) does not hold and no alarm is up; clear it
    when the lease holds again."""
    if lease is None:
        return None
    if not lease.valid(now) and alarm is None:
        message = (f"{lease.describe(now)}; no peer of the cluster confirmed this server's generation, so it "
                   "refuses every change ('safehold ha override-lease' if no other server took over)")
        return raise_alarm(name, WRITER_UNCONFIRMED, message)
    if lease.valid(now) and alarm == WRITER_UNCONFIRMED:
        return clear_alarm(name, "the write lease is confirmed again: this server accepts changes")
    return None


def _lease_words(confirmation: Confirmation, lease: WriteLease | None, now: float) -> str:
    if lease is None:
        return "it needs no write lease"
    if confirmation is Confirmation.OVERRIDE:
        return "its write lease is renewed by an operator's override"
    if confirmation is Confirmation.CONFIRMED:
        return "its write lease is renewed: no peer reports a newer primary"
    if confirmation is Confirmation.DENIED:
        return ("a read-only server is being promoted: its write lease is not renewed, and once it has run out "
                "this server refuses every change")
    if lease.valid(now):
        return "no peer answered: its write lease goes on from punctual heartbeats"
    return "no peer confirmed its generation and its write lease ran out: it refuses every change"


def decide_writer(view: WriterView) -> WriterDecision:
    """The one thing a primary, secondary or standalone server does in this heartbeat cycle."""
    if view.database_is_replica and view.settings_role == ServerRole.READONLY:
        return WriterDecision(WriterAction.FOLLOW, "this server's database became a replica of the acting primary "
                              "and its settings say read-only: it carries on as a read-only server")
    if view.newer is not None:
        f = view.newer
        return WriterDecision(
            WriterAction.FENCE,
            f"a peer reports a newer primary, {f.acting_primary_name or 'unnamed'} at generation {f.generation}: "
            "this server fences itself",
            event=Event(EventKind.FENCED, view.name, f.message(), (view.name, f.acting_primary_name)))
    confirmation = Confirmation.OVERRIDE if view.override else view.confirmation
    lease = None if view.lease is None else view.lease.renew(view.started, confirmation)
    words = _lease_words(confirmation, lease, view.now)
    event = lease_alarm(view.name, lease, view.now, view.alarm)
    if view.database_is_replica:
        return WriterDecision(
            WriterAction.WAIT,
            f"this server's database is a replica but its settings say {view.role}: waiting for the switchover "
            f"or rejoin to finish, no heartbeat written; {words}", confirmation, event)
    if view.role == ServerRole.STANDALONE and view.settings_role == ServerRole.PRIMARY:
        return WriterDecision(WriterAction.ADOPT, "this standalone server's settings make it the primary of a "
                              "cluster ('safehold ha pack'): it takes the primary role now", confirmation, event)
    return WriterDecision(WriterAction.HEARTBEAT, f"no action: this {view.role} server writes its heartbeat; {words}",
                          confirmation, event)


# --- the read-only server's peer check -------------------------------------------------------------------


class ReadOnlyAction(StrEnum):
    WAIT = "wait"            # a promotion of this server is under way: nothing else
    TAKE_OVER = "take_over"  # carry on as the acting primary
    REDIRECT = "redirect"    # send users to ``target``
    EMERGENCY = "emergency"  # serve users here, read-only


class PromotionState(StrEnum):
    NONE = "none"                                  # the database is a replica: nothing was promoted
    NOT_RECORDED = "not_recorded"                  # promoted; the cluster does not name this server
    SETTINGS_NOT_WRITTEN = "settings_not_written"  # recorded; the settings file still says read-only
    COMPLETE = "complete"                          # recorded and written: take over


@dataclass(frozen=True)
class ReadOnlyView:
    """One peer check of a read-only server, as read.  ``peers`` is None when they were not asked (the
    decision did not need them, see :func:`readonly_needs_peers`)."""

    server_id: str
    name: str
    database_promoted: bool               # its replica left recovery
    acting_primary: str | None            # the id the cluster row names (None: no row)
    generation: int | None                # the cluster row's
    settings_role: ServerRole | None      # the role its settings file names, read when the database was promoted
    promoting: bool = False               # a promotion of this server is under way (its lock is held)
    peers: tuple[PeerObservation, ...] | None = None
    alarm: str | None = None              # the condition of this server's raised alarm, if any
    now: float = 0.0                      # a monotonic clock
    incomplete_since: float | None = None  # since when the promotion has looked interrupted
    grace: float = PROMOTION_GRACE        # how long a promotion may look interrupted before the alarm


@dataclass(frozen=True)
class ReadOnlyDecision:
    action: ReadOnlyAction
    sentence: str
    target: PeerObservation | None = None   # where users are sent (REDIRECT)
    event: Event | None = None              # PromotionIncomplete raised or cleared
    incomplete_since: float | None = None   # to remember until the next cycle


def promotion_state(view: ReadOnlyView) -> PromotionState:
    if not view.database_promoted:
        return PromotionState.NONE
    if view.acting_primary != view.server_id:
        return PromotionState.NOT_RECORDED
    if view.settings_role != ServerRole.PRIMARY:
        return PromotionState.SETTINGS_NOT_WRITTEN
    return PromotionState.COMPLETE


def readonly_needs_peers(view: ReadOnlyView) -> bool:
    """Whether asking the other servers could change the decision (not while promoting or taking over)."""
    return not view.promoting and promotion_state(view) is not PromotionState.COMPLETE


def serving(target: PeerObservation | None) -> str:
    if target is None:
        return "no primary or secondary is active: serving in read-only emergency mode"
    return f"redirecting users to {target.name} ({target.url})"


def decide_readonly(view: ReadOnlyView) -> ReadOnlyDecision:
    """The one thing a read-only server does after this peer check."""
    if view.promoting:
        return ReadOnlyDecision(ReadOnlyAction.WAIT, "a promotion of this server is under way: nothing else "
                                "until it ends", incomplete_since=view.incomplete_since)
    state = promotion_state(view)
    ours = view.alarm == PROMOTION_INCOMPLETE
    if state is PromotionState.COMPLETE:
        return ReadOnlyDecision(
            ReadOnlyAction.TAKE_OVER,
            f"the replica was promoted and the promotion names this server the acting primary (generation "
            f"{view.generation}): it takes over as the primary",
            event=clear_alarm(view.name, "the promotion of this server is complete") if ours else None)
    target = redirect_target(view.peers or ())
    action = ReadOnlyAction.REDIRECT if target is not None else ReadOnlyAction.EMERGENCY
    if state is PromotionState.NONE:
        event = clear_alarm(view.name, "this server's database is a replica again: no promotion is pending") \
            if ours else None
        return ReadOnlyDecision(action, serving(target), target, event)
    if state is PromotionState.NOT_RECORDED:
        what = ("its replica was promoted but the promotion is not recorded in the cluster (it does not name this "
                "server the acting primary)")
    else:
        what = (f"the promotion names this server the acting primary (generation {view.generation}) but its "
                "settings file still says read-only")
    since = view.now if view.incomplete_since is None else view.incomplete_since
    if view.now - since < view.grace:
        return ReadOnlyDecision(action, f"{what}: waiting for the promotion to finish; meanwhile {serving(target)}",
                                target, None, since)
    message = (f"a promotion of this server was interrupted: {what}; run 'safehold ha promote' on this server "
               "again to finish it (it is safe to repeat)")
    event = None if ours else raise_alarm(view.name, PROMOTION_INCOMPLETE, message)
    return ReadOnlyDecision(action, f"{message}; meanwhile {serving(target)}", target, event, since)


# --- the fenced server's watch ---------------------------------------------------------------------------


class FencedAction(StrEnum):
    RESTART = "restart"          # the fence is gone: the loops of the server's mode now take over
    FOLLOW = "follow"            # carry on as a read-only server of the acting primary
    NEWER_FENCE = "newer_fence"  # an even newer primary took over
    REDIRECT = "redirect"        # send users to the acting primary
    REFUSE = "refuse"            # nobody to send them to: refuse every change here


@dataclass(frozen=True)
class FencedView:
    """One cycle of a fenced server's watch, as read.  ``acting_answers`` is None when the acting primary
    was not asked (see :func:`fenced_needs_peers`)."""

    fence: Fence | None
    database_is_replica: bool
    settings_role: ServerRole | None
    acting_answers: bool | None = None
    newer: Fence | None = None


@dataclass(frozen=True)
class FencedDecision:
    action: FencedAction
    sentence: str
    target: PeerObservation | None = None  # where users are sent
    fence: Fence | None = None             # the newer fence (NEWER_FENCE)


def fenced_needs_peers(view: FencedView) -> bool:
    return decide_fenced(view).action not in (FencedAction.RESTART, FencedAction.FOLLOW)


def decide_fenced(view: FencedView) -> FencedDecision:
    """The one thing a fenced server does in this cycle."""
    f = view.fence
    if f is None:
        return FencedDecision(FencedAction.RESTART, "this server is no longer fenced")
    if view.database_is_replica and view.settings_role == ServerRole.READONLY:
        return FencedDecision(FencedAction.FOLLOW, "an operator rejoined this server's database as a replica of the "
                              "acting primary and its settings say read-only: it carries on as a read-only server")
    target = (PeerObservation(f.acting_primary_id, f.acting_primary_name, ServerRole.PRIMARY, f.acting_primary_url,
                              True) if view.acting_answers and f.acting_primary_url else None)
    if view.newer is not None:
        n = view.newer
        return FencedDecision(FencedAction.NEWER_FENCE, f"an even newer primary, {n.acting_primary_name or 'unnamed'} "
                              f"at generation {n.generation}, took over: this server follows that fence", target, n)
    if target is not None:
        return FencedDecision(FencedAction.REDIRECT, f"redirecting users to the acting primary {target.name} "
                              f"({target.url}); this server refuses every change", target)
    if not f.acting_primary_url:
        return FencedDecision(FencedAction.REFUSE, "no peer says which server took over: this server refuses every "
                              "change until an operator rejoins it")
    return FencedDecision(FencedAction.REFUSE, f"the acting primary {f.acting_primary_name} ({f.acting_primary_url}) "
                          "does not answer: this server redirects nobody and refuses every change")


# --- a read-only server's data age (what promotion and the readiness checks weigh) ---------------------


def data_age(view: ReplicaView, now: dt.datetime, caught_up_at: dt.datetime | None = None
             ) -> float | None:
    """How old the newest data a replica is known to have may be, in seconds (None: not a replica, or
    nothing is known).  Known from two sources, the fresher wins:

    - ``caught_up_at``: when the primary last reported a WAL position (over HTTPS, /ha/local) that the
      replica had replayed by the time it was checked;
    - the WAL receiver: while it streams and everything received is replayed, the replica is current as of
      the last message it received from the primary (data or keepalive).

    With neither, the time since the last replayed commit (an upper bound while the primary writes)."""
    if not view.in_recovery:
        return None
    ages = []
    if caught_up_at is not None:
        ages.append((now - caught_up_at).total_seconds())
    if view.streaming and not view.replay_backlog_bytes and view.last_msg_receipt_time is not None:
        ages.append((now - view.last_msg_receipt_time).total_seconds())
    if ages:
        return max(0.0, min(ages))
    return None if view.replay_delay_seconds is None else max(0.0, view.replay_delay_seconds)
