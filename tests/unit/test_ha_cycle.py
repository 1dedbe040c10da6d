"""The HA agent's decisions as tables (no servers, no mocks): (view) -> (action, sentence), for the writer's
heartbeat, the read-only server's peer check and the fenced server's watch, and replays of a promotion
interrupted halfway."""

from __future__ import annotations

from dataclasses import replace

import pytest

from safehold.domain import ServerRole
from safehold.ha.cycle import (
    PROMOTION_INCOMPLETE,
    WRITER_UNCONFIRMED,
    FencedAction,
    FencedView,
    PromotionState,
    ReadOnlyAction,
    ReadOnlyView,
    WriterAction,
    WriterView,
    decide_fenced,
    decide_readonly,
    decide_writer,
    fenced_needs_peers,
    promotion_state,
    readonly_needs_peers,
)
from safehold.ha.policy import EventKind, PeerObservation
from safehold.runtime import Fence
from safehold.runtime.writelease import Confirmation, WriteLease

R = ServerRole
C = Confirmation
NEWER = Fence(3, "id-b", "b", "https://b:8443")
NEWEST = Fence(4, "id-c", "c", "https://c:8443")
HELD = WriteLease(10.0, renewed_at=95.0, how=C.CONFIRMED)   # holds until 105
LAPSED = WriteLease(10.0, renewed_at=80.0, how=C.CONFIRMED)  # ran out at 90

# --- the writer's heartbeat ------------------------------------------------------------------------------

W = WriterView(name="a", role=R.PRIMARY, database_is_replica=False, settings_role=None, newer=None,
               confirmation=C.CONFIRMED, override=False, lease=HELD, started=100.0, now=100.5, alarm=None)
HEARTBEAT_OK = "no action: this primary server writes its heartbeat; its write lease is renewed: no peer reports a newer primary"
LAPSED_WORDS = "no peer confirmed its generation and its write lease ran out: it refuses every change"
FOLLOW = ("this server's database became a replica of the acting primary and its settings say read-only: it carries "
          "on as a read-only server")


@pytest.mark.parametrize(("view", "action", "sentence"), [
    pytest.param(W, WriterAction.HEARTBEAT, HEARTBEAT_OK, id="a peer confirmed: heartbeat"),
    pytest.param(replace(W, confirmation=C.UNCONFIRMED), WriterAction.HEARTBEAT,
                 "no action: this primary server writes its heartbeat; no peer answered: its write lease goes on from "
                 "punctual heartbeats", id="no peer answered, the lease held: heartbeat on punctual ticks"),
    pytest.param(replace(W, confirmation=C.UNCONFIRMED, lease=LAPSED), WriterAction.HEARTBEAT,
                 f"no action: this primary server writes its heartbeat; {LAPSED_WORDS}",
                 id="no peer answered after a stall: the lease stays out"),
    pytest.param(replace(W, confirmation=C.UNCONFIRMED, lease=LAPSED, override=True), WriterAction.HEARTBEAT,
                 "no action: this primary server writes its heartbeat; its write lease is renewed by an operator's "
                 "override", id="an operator's override renews the lease"),
    pytest.param(replace(W, role=R.STANDALONE, lease=None), WriterAction.HEARTBEAT,
                 "no action: this standalone server writes its heartbeat; it needs no write lease",
                 id="standalone: no lease"),
    pytest.param(replace(W, role=R.SECONDARY), WriterAction.HEARTBEAT,
                 HEARTBEAT_OK.replace("primary server", "secondary server"), id="a secondary heartbeats too"),
    pytest.param(replace(W, newer=NEWER), WriterAction.FENCE,
                 "a peer reports a newer primary, b at generation 3: this server fences itself",
                 id="a peer reports a newer generation: fence"),
    pytest.param(replace(W, newer=NEWER, override=True), WriterAction.FENCE,
                 "a peer reports a newer primary, b at generation 3: this server fences itself",
                 id="an override never outweighs a newer primary"),
    pytest.param(replace(W, database_is_replica=True, settings_role=R.READONLY), WriterAction.FOLLOW, FOLLOW,
                 id="switched over: the database is a replica and the settings say read-only: follow"),
    pytest.param(replace(W, database_is_replica=True, settings_role=R.READONLY, newer=NEWER), WriterAction.FOLLOW,
                 FOLLOW, id="rejoined: follow the database rather than fence"),
    pytest.param(replace(W, database_is_replica=True, settings_role=R.PRIMARY, newer=NEWER), WriterAction.FENCE,
                 "a peer reports a newer primary, b at generation 3: this server fences itself",
                 id="a replica whose settings still say primary, and a newer primary: fence"),
    pytest.param(replace(W, database_is_replica=True, settings_role=R.PRIMARY), WriterAction.WAIT,
                 "this server's database is a replica but its settings say primary: waiting for the switchover or "
                 "rejoin to finish, no heartbeat written; its write lease is renewed: no peer reports a newer primary",
                 id="a switchover half done: wait, write nothing"),
    pytest.param(replace(W, role=R.STANDALONE, lease=None, settings_role=R.PRIMARY), WriterAction.ADOPT,
                 "this standalone server's settings make it the primary of a cluster ('safehold ha pack'): it takes "
                 "the primary role now", id="'ha pack' made it the primary: adopt the role"),
    pytest.param(replace(W, role=R.STANDALONE, lease=None, settings_role=R.STANDALONE), WriterAction.HEARTBEAT,
                 "no action: this standalone server writes its heartbeat; it needs no write lease",
                 id="the settings file changed but still says standalone: heartbeat"),
    pytest.param(replace(W, settings_role=R.PRIMARY), WriterAction.HEARTBEAT, HEARTBEAT_OK,
                 id="a primary adopts nothing"),
])
def test_writer_decision(view: WriterView, action: WriterAction, sentence: str) -> None:
    d = decide_writer(view)
    assert (d.action, d.sentence) == (action, sentence)


