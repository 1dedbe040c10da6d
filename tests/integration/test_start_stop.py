"""Starting and stopping a server as a new operator does it: 'serve' says it serves only once it can (the key
matches the database, the database answers, after waiting for one that comes up late), a killed 'serve' leaves
its bundled database to the next one, which stops it, and 'init' refuses ports that are taken.  Every server
is a real process: 'safehold serve', its workers and its bundled PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    SAFEHOLD,
    Server,
    free_port,
    make_secondary,
    run_cli,
    running_server,
    wait_until,
)

SERVING = "serving on"
#: a class name such as UnicodeDecodeError or OperationalError in what a user reads
CLASS_NAME = re.compile(r"\b[A-Za-z_.]*(Error|Exception)\b")


def serve_once(server: Server, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """'safehold serve' expected to stop by itself (it cannot serve)."""
    return subprocess.run([*SAFEHOLD, "serve", "--data-dir", str(server.data_dir)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200", **env})


def postmaster_pid(server: Server) -> int | None:
    from safehold.config import load_settings
    from safehold.runtime import database

    return database.manager(load_settings(server.data_dir)).status().pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def db_status(server: Server) -> tuple[int, dict[str, object]]:
    proc = server.cli("db", "status", "--json", check=False)
    return proc.returncode, json.loads(proc.stdout)


def port_free(port: int) -> bool:
    from safehold.pg import port_in_use

    return not port_in_use("127.0.0.1", port)


@pytest.fixture(scope="module")
def initialised(server_root: Path) -> Iterator[Server]:
    """A server that was initialised and is not serving (the tests here make 'serve' fail on it)."""
    server = Server(Path(tempfile.mkdtemp(dir=server_root)) / "data")
    try:
        server.init()
        yield server
    finally:
        server.cleanup()


# --- 'serving on' only once it can serve -----------------------------------------------------------------


def test_serve_with_another_clusters_key_fails_before_saying_it_serves(initialised: Server) -> None:
    from safehold.crypto.keyfile import create_key_file

    other = create_key_file(initialised.data_dir.parent / "other-cluster.key")

    proc = serve_once(initialised, {"SAFEHOLD_SECURITY__KEY_FILE": str(initialised.data_dir.parent / "other-cluster.key")})

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert SERVING not in proc.stdout + proc.stderr
    error = proc.stderr.split("error: ", 1)[1]
    assert error.startswith("the key file ") and other.key_id in error.splitlines()[0]  # which key it holds
    assert "hint: " in error
    assert "Traceback" not in proc.stderr and not CLASS_NAME.search(proc.stderr)
    assert "stopped the bundled PostgreSQL" in proc.stdout  # it started it for nothing: stopped again
    assert postmaster_pid(initialised) is None


def test_serve_waits_for_an_unreachable_database_then_fails_clearly(initialised: Server) -> None:
    closed = free_port()  # nothing listens there
    url = f"postgresql://safehold:not-the-password@127.0.0.1:{closed}/safehold?sslmode=disable"

    proc = serve_once(initialised, {"SAFEHOLD_DATABASE__MODE": "external", "SAFEHOLD_DATABASE__URL": url,
                                    "SAFEHOLD_DATABASE__CONNECT_WAIT": "6"})

    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said
    assert SERVING not in said
    assert f"the database at 127.0.0.1:{closed}" in proc.stdout and "does not answer yet" in proc.stdout
    assert "waiting up to 6 s" in proc.stdout
    assert "still waiting for the database" in proc.stdout  # a progress line every few seconds
    assert f"error: the database at 127.0.0.1:{closed}" in proc.stderr and "did not answer within 6 s" in proc.stderr
    assert "hint: check that the database (or the HA engine that runs it) is up" in proc.stderr
    assert "not-the-password" not in said
    assert "Traceback" not in said and not CLASS_NAME.search(said)


@pytest.mark.parametrize(("content", "words"), [
    (b"\x00\xff\xfe garbage \x89PNG", "holds binary data"),
    (b"", "is empty"),
    (b"safehold-key-v1:AAAAAAAAAAAAAAAA", "wrong key length"),
    (b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n", "does not start with"),
], ids=["binary", "empty", "truncated", "wrong-format"])
def test_serve_with_a_malformed_key_file_names_it_and_what_is_wrong(initialised: Server, content: bytes,
                                                                     words: str) -> None:
    key = initialised.data_dir.parent / "malformed.key"
    key.write_bytes(content)
    key.chmod(0o600)

    proc = serve_once(initialised, {"SAFEHOLD_SECURITY__KEY_FILE": str(key)})

    assert proc.returncode == 1
    assert f"error: key file {key} " in proc.stderr and words in proc.stderr
    assert "Traceback" not in proc.stderr and not CLASS_NAME.search(proc.stderr)
    assert SERVING not in proc.stdout


def test_a_settings_file_without_its_database_keys_is_refused(initialised: Server, tmp_path: Path) -> None:
    import tomllib

    import tomli_w

    data_dir = tmp_path / "copy"
    data_dir.mkdir()
    settings = tomllib.loads((initialised.data_dir / "safehold.toml").read_text())
    del settings["database"]
    (data_dir / "safehold.toml").write_text(tomli_w.dumps(settings))

    proc = run_cli("serve", "--data-dir", str(data_dir), check=False)

    assert proc.returncode == 1
    assert f"error: {data_dir / 'safehold.toml'} does not say where this server's database is: database.port is " \
           "missing" in proc.stderr
    assert SERVING not in proc.stdout


# --- a killed 'serve' and its bundled database ------------------------------------------------------------


def test_a_database_started_on_purpose_outlives_serve_and_one_a_killed_serve_left_is_stopped_by_the_next(
        server_root: Path) -> None:
    server = Server(Path(tempfile.mkdtemp(dir=server_root)) / "data")
    try:
        server.init()

        # started on purpose: 'serve' leaves it running
        server.cli("db", "start")
        code, status = db_status(server)
        assert code == 0 and status["running"] is True and status["bundled"] is True
        on_purpose = status["pid"]
        server.start()
        assert server.stop() == 0
        assert postmaster_pid(server) == on_purpose
        server.cli("db", "stop")
        code, status = db_status(server)
        assert code == 3 and status == {"mode": "bundled", "bundled": True, "running": False, "pid": None,
                                        "where": f"127.0.0.1:{server.db_port}", "port": server.db_port,
                                        "data_dir": str(server.data_dir.resolve() / "pg"), "problem": None}

        # 'serve' starts it, and is killed: the database is left running, with nobody to stop it
        server.start()
        first = postmaster_pid(server)
        assert first is not None
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        server.proc = None
        wait_until(lambda: port_free(server.port), what="the killed server's workers to be gone")
        assert postmaster_pid(server) == first

        # the next 'serve' takes it over, and its SIGTERM stops it like one it started
        server.start()
        assert postmaster_pid(server) == first
        assert server.stop() == 0
        assert "stopped the bundled PostgreSQL" in server.log()
        wait_until(lambda: not alive(first), what=f"postmaster {first} to be gone")
        assert postmaster_pid(server) is None
        assert db_status(server)[0] == 3

        # what a killed 'serve' left running, an operator keeps with 'db start': the next 'serve' leaves it
        server.start()
        kept = postmaster_pid(server)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        server.proc = None
        wait_until(lambda: port_free(server.port), what="the killed server's workers to be gone")
        assert "already running" in server.cli("db", "start").stdout
        server.start()
        assert server.stop() == 0
        assert postmaster_pid(server) == kept
    finally:
        server.cleanup()


# --- a server whose database comes up after it --------------------------------------------------------------


def test_a_secondary_started_before_its_database_waits_for_it_and_serves(server_root: Path) -> None:
    base = Path(tempfile.mkdtemp(dir=server_root))
    with running_server(base / "primary") as primary:
        secondary = make_secondary(primary, base / "secondary")
        try:
            assert primary.stop() == 0  # its SIGTERM stops the bundled database it started
            assert postmaster_pid(primary) is None

            # 'db status' on the secondary: not bundled, where it is, and that it does not answer
            text = secondary.cli("db", "status", check=False)
            assert text.returncode == 3
            assert f"this server's database is not bundled: it uses another Safehold server's (the primary's) at " \
                   f"127.0.0.1:{primary.db_port}" in text.stdout
            assert "it does not answer" in text.stdout and "/pg" not in text.stdout
            code, status = db_status(secondary)
            assert code == 3
            assert status["mode"] == "remote" and status["bundled"] is False and status["running"] is False
            assert status["where"] == f"127.0.0.1:{primary.db_port}" and status["data_dir"] is None
            assert status["problem"]
            refused = secondary.cli("db", "start", check=False)
            assert refused.returncode == 1 and "this server's database is not bundled" in refused.stderr

            # a short wait that runs out: the hint points at the primary, not at a data directory it lacks
            gave_up = serve_once(secondary, {"SAFEHOLD_DATABASE__CONNECT_WAIT": "1"})
            assert gave_up.returncode == 1 and SERVING not in gave_up.stdout
            assert "hint: this server uses another Safehold server's database" in gave_up.stderr
            assert "/pg" not in gave_up.stderr and "db status" not in gave_up.stderr

            # started before the database: it waits, and serves once the database is up
            secondary.start(wait=False)
            wait_until(lambda: "does not answer yet" in secondary.log(), timeout=60,
                       what="the secondary to say it waits for its database")
            assert secondary.proc is not None and secondary.proc.poll() is None
            assert SERVING not in secondary.log()
            primary.cli("db", "start")
            secondary.wait_healthy(timeout=90)
            log = secondary.log()
            assert log.index("does not answer yet") < log.index(SERVING)
            assert db_status(secondary) == (0, {**status, "running": True, "problem": None})
        finally:
            secondary.cleanup()


# --- init and the ports it writes ---------------------------------------------------------------------------


def test_init_refuses_a_port_that_is_taken_and_creates_nothing(server_root: Path) -> None:
    base = Path(tempfile.mkdtemp(dir=server_root))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        taken = held.getsockname()[1]
        for args, words in (
            (["--port", str(taken), "--db-port", str(free_port())],
             f"the HTTPS port {taken} on 127.0.0.1 is already in use: pass --port"),
            (["--port", str(free_port()), "--db-port", str(taken)],
             f"the database port {taken} on 127.0.0.1 is already in use: pass --db-port"),
        ):
            data_dir = base / f"data-{args[0][2:]}"
            proc = run_cli("init", "--data-dir", str(data_dir), *args, check=False)
            assert proc.returncode == 1
            assert words in proc.stderr and "Nothing was created" in proc.stderr
            assert not data_dir.exists()


def test_init_with_a_password_file_that_is_not_text_says_so(server_root: Path) -> None:
    base = Path(tempfile.mkdtemp(dir=server_root))
    password_file = base / "admin-pw"
    password_file.write_bytes(b"\xff\xfe\x00binary")

    proc = run_cli("init", "--data-dir", str(base / "data"), "--port", str(free_port()), "--admin-password-file",
                   str(password_file), check=False)

    assert proc.returncode == 1
    assert f"error: the admin password file {password_file} is not text (UTF-8)" in proc.stderr
    assert "Traceback" not in proc.stderr and not CLASS_NAME.search(proc.stderr)
    assert not (base / "data").exists()
