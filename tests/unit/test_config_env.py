"""Environment overrides through pydantic-settings: any depth, lists, unknown variables, and error lines that
name the variable but never its value."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from safehold.config import (
    CONFIG_NAME,
    HttpSection,
    ServerSection,
    Settings,
    load_settings,
    override_behind,
    override_names,
    write_settings,
)
from safehold.errors import ConfigError

SERVER_ID = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"
MINIMAL = f'[server]\nid = "{SERVER_ID}"\nname = "vault-1"\n[database]\nport = 5433\n'
EXTERNAL = f'[server]\nid = "{SERVER_ID}"\nname = "vault-1"\n[database]\nmode = "external"\nurl = "postgresql://h/db"\n'
SECRET = "hunter2-Sup3rSecret"


def load(data_dir: Path, text: str, env: dict[str, str]) -> Settings:
    (data_dir / CONFIG_NAME).write_text(text)
    return load_settings(data_dir, env=env)


def error_lines(data_dir: Path, text: str, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(data_dir, text, env)
    message = str(exc.value)
    assert message.startswith(f"invalid configuration in {data_dir.resolve() / CONFIG_NAME}:")
    return message.splitlines()[1:]


# --- nested sections ----------------------------------------------------------------------------------------


def test_a_nested_section_is_overridden_key_by_key(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL + "[ha.failover]\nping_interval = 20\nping_iterations = 5\n",
             {"SAFEHOLD_HA__FAILOVER__ENABLED": "true", "SAFEHOLD_HA__FAILOVER__PING_ITERATIONS": "6"})
    assert s.ha.failover.enabled is True  # the environment
    assert s.ha.failover.ping_iterations == 6  # the environment over the file
    assert s.ha.failover.ping_interval == 20  # the file
    assert s.ha.failover.may_promote is True  # the default
    assert s.ha.check_interval == 2.0  # the rest of [ha]: defaults, untouched


def test_nested_names_are_case_insensitive_after_the_prefix(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL, {"SAFEHOLD_ha__Failover__ENABLED": "1"}).ha.failover.enabled is True


def test_an_invalid_nested_value_names_its_key_and_variable(tmp_path: Path) -> None:
    lines = error_lines(tmp_path, MINIMAL, {"SAFEHOLD_HA__FAILOVER__PING_INTERVAL": "0"})
    assert lines == ["  ha.failover.ping_interval (from SAFEHOLD_HA__FAILOVER__PING_INTERVAL): "
                     "Input should be greater than or equal to 1"]


def test_the_same_value_from_the_file_names_no_variable(tmp_path: Path) -> None:
    lines = error_lines(tmp_path, MINIMAL + "[ha.failover]\nping_interval = 0\n",
                        {"SAFEHOLD_HA__FAILOVER__ENABLED": "true"})
    assert lines == ["  ha.failover.ping_interval: Input should be greater than or equal to 1"]


def test_a_check_across_a_section_is_put_on_no_variable(tmp_path: Path) -> None:
    # the lease (10 s) is not shorter than the failover threshold (1 s x 2) once failover is on
    lines = error_lines(tmp_path, MINIMAL + "[ha.failover]\nping_interval = 1\nping_iterations = 2\n",
                        {"SAFEHOLD_HA__FAILOVER__ENABLED": "true"})
    assert len(lines) == 1 and lines[0].startswith("  ha: ") and "write_lease_seconds" in lines[0]
    assert "(from " not in lines[0]


# --- unknown and unrelated variables ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "key"),
    [
        ("SAFEHOLD_HTTP__PROT", "http.prot"),
        ("SAFEHOLD_HA__FAILOVER__PING_INTERVALL", "ha.failover.ping_intervall"),
        ("SAFEHOLD_HTPP__PORT", "htpp"),  # no such section
    ],
)
def test_a_typo_is_refused_naming_the_variable(tmp_path: Path, variable: str, key: str) -> None:
    assert error_lines(tmp_path, MINIMAL, {variable: "9"}) == [f"  {key} (from {variable}): unknown key"]


def test_variables_without_a_double_underscore_are_not_settings(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL, {
        "SAFEHOLD_DATA_DIR": "/elsewhere",  # the CLI's --data-dir
        "SAFEHOLD_LOG_LEVEL": "verbose",  # safehold.logs' own (a bad one only warns there)
        "SAFEHOLD_SERVER": "vault-2", "SAFEHOLD_SERVER_ID": "x", "SAFEHOLD_EVENT": "Failover",  # an event script's
        "SAFEHOLD_HTTP": '{"port": 1}',  # a whole section is not taken from one variable
    })
    assert s.data_dir == tmp_path.resolve()
    assert (s.server.name, s.http.port, s.log.level) == ("vault-1", 8443, "WARNING")


def test_the_log_section_is_overridden_like_any_other(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL, {"SAFEHOLD_LOG__LEVEL": "debug", "SAFEHOLD_LOG__FORMAT": "json"})
    assert (s.log.level, s.log.format) == ("DEBUG", "json")


def test_override_names_are_those_with_a_key_path() -> None:
    env = {"SAFEHOLD_HTTP__PORT": "1", "SAFEHOLD_LOG_LEVEL": "x", "SAFEHOLD_SERVER": "y", "OTHER_HTTP__PORT": "2",
           "safehold_http__port": "3", "SAFEHOLD_HA__FAILOVER__ENABLED": "1"}
    assert override_names(env) == ["SAFEHOLD_HTTP__PORT", "SAFEHOLD_HA__FAILOVER__ENABLED"]


# --- lists --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["https://p1:8008, https://p2:8008", '["https://p1:8008", "https://p2:8008"]'])
def test_patroni_urls_are_comma_separated_or_json(tmp_path: Path, value: str) -> None:
    s = load(tmp_path, EXTERNAL, {"SAFEHOLD_HA__PATRONI_URLS": value})
    assert s.ha.patroni_urls == ["https://p1:8008", "https://p2:8008"]


@pytest.mark.parametrize("value", ["192.0.2.1,gw.example:53", '["192.0.2.1", "gw.example:53"]'])
def test_witness_targets_replace_the_files_list(tmp_path: Path, value: str) -> None:
    s = load(tmp_path, MINIMAL + '[ha.failover]\nwitness_targets = ["198.51.100.7"]\n',
             {"SAFEHOLD_HA__FAILOVER__WITNESS_TARGETS": value})
    assert s.ha.failover.witness_targets == ["192.0.2.1", "gw.example:53"]


def test_a_list_that_is_not_json_names_the_variable(tmp_path: Path) -> None:
    lines = error_lines(tmp_path, EXTERNAL, {"SAFEHOLD_HA__PATRONI_URLS": '["https://p1:8008",'})
    assert lines == ["  ha.patroni_urls (from SAFEHOLD_HA__PATRONI_URLS): "
                     "Value error, must be a JSON list, or items separated by commas"]


def test_audit_sinks_are_a_json_list_of_tables(tmp_path: Path) -> None:
    sinks = [{"name": "siem", "kind": "syslog", "host": "siem.example", "fail_closed": True},
             {"name": "trail", "kind": "file", "path": "audit/trail.jsonl"}]
    s = load(tmp_path, MINIMAL, {"SAFEHOLD_AUDIT__SINKS": json.dumps(sinks)})
    assert [(k.name, k.kind) for k in s.audit.sinks] == [("siem", "syslog"), ("trail", "file")]
    assert s.audit.sinks[0].fail_closed and s.audit.sinks[0].syslog == ("siem.example", 6514, "authpriv",
                                                                         "safehold")


def test_an_error_inside_a_json_list_names_the_item_and_the_variable(tmp_path: Path) -> None:
    sinks = [{"name": "hook", "kind": "webhook", "url": f"http://siem.example/ingest?token={SECRET}"}]
    lines = error_lines(tmp_path, MINIMAL, {"SAFEHOLD_AUDIT__SINKS": json.dumps(sinks)})
    assert lines == ["  audit.sinks.0.url (from SAFEHOLD_AUDIT__SINKS): "
                     "Value error, must be an https:// URL (the records travel over TLS)"]


# --- secrets never shown ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("SAFEHOLD_DATABASE__URL", f"mysql://safehold:{SECRET}@db.example/safehold", "database.url"),
        ("SAFEHOLD_DATABASE__PRIMARY_URL", f"host=db.example password={SECRET}", "database.primary_url"),
        ("SAFEHOLD_DATABASE__PORT", SECRET, "database.port"),
        ("SAFEHOLD_ALERTS__WEBHOOK__URL", f"ftp://u:{SECRET}@hooks.example/x", "alerts.webhook.url"),
        ("SAFEHOLD_AUDIT__SINKS", f'[{{"name": "x", "url": "{SECRET}"', "audit.sinks"),  # not JSON
        ("SAFEHOLD_HA__FAILOVER", f"{{{SECRET}", "ha.failover"),  # a section, not JSON
    ],
)
def test_an_invalid_value_is_never_echoed(tmp_path: Path, variable: str, value: str, key: str) -> None:
    lines = error_lines(tmp_path, MINIMAL, {variable: value})
    assert any(line.startswith(f"  {key} (from {variable}): ") for line in lines), lines
    assert SECRET not in "\n".join(lines)
    assert "db.example" not in "\n".join(lines) and "hooks.example" not in "\n".join(lines)


# --- what is built by hand, and what is written ---------------------------------------------------------------


def test_settings_built_by_hand_read_nothing_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'safehold init' and the joins build Settings themselves and write them: an override must not slip in."""
    monkeypatch.setenv("SAFEHOLD_HTTP__PORT", "9999")
    monkeypatch.setenv("SAFEHOLD_LOG__LEVEL", "DEBUG")
    built = Settings(server=ServerSection(id=SERVER_ID, name="vault-1"), data_dir=tmp_path)
    assert (built.http, built.log.level) == (HttpSection(), "WARNING")