@pytest.mark.parametrize(("view", "confirmation"), [
    (W, C.CONFIRMED),
    (replace(W, confirmation=C.UNCONFIRMED), C.UNCONFIRMED),
    (replace(W, confirmation=C.UNCONFIRMED, override=True), C.OVERRIDE),
    (replace(W, database_is_replica=True, settings_role=R.PRIMARY, confirmation=C.UNCONFIRMED), C.UNCONFIRMED),
    (replace(W, newer=NEWER), None),
    (replace(W, database_is_replica=True, settings_role=R.READONLY), None),
])
def test_the_lease_is_renewed_with(view: WriterView, confirmation: Confirmation | None) -> None:
    assert decide_writer(view).confirmation == confirmation


@pytest.mark.parametrize(("view", "kind", "condition"), [
    pytest.param(replace(W, confirmation=C.UNCONFIRMED, lease=LAPSED), EventKind.RAISE_ALARM, WRITER_UNCONFIRMED,
                 id="the lease cannot be confirmed: raise"),
    pytest.param(replace(W, confirmation=C.UNCONFIRMED, lease=LAPSED, alarm=WRITER_UNCONFIRMED), None, None,
                 id="raised once"),
    pytest.param(replace(W, confirmation=C.UNCONFIRMED, lease=LAPSED, alarm="AuditSpoolFailed"), None, None,
                 id="another alarm is up: left alone"),
    pytest.param(replace(W, lease=LAPSED, alarm=WRITER_UNCONFIRMED), EventKind.CLEAR_ALARM, None,
                 id="a peer confirmed again: clear"),
    pytest.param(replace(W, confirmation=C.UNCONFIRMED, lease=LAPSED, override=True, alarm=WRITER_UNCONFIRMED),
                 EventKind.CLEAR_ALARM, None, id="the override clears it"),
    pytest.param(replace(W, alarm="AuditSpoolFailed"), None, None, id="only its own alarm is cleared"),
    pytest.param(replace(W, role=R.STANDALONE, lease=None, alarm=WRITER_UNCONFIRMED), None, None, id="no lease"),
])
def test_writer_unconfirmed_alarm(view: WriterView, kind: EventKind | None, condition: str | None) -> None:
    event = decide_writer(view).event
    assert (event and event.kind) == kind
    if condition is not None:
        assert event is not None and event.args[0] == condition


