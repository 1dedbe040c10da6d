"""A standby installed from a primary's base backup, and promoted settings, without PostgreSQL.

The base backup is a tar written here the way pg_basebackup writes one: the
primary's files, its marker, its pid file and an ALTER SYSTEM primary_conninfo
among them. What the standby keeps, drops and writes is checked file by file.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from safehold.pg import ClusterSpec, PgError, PgManager, conf
from safehold.pg.binaries import Binaries

PRIMARY_FILES = {
    "PG_VERSION": b"17\n",
    "postgresql.conf": b"max_connections = 100\n",
    "postgresql.auto.conf": b"primary_conninfo = 'host=old'\nwork_mem = '8MB'\n",
    "pg_hba.conf": b"hostssl all all 10.9.9.9/32 scram-sha-256\n",
    "postmaster.pid": b"4242\n",
    "postmaster.opts": b"postgres\n",
    conf.STANDBY_SIGNAL: b"",
    conf.REPLICATION_PASSFILE: b"old:5432:*:repl_old:old-secret\n",
    conf.MARKER_FILE: conf.render_marker(
        major=17, superuser="safehold_admin", created_at="2026-01-01T00:00:00+00:00", version="1"
    ).encode(),
    "base/1/1259": b"table data",
    "log/postgresql.log": b"the primary's log",
}


def _tar(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    with tarfile.open(path, "w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def _manager(tmp_path: Path) -> PgManager:
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("server.crt", "server.key", "ca.crt"):
        (tls / name).write_text(f"{name} PEM\n")
    spec = ClusterSpec(
        data_dir=tmp_path / "standby" / "pg",
        port=6543,
        listen="127.0.0.1",
        tls_cert=tls / "server.crt",
        tls_key=tls / "server.key",
        tls_ca=tls / "ca.crt",
    )
    (tmp_path / "standby").mkdir()
    return PgManager(spec, Binaries(bin_dir=tmp_path / "bin", major=17, ssl=True), service_user=None)


PRIMARY = {
    "primary_host": "10.0.0.1",
    "primary_port": 5433,
    "user": "repl_standby",
    "password": "s3cret:pass",
    "slot": "standby_1",
    "application_name": "standby-1",
}


def test_install_standby_from_a_base_backup(tmp_path: Path) -> None:
    pg = _manager(tmp_path)
    base = _tar(tmp_path / "base.tar", PRIMARY_FILES, prefix="./")
    wal = _tar(tmp_path / "pg_wal.tar", {"000000010000000000000002": b"wal"})

    pg.install_standby(base, wal, **PRIMARY)  # type: ignore[arg-type]

    data = pg.data_dir
    assert pg.is_standby() and (data / conf.STANDBY_SIGNAL).read_bytes() == b""
    # the primary's process files and log are not taken over; its data and WAL are
    assert not (data / "postmaster.pid").exists() and not (data / "postmaster.opts").exists()
    assert not (data / "log").exists()
    assert (data / "base/1/1259").read_bytes() == b"table data"
    assert (data / "pg_wal/000000010000000000000002").read_bytes() == b"wal"
    # private files and directories only
    for path in [data, *data.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    # the password sits in the standby's own password file, never in the configuration
    assert (data / conf.REPLICATION_PASSFILE).read_text() == conf.render_pgpass(
        host="10.0.0.1", port=5433, user="repl_standby", password="s3cret:pass"
    )
    safehold_conf = (data / conf.CONF_FILE).read_text()
    assert "primary_conninfo = 'host=''10.0.0.1'' port=''5433'' user=''repl_standby''" in safehold_conf
    assert "sslmode=''verify-full''" in safehold_conf
    assert "primary_slot_name = 'standby_1'" in safehold_conf and "port = 6543" in safehold_conf
    assert "s3cret" not in safehold_conf
    auto = (data / "postgresql.auto.conf").read_text()
    assert "primary_conninfo" not in auto and "work_mem" in auto  # only the standby's own settings go
    assert conf.INCLUDE_LINE in (data / "postgresql.conf").read_text()
    assert pg.extra_hba_lines() == []  # the primary's extra lines are not taken over
    assert (data / conf.ROOT_CERT).read_text() == "ca.crt PEM\n"
    marker = json.loads((data / conf.MARKER_FILE).read_text())
    assert marker["standby"] is True and marker["superuser"] == "safehold_admin"
    assert marker["primary"] == {
        "host": "10.0.0.1", "port": 5433, "user": "repl_standby", "slot": "standby_1",
        "application_name": "standby-1",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("story", "extra", "message"),
    [
        ("the same file twice", [("PG_VERSION", tarfile.REGTYPE)], "twice"),
        ("a hard link", [("base/link", tarfile.LNKTYPE)], "holds a link"),
        ("a device", [("base/dev", tarfile.CHRTYPE)], "special file"),
    ],
)
def test_install_standby_refuses_and_leaves_nothing(
    tmp_path: Path, story: str, extra: list[tuple[str, bytes]], message: str
) -> None:
    pg = _manager(tmp_path)
    base = tmp_path / "base.tar"
    _tar(base, PRIMARY_FILES)
    with tarfile.open(base, "a") as tar:
        for name, kind in extra:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.LNKTYPE:
                info.linkname = "PG_VERSION"
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    wal = _tar(tmp_path / "pg_wal.tar", {})
    with pytest.raises(PgError, match=message):
        pg.install_standby(base, wal, **PRIMARY)  # type: ignore[arg-type]
    assert os.listdir(pg.data_dir) == [], story  # nothing half-installed
