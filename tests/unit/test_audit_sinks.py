"""Audit streaming's pure parts as tables: framing, the record and its syslog message, batching across chains,
cursor advance, back-off, the fail-closed verdict and its cache, and the [[audit.sinks]] configuration."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from safehold.audit.chain import AuditEvent, ChainedRecord, StoredRecord
from safehold.audit.delivery import advance, contiguous, plan, retry_delay
from safehold.audit.gate import SinkGate, needs_check, refusal
from safehold.audit.sinks import (
    BOM,
    MASK,
    FileSink,
    WebhookSink,
    octet_counted,
    record_json,
    safe_detail,
    syslog_message,
    unframe,
)
from safehold.config import CONFIG_NAME, AuditSection, AuditSinkSection, load_settings
from safehold.errors import AuditUnavailable, ConfigError
from safehold.storage.audit_sinks import SinkState

A, B = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def rec(server: str, seq: int, second: float = 0.0, **event: Any) -> StoredRecord:
    e = AuditEvent(actor=event.pop("actor", "alice"), action=event.pop("action", "password_retrieved"),
                   result=event.pop("result", "success"), at=T0 + dt.timedelta(seconds=second), **event)
    return StoredRecord(seq * 10 + (1 if server == A else 2),
                        ChainedRecord(server, "primary", seq, e, bytes([seq - 1]) * 32, bytes([seq]) * 32))


def keys(batch: Sequence[StoredRecord]) -> list[tuple[str, int]]:
    return [("A" if s.record.server_id == A else "B", s.record.seq) for s in batch]


# --- framing (RFC 5425 4.3 / RFC 6587 3.4.1) ---------------------------------------------------------------------

@pytest.mark.parametrize(("message", "framed"), [
    (b"<13>1 - - - - - -", b"17 <13>1 - - - - - -"),
    (b"x", b"1 x"),
    ("é".encode(), b"2 \xc3\xa9"),  # octets, not characters
    (b"a b 12 c", b"8 a b 12 c"),
])
def test_octet_counting(message: bytes, framed: bytes) -> None:
    assert octet_counted(message) == framed
    assert unframe(framed) == ([message], b"")


@pytest.mark.parametrize(("stream", "messages", "rest"), [
    (b"3 abc2 de", [b"abc", b"de"], b""),
    (b"3 abc5 de", [b"abc"], b"5 de"),  # the second frame is not whole yet
    (b"3 ab", [], b"3 ab"),
    (b"12", [], b"12"),  # the length is not ended yet
    (b"", [], b""),
])
def test_unframe_keeps_a_partial_frame(stream: bytes, messages: list[bytes], rest: bytes) -> None:
    assert unframe(stream) == (messages, rest)


@pytest.mark.parametrize("stream", [b"<13>1 x", b"03 abc", b"abc", b"12345678901 x"])
def test_unframe_refuses_what_is_not_octet_counted(stream: bytes) -> None:
    with pytest.raises(ValueError, match="octet-counted"):
        unframe(stream)


# --- the record and its syslog message ------------------------------------------------------------------------------

def test_the_record_carries_its_chain_position_and_mac() -> None:
    r = record_json(rec(A, 3, 1.5, target_name="db01/root", detail={"reason": "ticket 7"}), "c-1")
    assert r["server_id"] == A and r["seq"] == 3 and r["id"] == 31 and r["cluster_id"] == "c-1"
    assert r["mac"] == "03" * 32 and r["prev_mac"] == "02" * 32
    assert r["at"] == "2025-03-01T12:00:01.500000Z"
    assert r["detail"] == {"reason": "ticket 7"} and r["target_name"] == "db01/root"
    assert set(r) == {"cluster_id", "id", "server_id", "server_role", "seq", "at", "actor", "source_ip", "action",
                      "result", "target_type", "target_id", "target_name", "detail", "prev_mac", "mac"}


@pytest.mark.parametrize(("detail", "expected"), [
    ({"reason": "ticket 7"}, {"reason": "ticket 7"}),
    ({"fields": ["password", "notes"]}, {"fields": ["password", "notes"]}),  # names of fields, not values
    ({"password_reset": True}, {"password_reset": True}),
    ({"new_key_id": "k-2"}, {"new_key_id": "k-2"}),
    ({"password": "hunter2"}, {"password": MASK}),
    ({"api_token": "abc"}, {"api_token": MASK}),
    ({"Secret": "x", "n": 1}, {"Secret": MASK, "n": 1}),
])
def test_a_detail_value_named_like_a_secret_is_masked(detail: dict[str, Any], expected: dict[str, Any]) -> None:
    assert safe_detail(detail) == expected


@pytest.mark.parametrize(("result", "action", "pri", "msgid"), [
    ("success", "password_retrieved", "<85>", "password_retrieved"),  # authpriv (10) x 8 + notice (5)
    ("failure", "login_failed", "<84>", "login_failed"),  # + warning (4)
    ("denied", "x" * 40, "<84>", "x" * 32),  # MSGID at most 32
])
def test_syslog_message(result: str, action: str, pri: str, msgid: str) -> None:
    r = record_json(rec(A, 7, action=action, result=result, target_name='a "quoted" ]name['), "c-1")
    msg = syslog_message(r, facility=10, app_name="safehold", hostname="vault 1\n")
    header, _, body = msg.partition(BOM)
    fields = header.decode().split(" ", 6)
    assert fields == [f"{pri}1", "2025-03-01T12:00:00.000000Z", "vault1", "safehold", "-", msgid,
                      f'[safehold-audit@32473 server="{A}" seq="7" mac="{"07" * 32}"] ']
    assert json.loads(body) == r  # the whole record, UTF-8 after the BOM, one line
    assert b"\n" not in msg


def test_sd_param_values_are_escaped() -> None:
    from safehold.audit.sinks import param_value

    assert param_value('a"b\\c]d') == 'a\\"b\\\\c\\]d'


# --- batching across chains, cursors, back-off ------------------------------------------------------------------------

@pytest.mark.parametrize(("after", "seqs", "taken"), [
    (0, [1, 2, 3], [1, 2, 3]),
    (0, [1, 3, 4], [1]),  # seq 2 is not committed yet: nothing after it
    (5, [6, 7], [6, 7]),
    (5, [7, 8], []),
    (0, [], []),
])
def test_a_chain_is_cut_at_its_first_gap(after: int, seqs: list[int], taken: list[int]) -> None:
    assert [s.record.seq for s in contiguous(after, [rec(A, n) for n in seqs])] == taken


@pytest.mark.parametrize(("cursors", "pages", "limit", "batch"), [
    # two chains merged by time, each in seq order
    ({}, {A: [(1, 0), (2, 2)], B: [(1, 1), (2, 3)]}, 10, [("A", 1), ("B", 1), ("A", 2), ("B", 2)]),
    # a chain whose clock went back keeps its order (seq) all the same
    ({}, {A: [(1, 5), (2, 1)], B: [(1, 3)]}, 10, [("B", 1), ("A", 1), ("A", 2)]),
    # the limit takes a prefix of each chain
    ({A: 4}, {A: [(5, 0), (6, 2)], B: [(1, 1), (2, 3)]}, 3, [("A", 5), ("B", 1), ("A", 6)]),
    # a gap holds back its chain only
    ({}, {A: [(1, 0), (3, 1)], B: [(1, 2)]}, 10, [("A", 1), ("B", 1)]),
    # a page that does not start after the cursor (a record not committed yet) sends nothing of that chain
    ({A: 1}, {A: [(3, 0)], B: [(1, 1)]}, 10, [("B", 1)]),
    ({}, {}, 10, []),
])
def test_plan(cursors: dict[str, int], pages: dict[str, list[tuple[int, float]]], limit: int,
              batch: list[tuple[str, int]]) -> None:
    records = {sid: [rec(sid, seq, second) for seq, second in page] for sid, page in pages.items()}
    assert keys(plan(cursors, records, limit)) == batch


@pytest.mark.parametrize(("cursors", "sent", "moved"), [
    ({}, [(A, 1), (A, 2), (B, 1)], {A: 2, B: 1}),
    ({A: 4}, [(A, 5)], {A: 5}),
    ({A: 9}, [(A, 5)], {}),  # never back
    ({A: 1, B: 7}, [], {}),
])
def test_cursor_advance(cursors: dict[str, int], sent: list[tuple[str, int]], moved: dict[str, int]) -> None:
    assert advance(cursors, [rec(sid, seq) for sid, seq in sent]) == moved


@pytest.mark.parametrize(("failures", "delay"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0),
                                                 (10_000, 30.0)])
def test_back_off_doubles_up_to_its_maximum(failures: int, delay: float) -> None:
    assert retry_delay(failures, 1.0, 30.0) == delay


# --- fail closed ------------------------------------------------------------------------------------------------------

def sink(name: str, *, fail_closed: bool = True, max_lag: int = 100) -> AuditSinkSection:
    return AuditSinkSection(name=name, kind="file", path=Path(f"{name}.jsonl"), fail_closed=fail_closed,
                            max_lag=max_lag)


def state(name: str, *, lag: int = 0, error: str | None = None) -> SinkState:
    return SinkState(name, "file", lag, error, 1 if error else 0, None, None, None, 0)


@pytest.mark.parametrize(("sinks", "states", "refused"), [
    ([sink("siem")], {"siem": state("siem")}, None),
    ([sink("siem")], {"siem": state("siem", lag=100)}, None),  # at the bound: still taken
    ([sink("siem")], {"siem": state("siem", lag=101)}, "'siem' is 101 records behind (more than its max_lag of 100)"),
    ([sink("siem")], {"siem": state("siem", error="siem.internal:6514 refused")}, "'siem' cannot take records"),
    ([sink("siem")], {}, "'siem' has not started yet"),
    ([sink("siem", fail_closed=False)], {"siem": state("siem", error="refused")}, None),
    ([sink("a", fail_closed=False), sink("b")], {"a": state("a", error="x"), "b": state("b", error="y")}, "'b'"),
])
def test_refusal(sinks: list[AuditSinkSection], states: dict[str, SinkState], refused: str | None) -> None:
    why = refusal(sinks, states)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why and why.startswith("audited actions are refused")
        assert "siem.internal" not in why  # a user reads it: the receiver is not named


def event(actor: str) -> AuditEvent:
    return AuditEvent(actor=actor, action="x", result="success")


@pytest.mark.parametrize(("sinks", "actors", "checked"), [
    ([sink("a")], ["alice"], True),
    ([sink("a")], ["system"], False),  # the server's own start and stop are never refused
    ([sink("a")], ["system", "bob"], True),
    ([sink("a", fail_closed=False)], ["alice"], False),
    ([], ["alice"], False),
])
def test_which_events_wait_on_the_sinks(sinks: list[AuditSinkSection], actors: list[str], checked: bool) -> None:
    assert needs_check(AuditSection(sinks=sinks), [event(a) for a in actors]) is checked


class CountingGate(SinkGate):
    """The gate with its database read replaced by a table (the verdict and its cache are what is tested)."""

    def __init__(self, states: Mapping[str, SinkState], now: list[float]) -> None:
        super().__init__(clock=lambda: now[0], ttl=1.0)
        self.states, self.reads = dict(states), 0

    async def _load(self, source: Any, names: tuple[str, ...]) -> Mapping[str, SinkState]:
        self.reads += 1
        await asyncio.sleep(0)
        return {n: s for n, s in self.states.items() if n in names}


def test_the_gate_reads_the_state_once_per_second_and_refuses_with_the_sink_named() -> None:
    section = AuditSection(sinks=[sink("siem")])
    now = [100.0]
    gate = CountingGate({"siem": state("siem")}, now)

    async def story() -> None:
        await asyncio.gather(*(gate.check(section, None, [event("alice")]) for _ in range(20)))  # type: ignore[arg-type]
        assert gate.reads == 1  # twenty requests at once: one read
        gate.states["siem"] = state("siem", error="the receiver refused the connection")
        now[0] += 0.5
        await gate.check(section, None, [event("alice")])  # type: ignore[arg-type]
        assert gate.reads == 1  # within the second: the verdict as it was
        now[0] += 0.6
        with pytest.raises(AuditUnavailable) as refused:
            await gate.check(section, None, [event("alice")])  # type: ignore[arg-type]
        assert "'siem'" in refused.value.message and "refused the connection" not in refused.value.message
        await gate.check(section, None, [event("system")])  # type: ignore[arg-type]
        gate.states["siem"] = state("siem")
        now[0] += 1.1
        await gate.check(section, None, [event("alice")])  # type: ignore[arg-type]
        assert gate.reads == 3

    asyncio.run(story())


# --- the file and webhook sinks' own parts ------------------------------------------------------------------------------

def test_the_file_sink_appends_json_lines_privately(tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    file_sink = FileSink(AuditSinkSection(name="f", kind="file", path=Path("audit.jsonl")), lambda p: tmp_path / p)
    first = [record_json(rec(A, n), "c") for n in (1, 2)]
    asyncio.run(file_sink.send(first))
    asyncio.run(file_sink.send([record_json(rec(A, 3), "c")]))
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [1, 2, 3]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_the_file_sink_never_follows_a_link(tmp_path: Path) -> None:
    from safehold.audit.sinks import SinkError

    (tmp_path / "elsewhere").write_text("")
    os.symlink(tmp_path / "elsewhere", tmp_path / "audit.jsonl")
    file_sink = FileSink(AuditSinkSection(name="f", kind="file", path=Path("audit.jsonl")), lambda p: tmp_path / p)
    with pytest.raises(SinkError, match="file sink 'f': .*audit.jsonl cannot be written"):
        asyncio.run(file_sink.send([record_json(rec(A, 1), "c")]))
    assert (tmp_path / "elsewhere").read_text() == ""


def test_the_webhook_batch_and_its_signature(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    section = AuditSinkSection(name="hook", kind="webhook", url="https://siem.example:8443/in?token=t0ken",
                               secret_file=Path("secret"))
    hook = WebhookSink(section, lambda p: tmp_path / p, "c-1")
    assert hook.target() == "HTTPS POST to https://siem.example:8443/…"  # no path, no query: they may hold a token
    records = [record_json(rec(A, 1), "c-1")]
    body = hook.body(records, 1700000000)
    assert json.loads(body) == {"cluster_id": "c-1", "sink": "hook", "sent_at": 1700000000, "records": records}
    secret = hook._secret()
    assert secret == b"s3cret"
    from safehold.audit.sinks import sign

    assert sign(secret, body) == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()


# --- configuration --------------------------------------------------------------------------------------------------------

SERVER = '[server]\nid = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"\nname = "vault-1"\n[database]\nport = 5433\n'


def load_sinks(tmp_path: Path, sinks: str) -> AuditSection:
    (tmp_path / CONFIG_NAME).write_text(SERVER + sinks)
    return load_settings(tmp_path, env={}).audit


def test_sinks_load_with_their_defaults(tmp_path: Path) -> None:
    audit = load_sinks(tmp_path, '[audit]\ninterval = 0.5\n'
                                 '[[audit.sinks]]\nname = "siem"\nkind = "syslog"\nhost = "127.0.0.1"\n'
                                 'ca_file = "tls/siem-ca.crt"\nfail_closed = true\n'
                                 '[[audit.sinks]]\nname = "hook"\nkind = "webhook"\nurl = "https://h.example/x"\n'
                                 '[[audit.sinks]]\nname = "local"\nkind = "file"\npath = "audit.jsonl"\n')
    assert audit.interval == 0.5 and [s.name for s in audit.sinks] == ["siem", "hook", "local"]
    assert [s.name for s in audit.fail_closed] == ["siem"]
    assert audit.sinks[0].syslog == ("127.0.0.1", 6514, "authpriv", "safehold")
    assert (audit.sinks[0].max_lag, audit.sinks[0].start, audit.sinks[0].batch) == (1000, "now", 500)


@pytest.mark.parametrize(("sinks", "says"), [
    ('[[audit.sinks]]\nname = "s"\nkind = "syslog"\n', "sink 's': a syslog sink needs host"),
    ('[[audit.sinks]]\nname = "f"\nkind = "file"\n', "sink 'f': a file sink needs path"),
    ('[[audit.sinks]]\nname = "w"\nkind = "webhook"\n', "sink 'w': a webhook sink needs url"),
    ('[[audit.sinks]]\nname = "f"\nkind = "file"\npath = "a"\nurl = "https://x.example/"\n',
     "sink 'f': url is not a key of a file sink"),
    ('[[audit.sinks]]\nname = "s"\nkind = "syslog"\nhost = "h"\npath = "a"\n', "path is not a key of a syslog sink"),
    ('[[audit.sinks]]\nname = "w"\nkind = "webhook"\nurl = "http://x.example/"\n', "audit.sinks.0.url: "),
    ('[[audit.sinks]]\nname = "w"\nkind = "webhook"\nurl = "https://u:p@x.example/"\n', "user name or password"),
    ('[[audit.sinks]]\nname = "k"\nkind = "kafka"\n', "audit.sinks.0.kind: "),
    ('[[audit.sinks]]\nkind = "file"\npath = "a"\n', "audit.sinks.0.name: "),
    ('[[audit.sinks]]\nname = "has space"\nkind = "file"\npath = "a"\n', "audit.sinks.0.name: "),
    ('[[audit.sinks]]\nname = "s"\nkind = "syslog"\nhost = "h"\nfacility = "nope"\n', "audit.sinks.0.facility: "),
    ('[[audit.sinks]]\nname = "f"\nkind = "file"\npath = "a"\nmax_lag = 0\n', "audit.sinks.0.max_lag: "),
    ('[[audit.sinks]]\nname = "f"\nkind = "file"\npath = "a"\nstart = "yesterday"\n', "audit.sinks.0.start: "),
    ('[[audit.sinks]]\nname = "f"\nkind = "file"\npath = "a"\nretry_initial = 10\nretry_max = 5\n',
     "retry_max must be at least retry_initial"),
    ('[[audit.sinks]]\nname = "f"\nkind = "file"\npath = "a"\nsecret = 1\n', "audit.sinks.0.secret: unknown key"),
    ('[[audit.sinks]]\nname = "f"\nkind = "file"\npath = "a"\n[[audit.sinks]]\nname = "f"\nkind = "file"\n'
     'path = "b"\n', "two sinks are named f"),
    ('[audit]\ninterval = 0\n', "audit.interval: "),
])
def test_a_bad_sink_is_refused_with_the_key_named(tmp_path: Path, sinks: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_sinks(tmp_path, sinks)
    assert says in str(refused.value)
    assert "u:p" not in str(refused.value)  # a URL is never echoed


def _chain(*errors: BaseException) -> BaseException:
    """errors[0] wrapping errors[1] wrapping …, as httpx over httpcore over anyio raise them."""
    for outer, inner in zip(errors, errors[1:], strict=False):
        outer.__context__ = inner
    return errors[0]


def _with_cause(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


REFUSED = ConnectionRefusedError(111, "Connection refused")


@pytest.mark.parametrize(("error", "says"), [
    (_chain(RuntimeError("ConnectError"), RuntimeError("httpcore"), _with_cause(OSError("All connection attempts failed"),
                                                                                 REFUSED)),
     "refused the connection"),
    (_chain(RuntimeError("x"), _with_cause(OSError("All attempts failed"),
                                            ExceptionGroup("several", [REFUSED, OSError(113, "No route")]))),
     "refused the connection"),
    (_chain(RuntimeError("x"), OSError("no errno anywhere")), "the connection to h:1 failed"),
    (RuntimeError("nothing below"), "the connection to h:1 failed"),
    (_chain(RuntimeError("x"), OSError(113, "No route to host")), "cannot reach h:1: No route to host"),
])
def test_the_reason_below_the_http_librarys_wrappers(error: BaseException, says: str) -> None:
    from safehold.audit.sinks import network_error, os_cause

    message = network_error("webhook sink 'w'", "h:1", os_cause(error)).message
    assert says in message and "Error" not in message