def test_the_alarm_says_what_to_do() -> None:
    event = decide_writer(replace(W, confirmation=C.UNCONFIRMED, lease=LAPSED)).event
    assert event is not None and event.args == (WRITER_UNCONFIRMED, event.message) and event.subject == "a"
    assert event.message == ("the write lease ran out 10.5 s ago (it lasts 10 s): this server may have been frozen "
                             "long enough for a standby to take over; no peer of the cluster confirmed this server's "
                             "generation, so it refuses every change ('safehold ha override-lease' if no other server "
                             "took over)")


def test_fencing_publishes_the_fence() -> None:
    event = decide_writer(replace(W, newer=NEWER)).event
    assert event is not None and event.kind is EventKind.FENCED
    assert event.args == ("a", "b") and event.message == NEWER.message()


# --- the read-only server's peer check -------------------------------------------------------------------

P = PeerObservation("id-p", "p", R.PRIMARY, "https://p:8443", True)
S = PeerObservation("id-s", "s", R.SECONDARY, "https://s:8443", True)
V = ReadOnlyView(server_id="id-r", name="r", database_promoted=False, acting_primary="id-p", generation=2,
                 settings_role=None, peers=(P, S), now=100.0)
EMERGENCY = "no primary or secondary is active: serving in read-only emergency mode"
TAKE_OVER = ("the replica was promoted and the promotion names this server the acting primary (generation 3): it "
             "takes over as the primary")
NOT_RECORDED = ("its replica was promoted but the promotion is not recorded in the cluster (it does not name this "
                "server the acting primary)")
NOT_WRITTEN = ("the promotion names this server the acting primary (generation 3) but its settings file still says "
               "read-only")
PROMOTED = replace(V, database_promoted=True, acting_primary="id-r", generation=3, settings_role=R.PRIMARY)


def interrupted(what: str) -> str:
    return (f"a promotion of this server was interrupted: {what}; run 'safehold ha promote' on this server again to "
            "finish it (it is safe to repeat)")


@pytest.mark.parametrize(("view", "action", "sentence"), [
    pytest.param(V, ReadOnlyAction.REDIRECT, "redirecting users to p (https://p:8443)", id="the primary answers"),
    pytest.param(replace(V, peers=(replace(P, healthy=False), S)), ReadOnlyAction.REDIRECT,
                 "redirecting users to s (https://s:8443)", id="the primary is down: a secondary"),
    pytest.param(replace(V, peers=(replace(P, healthy=False),)), ReadOnlyAction.EMERGENCY, EMERGENCY,
                 id="nobody answers: emergency mode"),
    pytest.param(replace(V, peers=()), ReadOnlyAction.EMERGENCY, EMERGENCY, id="no other server"),
    pytest.param(PROMOTED, ReadOnlyAction.TAKE_OVER, TAKE_OVER, id="promoted, recorded, written: take over"),
    pytest.param(replace(PROMOTED, promoting=True), ReadOnlyAction.WAIT,
                 "a promotion of this server is under way: nothing else until it ends",
                 id="one long action at a time: a promotion runs"),
    pytest.param(replace(V, promoting=True), ReadOnlyAction.WAIT,
                 "a promotion of this server is under way: nothing else until it ends",
                 id="a promotion runs, the replica not promoted yet"),
    pytest.param(replace(PROMOTED, acting_primary="id-p"), ReadOnlyAction.REDIRECT,
                 f"{NOT_RECORDED}: waiting for the promotion to finish; meanwhile redirecting users to p "
                 "(https://p:8443)", id="promoted but not recorded: says so at once"),
    pytest.param(replace(PROMOTED, acting_primary=None, generation=None, peers=()), ReadOnlyAction.EMERGENCY,
                 f"{NOT_RECORDED}: waiting for the promotion to finish; meanwhile {EMERGENCY}",
                 id="promoted, no cluster row"),
    pytest.param(replace(PROMOTED, settings_role=R.READONLY), ReadOnlyAction.REDIRECT,
                 f"{NOT_WRITTEN}: waiting for the promotion to finish; meanwhile redirecting users to p "
                 "(https://p:8443)", id="recorded but the settings not written: says so at once"),
    pytest.param(replace(PROMOTED, acting_primary="id-p", incomplete_since=80.0), ReadOnlyAction.REDIRECT,
                 f"{interrupted(NOT_RECORDED)}; meanwhile redirecting users to p (https://p:8443)",
                 id="not recorded for longer than a promotion takes: interrupted"),
    pytest.param(replace(PROMOTED, settings_role=R.READONLY, incomplete_since=80.0, peers=()),
                 ReadOnlyAction.EMERGENCY, f"{interrupted(NOT_WRITTEN)}; meanwhile {EMERGENCY}",
                 id="settings not written for longer than a promotion takes: interrupted"),
])
def test_readonly_decision(view: ReadOnlyView, action: ReadOnlyAction, sentence: str) -> None:
    d = decide_readonly(view)
    assert (d.action, d.sentence) == (action, sentence)
    assert (d.target is not None) is (action is ReadOnlyAction.REDIRECT)


