"""Loading safehold.toml: defaults, environment overrides, and messages that name the key."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path

import pytest

from safehold.config import CONFIG_NAME, Settings, load_settings, write_settings
from safehold.domain import ServerRole
from safehold.errors import ConfigError

SERVER_ID = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"
SERVER = f'[server]\nid = "{SERVER_ID}"\nname = "vault-1"\n'
#: the smallest complete file: a bundled database's port is required (its default would move it)
MINIMAL = SERVER + "[database]\nport = 5433\n"
DB_PASSWORD = "hunter2-Sup3rSecret"


def write(data_dir: Path, text: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / CONFIG_NAME).write_text(text)
    return data_dir


def load(data_dir: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(data_dir, text), env={} if env is None else env)


def names_key(message: str, key: str) -> bool:
    """A line of the message starts with the key (and, for an override, its variable)."""
    return re.search(rf"^  {re.escape(key)}( \(from SAFEHOLD_[A-Z_]+\))?: ", message, re.M) is not None


def config_error(data_dir: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as exc:
        load(data_dir, text, env)
    return str(exc.value)


# --- reading --------------------------------------------------------------------


def test_minimal_file_gets_documented_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL)
    assert s.server.id == SERVER_ID
    assert s.server.name == "vault-1"
    assert s.server.role == ServerRole.STANDALONE
    assert s.http.port == 8443
    assert s.http.listen == "127.0.0.1"
    assert s.database.mode == "bundled"
    assert s.database.url is None
    assert s.security.lockout_threshold == 5
    assert s.data_dir == tmp_path.resolve()


def test_values_from_every_section(tmp_path: Path) -> None:
    s = load(tmp_path, SERVER + """
