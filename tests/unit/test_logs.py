"""Log lines (safehold.logs): the level from SAFEHOLD_LOG_LEVEL or [log], one JSON object a line with the
server, its role and the request id, the request id a client may choose, the [log] section."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold import logs
from safehold.config import load_settings
from safehold.errors import ConfigError

SERVER = '[server]\nid = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"\nname = "vault-1"\n[database]\nport = 5433\n'


@pytest.fixture()
def out() -> Iterator[io.StringIO]:
    """Our handler on the root logger, writing to a buffer; the root logger as it was afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET}
    buf = io.StringIO()
    yield buf
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(False)
    logs.identify(lambda: (None, None))


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


@pytest.mark.parametrize(("env", "configured", "level", "complains"), [
    ({}, None, "WARNING", False),
    ({}, "info", "INFO", False),
    ({"SAFEHOLD_LOG_LEVEL": "debug"}, "ERROR", "DEBUG", False),  # the environment wins, as it always did
    ({"SAFEHOLD_LOG_LEVEL": " Info "}, None, "INFO", False),
    ({"SAFEHOLD_LOG_LEVEL": ""}, "ERROR", "ERROR", False),
    ({"SAFEHOLD_LOG_LEVEL": "loud"}, "ERROR", "ERROR", True),
    ({"SAFEHOLD_LOG_LEVEL": "loud"}, None, "WARNING", True),
])
def test_the_level_comes_from_the_environment_then_the_settings(
        env: dict[str, str], configured: str | None, level: str, complains: bool) -> None:
    got, complaint = logs.resolve_level(env, configured)
    assert got == level
    assert (complaint is not None) == complains
    if complaint:
        assert "SAFEHOLD_LOG_LEVEL" in complaint and "loud" not in complaint


@pytest.mark.parametrize("header", [
    "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "req_1.2:3",
    "x" * logs.MAX_REQUEST_ID,
])
def test_a_sane_request_id_from_the_client_is_kept(header: str) -> None:
    assert logs.request_id_for(header, new=lambda: "new") == header


@pytest.mark.parametrize("header", [
    None, "", "x" * (logs.MAX_REQUEST_ID + 1), "a b", "a\nb", "id\"}", "<script>", "é", "-leading-dash", "a/b",
    "a;b", "a%0a",
])
def test_any_other_request_id_is_replaced_by_a_new_one(header: str | None) -> None:
    assert logs.request_id_for(header, new=lambda: "new") == "new"


def test_new_request_ids_differ_and_are_sane() -> None:
    ids = {logs.request_id_for(None) for _ in range(50)}
    assert len(ids) == 50 and all(logs.sane_request_id(i) for i in ids)


def test_json_lines_carry_the_server_its_role_and_the_request(out: io.StringIO) -> None:
    logs.setup("json", "INFO", stream=out)
    role = ["readonly"]
    logs.identify(lambda: ("vault-1", role[0]))
    log = logging.getLogger("safehold.test")
    token = logs.request_id.set("req-1")
    try:
        log.info("a retrieval of %s", "db01")
    finally:
        logs.request_id.reset(token)
    role[0] = "primary"  # promoted: the next line says so
    log.warning("after the promotion")
    first, second = (json.loads(line) for line in lines(out))
    assert first["message"] == "a retrieval of db01" and first["level"] == "INFO"
    assert (first["logger"], first["server"], first["role"], first["request_id"]) == (
        "safehold.test", "vault-1", "readonly", "req-1")
    assert set(first) >= {"time", "level", "logger", "message", "server", "role", "request_id"}
    assert first["time"].endswith("+00:00")
    assert second["role"] == "primary" and second["request_id"] is None
    assert "exception" not in first


def test_an_exception_is_a_field_and_a_record_is_one_line(out: io.StringIO) -> None:
    logs.setup("json", "INFO", stream=out)
    try:
        raise RuntimeError("deep\ninside")
    except RuntimeError:
        logging.getLogger("safehold.test").exception("failed on\ntwo lines")
    logging.getLogger("safehold.test").warning("with a stack", stack_info=True)
    got = lines(out)
    assert len(got) == 2
    record, stack = (json.loads(line) for line in got)
    assert record["message"] == "failed on\ntwo lines"
    assert record["exception"].startswith("Traceback") and "RuntimeError: deep" in record["exception"]
    assert "Stack (most recent call last)" in stack["exception"]