@pytest.mark.parametrize(("view", "state", "needs_peers"), [
    (V, PromotionState.NONE, True),
    (replace(PROMOTED, acting_primary="id-p"), PromotionState.NOT_RECORDED, True),
    (replace(PROMOTED, settings_role=R.READONLY), PromotionState.SETTINGS_NOT_WRITTEN, True),
    (PROMOTED, PromotionState.COMPLETE, False),
    (replace(V, promoting=True), PromotionState.NONE, False),
])
def test_promotion_state(view: ReadOnlyView, state: PromotionState, needs_peers: bool) -> None:
    assert promotion_state(view) is state
    assert readonly_needs_peers(view) is needs_peers


def replay(views: list[ReadOnlyView]) -> list[tuple[ReadOnlyAction, str | None]]:
    """Run the peer check cycle after cycle as the agent does: it remembers the alarm and since when the
    promotion looks interrupted."""
    alarm, since, seen = None, None, []
    for v in views:
        d = decide_readonly(replace(v, alarm=alarm, incomplete_since=since))
        since = d.incomplete_since
        if d.event is not None:
            alarm = d.event.args[0] if d.event.kind is EventKind.RAISE_ALARM else None
        seen.append((d.action, None if d.event is None else f"{d.event.kind}:{d.event.args[0]}"))
    return seen


RAISE = f"{EventKind.RAISE_ALARM}:{PROMOTION_INCOMPLETE}"
CLEARED = f"{EventKind.CLEAR_ALARM}:"


def at(view: ReadOnlyView, t: float) -> ReadOnlyView:
    return replace(view, now=t)


def test_replay_a_promotion_that_finishes_in_time_raises_nothing() -> None:
    not_recorded = replace(PROMOTED, acting_primary="id-p")
    not_written = replace(PROMOTED, settings_role=R.READONLY)
    seen = replay([at(V, 0), at(not_recorded, 1), at(not_written, 2), at(PROMOTED, 3)])
    assert seen == [(ReadOnlyAction.REDIRECT, None), (ReadOnlyAction.REDIRECT, None), (ReadOnlyAction.REDIRECT, None),
                    (ReadOnlyAction.TAKE_OVER, None)]


def test_replay_promoted_but_never_recorded_raises_once_and_the_operator_finishes_it() -> None:
    not_recorded = replace(PROMOTED, acting_primary="id-p")
    seen = replay([at(V, 0), at(not_recorded, 1), at(not_recorded, 10), at(not_recorded, 16), at(not_recorded, 30),
                   at(PROMOTED, 40)])
    assert [a for a, _ in seen] == [ReadOnlyAction.REDIRECT] * 5 + [ReadOnlyAction.TAKE_OVER]
    assert [e for _, e in seen] == [None, None, None, RAISE, None, f"{CLEARED}the promotion of this server is complete"]