def test_a_file_read_without_the_environment_is_written_without_its_overrides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands that rewrite the file read it with env={} (write_settings writes what it is given)."""
    (tmp_path / CONFIG_NAME).write_text(MINIMAL + "[http]\nport = 9443\n")
    monkeypatch.setenv("SAFEHOLD_HTTP__PORT", "9999")
    monkeypatch.setenv("SAFEHOLD_HA__FAILOVER__ENABLED", "true")
    assert load_settings(tmp_path).http.port == 9999  # in effect...

    write_settings(load_settings(tmp_path, env={}))

    written = tomllib.loads((tmp_path / CONFIG_NAME).read_text())
    assert written["http"]["port"] == 9443 and written["ha"]["failover"]["enabled"] is False  # ...never written
    assert type(load_settings(tmp_path, env={})) is Settings


# --- which variable a key came from (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "kind", "variables", "expected"),
    [
        (("http", "port"), "int_parsing", ["SAFEHOLD_HTTP__PORT"], ["SAFEHOLD_HTTP__PORT"]),
        (("http", "port"), "int_parsing", ["SAFEHOLD_HTTP__LISTEN"], []),
        (("http", "port"), "int_parsing", ["SAFEHOLD_http__Port"], ["SAFEHOLD_http__Port"]),  # as it was spelled
        (("ha", "failover", "ping_interval"), "greater_than_equal", ["SAFEHOLD_HA__FAILOVER__PING_INTERVAL"],
         ["SAFEHOLD_HA__FAILOVER__PING_INTERVAL"]),
        (("ha", "failover", "ping_interval"), "greater_than_equal", ["SAFEHOLD_HA__FAILOVER"],
         ["SAFEHOLD_HA__FAILOVER"]),  # a section given as JSON
        (("ha", "failover", "ping_interval"), "greater_than_equal",
         ["SAFEHOLD_HA__FAILOVER", "SAFEHOLD_HA__FAILOVER__PING_INTERVAL"],
         ["SAFEHOLD_HA__FAILOVER__PING_INTERVAL"]),  # the nearest
        (("audit", "sinks", 0, "url"), "value_error", ["SAFEHOLD_AUDIT__SINKS"], ["SAFEHOLD_AUDIT__SINKS"]),
        (("htpp",), "extra_forbidden", ["SAFEHOLD_HTPP__PORT", "SAFEHOLD_HTPP__LISTEN", "SAFEHOLD_HTTP__PORT"],
         ["SAFEHOLD_HTPP__LISTEN", "SAFEHOLD_HTPP__PORT"]),
        (("audit", "sinks"), "list_type", ["SAFEHOLD_AUDIT__SINKS__0__URL"], ["SAFEHOLD_AUDIT__SINKS__0__URL"]),
        (("ha",), "value_error", ["SAFEHOLD_HA__FAILOVER__ENABLED"], []),  # a check across the section
        ((), "value_error", ["SAFEHOLD_HA__PATRONI_URLS"], []),  # a check across sections
    ],
)
def test_override_behind(loc: tuple[int | str, ...], kind: str, variables: list[str], expected: list[str]) -> None:
    assert override_behind(loc, kind, variables) == expected
