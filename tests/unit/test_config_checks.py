"""What 'serve', 'init' and 'db status' decide before they act: the keys a server's file must give, how long
and how often 'serve' says it waits for its database, whether it stops the bundled database it found, which
ports 'init' refuses, and the shape of 'db status --json'."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from safehold.cli.context import db_status_report, init_port_problems, serve_stops_database
from safehold.config import (
    CONFIG_NAME,
    REQUIRED_DATABASE_KEYS,
    Settings,
    load_settings,
    missing_keys,
)
from safehold.errors import ConfigError
from safehold.pg import port_in_use
from safehold.web.server import wait_for

SERVER = '[server]\nid = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"\nname = "vault-1"\n'


# --- the keys that say where the database is ------------------------------------------------------------


@pytest.mark.parametrize(("raw", "missing"), [
    ({}, ["database.port"]),
    ({"database": {}}, ["database.port"]),
    ({"database": {"port": 5433}}, []),
    ({"database": {"mode": "bundled", "port": "5433"}}, []),  # an environment override is a string
    ({"database": {"mode": "remote"}}, ["database.host", "database.port"]),
    ({"database": {"mode": "remote", "host": "10.0.0.1"}}, ["database.port"]),
    ({"database": {"mode": "remote", "host": "10.0.0.1", "port": 5433}}, []),
    ({"database": {"mode": "external"}}, ["database.url"]),
    ({"database": {"mode": "external", "url": ""}}, ["database.url"]),
    ({"database": {"mode": "external", "url": "postgresql://h/db"}}, []),
    ({"database": {"mode": "embedded"}}, []),  # validation names an unknown mode
    ({"database": "not a table"}, ["database.port"]),
])
def test_missing_keys(raw: dict[str, object], missing: list[str]) -> None:
    assert missing_keys(raw) == missing


def test_every_mode_has_its_required_keys() -> None:
    from typing import get_args

    from safehold.config import DatabaseSection

    modes = set(get_args(DatabaseSection.model_fields["mode"].annotation))
    assert set(REQUIRED_DATABASE_KEYS) == modes


def _write(data_dir: Path, text: str) -> Path:
    (data_dir / CONFIG_NAME).write_text(text)
    return data_dir


def test_a_file_without_its_database_keys_is_refused_naming_them_and_the_file(tmp_path: Path) -> None:
    for text in (SERVER, SERVER + "[database]\npool_size = 10\n"):
        with pytest.raises(ConfigError) as exc:
            load_settings(_write(tmp_path, text), env={})
        path = str(tmp_path.resolve() / CONFIG_NAME)
        assert exc.value.message.startswith(f"{path} does not say where this server's database is: database.port "
                                            "is missing")
        assert exc.value.hint is not None and "SAFEHOLD_DATABASE__PORT" in exc.value.hint


def test_a_remote_database_needs_its_host_and_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(_write(tmp_path, SERVER + '[database]\nmode = "remote"\n'), env={})
    assert "database.host, database.port are missing" in exc.value.message
    assert exc.value.hint is not None and "host and port" in exc.value.hint


def test_an_external_database_needs_its_url_and_the_message_never_shows_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(_write(tmp_path, SERVER + '[database]\nmode = "external"\npool_size = 10\n'), env={})
    assert "database.url is missing" in exc.value.message


def test_the_environment_may_give_a_required_key(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, SERVER), env={"SAFEHOLD_DATABASE__PORT": "6543"})
    assert s.database.port == 6543


def test_a_file_written_by_safehold_is_complete(tmp_path: Path) -> None:
    from safehold.config import DatabaseSection, ServerSection, write_settings

    for database in (DatabaseSection(port=6543), DatabaseSection(mode="remote", host="10.0.0.1", port=5433),
                     DatabaseSection(mode="external", url="postgresql://h/db")):
        settings = Settings(server=ServerSection(id="3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b", name="a"),
                            database=database, data_dir=tmp_path.resolve())
        write_settings(settings)
        assert load_settings(tmp_path, env={}) == settings


def test_connect_wait_defaults_to_a_minute_and_may_be_zero(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path, SERVER + "[database]\nport = 5433\n"), env={}).database.connect_wait == 60
    s = load_settings(tmp_path, env={"SAFEHOLD_DATABASE__CONNECT_WAIT": "0"})
    assert s.database.connect_wait == 0


# --- waiting for the database -----------------------------------------------------------------------------


class FakeTime:
    """A clock that moves only when the code under test sleeps, or when a probe takes time."""

    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert 0 < seconds <= 1
        self.now += seconds


def test_wait_for_says_at_the_first_failure_then_every_few_seconds_and_gives_up_at_the_limit() -> None:
    t = FakeTime()
    said: list[tuple[float, str]] = []

    def probe() -> str | None:
        return f"refused at {t.now - 100:.0f}"

    last = wait_for(probe, 12, lambda elapsed, problem: said.append((elapsed, problem)), every=5,
                    clock=t.clock, sleep=t.sleep)

    assert last == "refused at 12"
    assert said == [(0.0, "refused at 0"), (5.0, "refused at 5"), (10.0, "refused at 10")]


def test_wait_for_returns_once_the_probe_answers() -> None:
    t = FakeTime()
    said: list[float] = []
    answers = iter(["no", "no", "no", None])
    assert wait_for(lambda: next(answers), 60, lambda elapsed, _: said.append(elapsed), clock=t.clock,
                    sleep=t.sleep) is None
    assert said == [0.0]
    assert t.now == 103.0


def test_wait_for_with_no_time_tries_once() -> None:
    t = FakeTime()
    calls: list[int] = []

    def probe() -> str:
        calls.append(1)
        return "down"

    assert wait_for(probe, 0, lambda *_: pytest.fail("nothing to say"), clock=t.clock, sleep=t.sleep) == "down"
    assert calls == [1]


def test_a_slow_probe_counts_against_the_limit() -> None:
    t = FakeTime()

    def probe() -> str:
        t.now += 7  # a connect timeout
        return "timeout"

    said: list[float] = []
    assert wait_for(probe, 20, lambda elapsed, _: said.append(elapsed), every=5, clock=t.clock,
                    sleep=t.sleep) == "timeout"
    assert said == [0.0, 15.0]  # at 7 (the first), then 15 (8 s later); 23 is past the limit


# --- who stops the bundled database -----------------------------------------------------------------------


@pytest.mark.parametrize(("started", "owner", "owner_alive", "stops"), [
    (True, None, False, True),      # this serve started it
    (True, 4242, False, True),      # started it, after an old mark
    (False, None, False, False),    # running without a mark: started on purpose ('db start')
    (False, 4242, False, True),     # the mark of a serve that is gone (killed): taken over
    (False, 4242, True, False),     # the mark of a serve that still runs: its own
])
def test_serve_stops_the_database_it_started_or_took_over(started: bool, owner: int | None, owner_alive: bool,
                                                           stops: bool) -> None:
    assert serve_stops_database(started, owner, owner_alive) is stops


# --- init's ports -----------------------------------------------------------------------------------------


def test_init_names_each_taken_port_and_the_option_that_chooses_another() -> None:
    taken = {("127.0.0.1", 8443), ("127.0.0.1", 5500)}

    def in_use(host: str, port: int) -> bool:
        return (host, port) in taken

    assert init_port_problems("127.0.0.1", 9443, 5501, in_use) == []
    assert init_port_problems("127.0.0.1", 9443, None, in_use) == []
    https = init_port_problems("127.0.0.1", 8443, None, in_use)
    assert len(https) == 1 and "HTTPS port 8443 on 127.0.0.1 is already in use" in https[0] and "--port" in https[0]
    both = init_port_problems("127.0.0.1", 8443, 5500, in_use)
    assert len(both) == 2 and "--db-port" in both[1] and "database port 5500" in both[1]
    same = init_port_problems("127.0.0.1", 9443, 9443, in_use)
    assert len(same) == 1 and "both 9443" in same[0]


def test_a_port_held_open_on_loopback_is_seen_as_taken() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        assert init_port_problems("127.0.0.1", port, None, port_in_use)
    assert not port_in_use("127.0.0.1", port)


# --- db status --json -------------------------------------------------------------------------------------

KEYS = ["mode", "bundled", "running", "pid", "where", "port", "data_dir", "problem"]


def _settings(tmp_path: Path, **database: object) -> Settings:
    from safehold.config import DatabaseSection, ServerSection

    return Settings(server=ServerSection(id="3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b", name="a"),
                    database=DatabaseSection(**database), data_dir=tmp_path)  # type: ignore[arg-type]


def test_db_status_json_has_stable_keys_for_every_mode(tmp_path: Path) -> None:
    bundled = db_status_report(_settings(tmp_path, port=6543), running=True, pid=77, where="127.0.0.1:6543")
    assert list(bundled) == KEYS
    assert bundled == {"mode": "bundled", "bundled": True, "running": True, "pid": 77, "where": "127.0.0.1:6543",
                       "port": 6543, "data_dir": str(tmp_path / "pg"), "problem": None}

    remote = db_status_report(_settings(tmp_path, mode="remote", host="10.0.0.1", port=5433), running=False,
                              pid=None, where="10.0.0.1:5433", problem="connection refused")
    assert list(remote) == KEYS
    assert remote == {"mode": "remote", "bundled": False, "running": False, "pid": None, "where": "10.0.0.1:5433",
                      "port": 5433, "data_dir": None, "problem": "connection refused"}

    external = db_status_report(_settings(tmp_path, mode="external", url="postgresql://u:pw@db1/x"), running=True,
                                pid=None, where="db1:5432/x", problem=None)
    assert list(external) == KEYS
    assert (external["port"], external["data_dir"], external["bundled"]) == (None, None, False)


# --- a passphrase file that is not text --------------------------------------------------------------------


def test_a_passphrase_file_that_is_not_text_is_refused_in_words(tmp_path: Path) -> None:
    import typer

    from safehold.cli.common import read_passphrase

    path = tmp_path / "passphrase"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(typer.BadParameter) as exc:
        read_passphrase(path)
    assert str(exc.value) == f"{path} is not text (UTF-8): it must hold the passphrase on one line"
