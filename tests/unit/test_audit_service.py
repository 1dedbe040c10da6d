"""The audit service's pure parts: the export formats (pinned bytes: the API, the page and the CLI all
write them), the server filter, the text search and the filter handed to the store."""

from __future__ import annotations

import datetime as dt
import inspect
from types import SimpleNamespace
from typing import Any

import pytest

from safehold.domain import AuditAction, AuditResult, ServerRole
from safehold.services import audit
from safehold.storage import audit as store

AT = dt.datetime(2025, 1, 31, 14, 0, 5, 123456, tzinfo=dt.UTC)
SERVER = "6f1c7a52-1d0e-4a3b-9a55-0c2b9e8d7f10"


def record(**changes: Any) -> Any:
    """A record as the store returns it (a row with ``_mapping``)."""
    m: dict[str, Any] = {
        "id": "rec-1", "at": AT, "server_id": SERVER, "server_name": "vault-1", "server_role": "primary",
        "seq": 7, "actor": "alice", "source_ip": "10.0.0.5", "action": "password.retrieved",
        "target_type": "account", "target_id": "acc-9", "target_name": "db01/root", "result": "success",
        "detail": {"reason": "ticket, \"42\"", "count": 2},
    }
    m.update(changes)
    return SimpleNamespace(_mapping=m)


def test_csv_is_pinned() -> None:
    rows = [record(), record(id="rec-2", source_ip=None, detail={}, target_name="web/ü")]
    assert audit.records_csv(rows) == (
        "id,at,server_id,server_name,server_role,seq,actor,source_ip,action,target_type,target_id,target_name,"
        "result,detail\r\n"
        f"rec-1,2025-01-31 14:00:05.123456+00:00,{SERVER},vault-1,primary,7,alice,10.0.0.5,password.retrieved,"
        'account,acc-9,db01/root,success,"{""count"": 2, ""reason"": ""ticket, \\""42\\""""}"\r\n'
        f"rec-2,2025-01-31 14:00:05.123456+00:00,{SERVER},vault-1,primary,7,alice,,password.retrieved,"
        "account,acc-9,web/ü,success,{}\r\n"
    )


def test_csv_of_nothing_is_the_header() -> None:
    assert audit.records_csv([]) == ",".join(audit.CSV_COLUMNS) + "\r\n"


def test_json_lines_are_pinned() -> None:
    line = audit.records_jsonl([record(detail={"b": 1, "a": "é"})])
    assert line == (
        '{"action": "password.retrieved", "actor": "alice", "at": "2025-01-31 14:00:05.123456+00:00", '
        '"detail": {"a": "\\u00e9", "b": 1}, "id": "rec-1", "result": "success", "seq": 7, '
        f'"server_id": "{SERVER}", "server_name": "vault-1", "server_role": "primary", '
        '"source_ip": "10.0.0.5", "target_id": "acc-9", "target_name": "db01/root", "target_type": "account"}\n'
    )
    assert audit.records_jsonl([]) == ""


@pytest.mark.parametrize(("given", "expected"), [
    (SERVER, SERVER),
    (SERVER.upper(), SERVER),
    ("{" + SERVER + "}", SERVER),
    (SERVER.replace("-", ""), SERVER),
    ("vault-1", audit.NO_SERVER),
    ("", audit.NO_SERVER),
    ("' or 1=1 --", audit.NO_SERVER),
])
def test_server_filter(given: str, expected: str) -> None:
    assert audit.server_filter(given) == expected


@pytest.mark.parametrize(("text", "found"), [
    ("alice", True),
    ("10.0.0.5", True),
    ("vault-1", True),          # the server's name
    ("db01/root", True),
    ("ticket", True),           # in the detail
    ('"count": 2', True),       # the detail as JSON, keys sorted
    ("bob", False),
    ("primary", False),         # the server's role is not searched
])
def test_text_search(text: str, found: bool) -> None:
    assert audit.matches(record(), text) is found


def test_text_search_finds_unicode_in_the_detail_and_ignores_missing_columns() -> None:
    assert audit.matches(record(detail={"note": "Zürich"}, source_ip=None), "zürich")


def test_the_filter_is_what_the_store_takes() -> None:
    f = audit.RecordFilter(action=AuditAction.PASSWORD_RETRIEVED, actor="alice", server=SERVER,
                           role=ServerRole.READONLY, result=AuditResult.FAILURE, since=AT,
                           until=AT + dt.timedelta(days=1))
    values = f.as_store()
    assert values == {"action": AuditAction.PASSWORD_RETRIEVED, "actor": "alice", "server": SERVER,
                      "role": ServerRole.READONLY, "result": AuditResult.FAILURE, "since": AT,
                      "until": AT + dt.timedelta(days=1)}
    accepted = set(inspect.signature(store._filters).parameters)
    assert set(values) <= accepted
    store._filters(**values)  # builds a condition from every field
    assert audit.RecordFilter().as_store() == dict.fromkeys(values)