def test_replay_recorded_but_settings_never_written() -> None:
    not_written = replace(PROMOTED, settings_role=R.READONLY, peers=())
    seen = replay([at(not_written, 0), at(not_written, 15), at(not_written, 20)])
    assert seen == [(ReadOnlyAction.EMERGENCY, None), (ReadOnlyAction.EMERGENCY, RAISE), (ReadOnlyAction.EMERGENCY, None)]


def test_replay_the_replica_rejoined_instead_clears_the_alarm() -> None:
    not_recorded = replace(PROMOTED, acting_primary="id-p")
    seen = replay([at(not_recorded, 0), at(not_recorded, 20), at(V, 30), at(V, 31)])
    assert [e for _, e in seen] == [
        None, RAISE, f"{CLEARED}this server's database is a replica again: no promotion is pending", None]


def test_replay_an_interruption_seen_again_counts_afresh() -> None:
    not_recorded = replace(PROMOTED, acting_primary="id-p")
    seen = replay([at(not_recorded, 0), at(V, 10), at(not_recorded, 20), at(not_recorded, 30)])
    assert [e for _, e in seen] == [None, None, None, None]


def test_the_promotion_alarm_names_the_server_and_the_fix() -> None:
    d = decide_readonly(replace(PROMOTED, acting_primary="id-p", incomplete_since=0.0))
    assert d.event is not None and d.event.subject == "r"
    assert d.event.args == (PROMOTION_INCOMPLETE, interrupted(NOT_RECORDED))


# --- the fenced server's watch ---------------------------------------------------------------------------

F = FencedView(fence=NEWER, database_is_replica=False, settings_role=None, acting_answers=True)
REJOINED = ("an operator rejoined this server's database as a replica of the acting primary and its settings say "
            "read-only: it carries on as a read-only server")


@pytest.mark.parametrize(("view", "action", "sentence"), [
    pytest.param(F, FencedAction.REDIRECT, "redirecting users to the acting primary b (https://b:8443); this server "
                 "refuses every change", id="the acting primary answers: redirect"),
    pytest.param(replace(F, acting_answers=False), FencedAction.REFUSE,
                 "the acting primary b (https://b:8443) does not answer: this server redirects nobody and refuses "
                 "every change", id="the acting primary is down"),
    pytest.param(replace(F, fence=Fence(3, "", "", "")), FencedAction.REFUSE,
                 "no peer says which server took over: this server refuses every change until an operator rejoins "
                 "it", id="fenced at start-up with no peer answering"),
    pytest.param(replace(F, newer=NEWEST), FencedAction.NEWER_FENCE,
                 "an even newer primary, c at generation 4, took over: this server follows that fence",
                 id="a newer fence"),
    pytest.param(replace(F, database_is_replica=True, settings_role=R.READONLY), FencedAction.FOLLOW, REJOINED,
                 id="rejoined as a replica: follow"),
    pytest.param(replace(F, database_is_replica=True, settings_role=R.READONLY, newer=NEWEST), FencedAction.FOLLOW,
                 REJOINED, id="rejoined: follow before any newer fence"),
    pytest.param(replace(F, database_is_replica=True, settings_role=R.PRIMARY), FencedAction.REDIRECT,
                 "redirecting users to the acting primary b (https://b:8443); this server refuses every change",
                 id="a rejoin half done: stay fenced"),
    pytest.param(replace(F, fence=None), FencedAction.RESTART, "this server is no longer fenced",
                 id="the fence is gone"),
])
def test_fenced_decision(view: FencedView, action: FencedAction, sentence: str) -> None:
    d = decide_fenced(view)
    assert (d.action, d.sentence) == (action, sentence)


def test_fenced_targets() -> None:
    assert decide_fenced(F).target == PeerObservation("id-b", "b", R.PRIMARY, "https://b:8443", True)
    newer = decide_fenced(replace(F, newer=NEWEST))
    assert newer.fence == NEWEST and newer.target is not None and newer.target.name == "b"
    assert decide_fenced(replace(F, acting_answers=False)).target is None
    assert fenced_needs_peers(F) and not fenced_needs_peers(replace(F, fence=None))
    assert not fenced_needs_peers(replace(F, database_is_replica=True, settings_role=R.READONLY))