def test_a_record_whose_identity_fails_is_still_written(out: io.StringIO) -> None:
    logs.setup("json", "INFO", stream=out)

    def broken() -> tuple[str | None, str | None]:
        raise RuntimeError("the runtime is closed")

    logs.identify(broken)
    logging.getLogger("safehold.test").warning("still here")
    record = json.loads(lines(out)[0])
    assert record["message"] == "still here" and record["server"] is None


def test_text_lines_name_the_request_only_while_one_is_answered(out: io.StringIO) -> None:
    logs.setup("text", "INFO", stream=out)
    log = logging.getLogger("safehold.test")
    log.info("outside")
    token = logs.request_id.set("req-2")
    log.info("inside")
    logs.request_id.reset(token)
    outside, inside = lines(out)
    assert outside.endswith("INFO safehold.test: outside")
    assert inside.endswith("INFO safehold.test: inside [request req-2]")


def test_setup_again_replaces_its_own_handler_and_keeps_others(out: io.StringIO) -> None:
    other = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(other)
    try:
        logs.setup("text", "INFO", stream=io.StringIO())
        logs.setup("json", "DEBUG", stream=out)
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_safehold_handler", False)]
        assert len(ours) == 1 and other in logging.getLogger().handlers
        assert logging.getLogger().level == logging.DEBUG
    finally:
        logging.getLogger().removeHandler(other)


def test_libraries_that_log_data_stay_at_warning_even_at_debug(out: io.StringIO) -> None:
    logs.setup("json", "DEBUG", stream=out)
    logging.getLogger("sqlalchemy.engine.Engine").info("INSERT INTO accounts VALUES (%s)")
    logging.getLogger("httpx").info("HTTP Request: POST https://hooks.example/T000/SECRET")
    logging.getLogger("safehold.test").debug("ours")
    assert [json.loads(line)["message"] for line in lines(out)] == ["ours"]
    logging.getLogger("sqlalchemy.pool").warning("a pool warning still shows")
    assert "a pool warning still shows" in out.getvalue()


def test_warnings_become_log_records(out: io.StringIO) -> None:
    logs.setup("json", "INFO", stream=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    assert json.loads(lines(out)[0])["logger"] == "py.warnings"


def test_setup_from_the_environment_before_any_settings_file(out: io.StringIO, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setattr("sys.stderr", out)
    logs.setup_from({"SAFEHOLD_LOG__FORMAT": "JSON", "SAFEHOLD_LOG__LEVEL": "info"})
    logging.getLogger("safehold.test").info("from the environment")
    assert json.loads(lines(out)[0])["level"] == "INFO"


def test_a_level_that_is_no_level_is_said_once_set_up(out: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", out)
    logs.setup_from({"SAFEHOLD_LOG_LEVEL": "chatty"}, "json", "INFO")
    record = json.loads(lines(out)[0])
    assert record["level"] == "WARNING" and "SAFEHOLD_LOG_LEVEL is not a log level" in record["message"]
    assert logging.getLogger().level == logging.INFO


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        logs.formatter("xml")


# --- the [log] section ------------------------------------------------------------------------------------

def test_the_log_section_defaults_to_text_at_warning(tmp_path: Path) -> None:
    (tmp_path / "safehold.toml").write_text(SERVER)
    settings = load_settings(tmp_path, env={})
    assert (settings.log.format, settings.log.level) == ("text", "WARNING")


def test_the_log_section_from_the_file_and_the_environment(tmp_path: Path) -> None:
    (tmp_path / "safehold.toml").write_text(SERVER + '[log]\nformat = "json"\nlevel = "info"\n')
    assert (load_settings(tmp_path, env={}).log.level) == "INFO"
    settings = load_settings(tmp_path, env={"SAFEHOLD_LOG__FORMAT": "text", "SAFEHOLD_LOG__LEVEL": "debug"})
    assert (settings.log.format, settings.log.level) == ("text", "DEBUG")


@pytest.mark.parametrize(("text", "key"), [('format = "xml"', "log.format"), ('level = "loud"', "log.level"),
                                           ("colour = true", "log.colour")])
def test_a_bad_log_value_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "safehold.toml").write_text(SERVER + f"[log]\n{text}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path, env={})
    assert f"  {key}: " in exc.value.message