role = "primary"
[http]
port = 9443
listen = "0.0.0.0"
workers = 4
[database]
mode = "external"
url = "postgresql://safehold@db.example/safehold"
pool_size = 20
[security]
lockout_minutes = 60
""")
    assert s.server.role == ServerRole.PRIMARY
    assert (s.http.port, s.http.listen, s.http.workers) == (9443, "0.0.0.0", 4)
    assert s.database.mode == "external"
    assert s.database.url == "postgresql://safehold@db.example/safehold"
    assert s.database.pool_size == 20
    assert s.security.lockout_minutes == 60


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL)
    with pytest.raises(ValueError):
        s.http.port = 1  # type: ignore[misc]


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path, env={})
    assert f"no {CONFIG_NAME} in {tmp_path.resolve()}" in str(exc.value)
    assert exc.value.hint == f"run 'safehold init --data-dir {tmp_path.resolve()}' first"


# --- environment overrides ---------------------------------------------------------


def test_env_overrides_file_values(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL + "[http]\nport = 9000\n", env={"SAFEHOLD_HTTP__PORT": "9443"})
    assert s.http.port == 9443


def test_env_fills_a_section_the_file_does_not_have(tmp_path: Path) -> None:
    s = load(tmp_path, SERVER, env={
        "SAFEHOLD_DATABASE__MODE": "external",
        "SAFEHOLD_DATABASE__URL": "postgresql://u@h/db",
        "SAFEHOLD_DATABASE__PASSWORD_FILE": "/run/secrets/db",
        "SAFEHOLD_SECURITY__KEY_FILE": "/etc/safehold/key",
        "SAFEHOLD_SERVER__ROLE": "secondary",
    })
    assert (s.database.mode, s.database.url) == ("external", "postgresql://u@h/db")
    assert s.database.password_file == Path("/run/secrets/db")
    assert s.key_file == Path("/etc/safehold/key")
    assert s.server.role == ServerRole.SECONDARY
    assert s.server.name == "vault-1"  # the rest of the section is kept


def test_env_names_are_case_insensitive_after_the_prefix(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL, env={"SAFEHOLD_http__Port": "9001"})
    assert s.http.port == 9001


def test_unrelated_env_vars_are_ignored(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL, env={"HTTP__PORT": "1", "SAFEHOLD_PORT": "2", "OTHER_HTTP__PORT": "3"})
    assert s.http.port == 8443


def test_process_environment_is_used_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, MINIMAL)
    monkeypatch.setenv("SAFEHOLD_HTTP__PORT", "9555")
    assert load_settings(tmp_path).http.port == 9555


def test_invalid_env_value_names_the_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, MINIMAL, env={"SAFEHOLD_HTTP__PORT": "not-a-port"})
    assert names_key(message, "http.port")
    assert "http.port (from SAFEHOLD_HTTP__PORT): " in message
    assert "not-a-port" not in message


def test_unknown_env_key_is_named(tmp_path: Path) -> None:
    message = config_error(tmp_path, MINIMAL, env={"SAFEHOLD_HTTP__PROT": "9443"})
    assert "  http.prot (from SAFEHOLD_HTTP__PROT): unknown key" in message


# --- invalid values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[http]\nport = 0\n", "http.port"),
        ("[http]\nport = 70000\n", "http.port"),
        ('[http]\nport = "https"\n', "http.port"),
        ("[http]\nworkers = 0\n", "http.workers"),
        ("[database]\nport = 5433\npool_size = 1000\n", "database.pool_size"),
        ('[database]\nmode = "embedded"\n', "database.mode"),
        ("[security]\nlockout_threshold = 0\n", "security.lockout_threshold"),
        ("[security]\nsession_max_hours = 100000\n", "security.session_max_hours"),
    ],
)
def test_invalid_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    message = config_error(tmp_path, (SERVER if text.startswith("[database]") else MINIMAL) + text)
    assert message.startswith(f"invalid configuration in {tmp_path.resolve() / CONFIG_NAME}:")
    assert names_key(message, key)
    assert "(from " not in message  # nothing came from the environment


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nname = "a"\nid = "not-a-uuid"\n', "server.id"),
        ('[server]\nname = ""\n', "server.name"),
        ('[server]\nname = "a"\nrole = "leader"\n', "server.role"),
        ('[http]\nport = 1\n', "server"),
    ],
    ids=["bad-id", "empty-name", "bad-role", "no-server-section"],
)
def test_invalid_server_section_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert names_key(config_error(tmp_path, text), key)


def test_every_invalid_key_is_listed(tmp_path: Path) -> None:
    message = config_error(tmp_path, MINIMAL + "[http]\nport = 0\nworkers = 0\n[security]\nlockout_minutes = 0\n")
    assert "http.port" in message and "http.workers" in message and "security.lockout_minutes" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[http]\nprot = 9443\n", "http.prot"),
        ("[htp]\nport = 9443\n", "htp"),
        (f'[server]\nid = "{SERVER_ID}"\nname = "a"\ncolour = "red"\n', "server.colour"),
        ("[security]\nkey = \"x\"\n", "security.key"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, text: str, key: str) -> None:
    base = "" if text.startswith("[server]") else MINIMAL
    assert f"  {key}: unknown key" in config_error(tmp_path, base + text)


@pytest.mark.parametrize(
    "text",
    [
        "[server\nname = 'a'\n",
        SERVER + f"[database]\nurl = postgresql://u:{DB_PASSWORD}@h/db\n",
        MINIMAL + "[http]\nport = 1\nport = 2\n",
    ],
    ids=["unclosed-table", "unquoted-value", "duplicate-key"],
)
def test_malformed_toml_is_reported_with_its_location(tmp_path: Path, text: str) -> None:
    message = config_error(tmp_path, text)
    assert message.startswith(f"{tmp_path.resolve() / CONFIG_NAME} is not valid TOML: ")
    assert "line" in message
    assert DB_PASSWORD not in message


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://safehold:{DB_PASSWORD}@db.example/safehold",
        f"safehold:{DB_PASSWORD}@db.example/safehold",
        f"postgresql+psycopg://safehold:{DB_PASSWORD}@db.example/safehold",
        f"host=db.example password={DB_PASSWORD}",
    ],
)
def test_database_url_error_never_shows_the_url(tmp_path: Path, url: str) -> None:
    for env, text in [({}, SERVER + f'[database]\nurl = "{url}"\n'),
                      ({"SAFEHOLD_DATABASE__URL": url}, MINIMAL)]:
        message = config_error(tmp_path, text, env)
        assert names_key(message, "database.url")
        assert ("(from SAFEHOLD_DATABASE__URL)" in message) == bool(env)
        assert "postgresql://" in message  # says what is expected
        assert DB_PASSWORD not in message
        assert "db.example" not in message


@pytest.mark.parametrize("url", ["postgresql://u:p@h:5432/db", "postgres://h/db"])
def test_postgres_urls_are_accepted(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, SERVER + f'[database]\nmode = "external"\nurl = "{url}"\n').database.url == url


# --- paths ---------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(data_dir, SERVER + '[security]\nkey_file = "keys/safehold.key"\n[database]\nport = 5433\ndata_dir = "pg17"\n')
    monkeypatch.chdir(elsewhere)

    s = load_settings(Path("../data"), env={})

    assert s.data_dir == data_dir.resolve()
    assert s.key_file == data_dir.resolve() / "keys" / "safehold.key"
    assert s.pg_data_dir == data_dir.resolve() / "pg17"
    assert s.path(s.http.tls_cert) == data_dir.resolve() / "tls" / "server.crt"
    assert s.path(s.database.password_file) == data_dir.resolve() / "secrets" / "db_password"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL + '[security]\nkey_file = "/etc/safehold/safehold.key"\n')
    assert s.key_file == Path("/etc/safehold/safehold.key")


def test_data_dir_cannot_be_set_from_the_file(tmp_path: Path) -> None:
    s = load(tmp_path, 'data_dir = "/somewhere/else"\n' + MINIMAL)
    assert s.data_dir == tmp_path.resolve()


def test_read_secret_strips_and_names_a_missing_file(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "db_password").write_text(DB_PASSWORD + "\n")
    assert s.read_secret(s.database.password_file) == DB_PASSWORD
    with pytest.raises(ConfigError, match="secret file .*db_superuser_password is missing"):
        s.read_secret(s.database.superuser_password_file)


# --- writing ---------------------------------------------------------------------------------


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    s = load(tmp_path, SERVER + '[http]\nport = 9443\n[database]\nmode = "external"\nurl = "postgresql://h/db"\n')
    (tmp_path / CONFIG_NAME).unlink()

    path = write_settings(s)

    assert path == tmp_path.resolve() / CONFIG_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "data_dir" not in tomllib.loads(path.read_text())  # the top-level one is implied
    again = load_settings(tmp_path, env={})
    assert again == s


def test_workers_default_to_one_per_cpu() -> None:
    from safehold.config import HttpSection

    assert HttpSection().workers is None  # not written to safehold.toml: follows the machine
    assert HttpSection().processes == max(1, min(64, os.cpu_count() or 1))
    assert HttpSection(workers=3).processes == 3
