"""The event script: who may own it, where it may live, and how it is run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from safehold.alerts.base import AlertError
from safehold.alerts.script import RunAs, check_script, run_script

ME = RunAs(os.geteuid(), "me")


def script(directory: Path, body: str = "#!/bin/sh\nexit 0\n", mode: int = 0o755, name: str = "on-event") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    p = directory / name
    p.write_text(body)
    p.chmod(mode)
    return p


def refused(path: Path, owner: RunAs = ME) -> str:
    with pytest.raises(AlertError) as exc:
        check_script(path, owner)
    assert exc.value.transient is False
    return exc.value.message


def test_an_executable_owned_by_the_user_and_writable_by_nobody_else_is_accepted(tmp_path: Path) -> None:
    check_script(script(tmp_path / "bin"), ME)
    check_script(script(tmp_path / "bin", mode=0o700, name="private"), ME)


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777, 0o765])
def test_group_or_other_writable_is_refused(tmp_path: Path, mode: int) -> None:
    assert "writable by group or others" in refused(script(tmp_path, mode=mode))


def test_not_executable_is_refused(tmp_path: Path) -> None:
    assert "not executable" in refused(script(tmp_path, mode=0o644))


def test_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    p = script(tmp_path)
    other = RunAs(ME.uid + 4242, "svc")
    msg = refused(p, other)
    assert "not by svc (the user it runs as)" in msg and "refused" in msg


def test_a_symlink_a_directory_a_relative_or_missing_path_is_refused(tmp_path: Path) -> None:
    target = script(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert "symbolic link" in refused(link)
    assert "not a regular file" in refused(tmp_path / "real")
    assert "absolute" in refused(Path("on-event"))
    assert "does not exist" in refused(tmp_path / "missing")


def test_a_directory_others_can_change_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    p = script(shared)
    shared.chmod(0o777)
    assert f"its directory {shared} can be changed by another user" in refused(p)
    shared.chmod(0o1777)  # like /tmp: others cannot replace a file they do not own
    check_script(p, ME)


def test_the_script_gets_exactly_its_arguments_and_a_clean_environment(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHOLD_DATABASE_URL", "postgresql://u:do-not-leak@h/db")
    p = script(tmp_path, '#!/bin/sh\nfor a in "$@"; do printf "[%s]" "$a"; done\nenv >&2\n')
    r = run_script(p, ["RaiseAlarm", "Sync Degraded", "it's 'quoted' & $HOME"], timeout=10, output_limit=4096,
                   owner=ME, env={"PATH": "/usr/bin:/bin", "SAFEHOLD_EVENT": "RaiseAlarm"})
    assert r.exit_code == 0 and not r.timed_out
    assert r.stdout == "[RaiseAlarm][Sync Degraded][it's 'quoted' & $HOME]"
    assert "SAFEHOLD_EVENT=RaiseAlarm" in r.stderr and "do-not-leak" not in r.stderr


def test_a_script_over_its_time_limit_is_killed_with_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child-pid"
    p = script(tmp_path, f'#!/bin/sh\nsleep 60 &\necho $! > {marker}\nwait\n')
    start = time.monotonic()
    r = run_script(p, ["Failover", "a", "b"], timeout=0.5, output_limit=100, owner=ME, env={"PATH": "/usr/bin:/bin"})
    assert r.timed_out and time.monotonic() - start < 10
    child = int(marker.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the script's child outlived the time limit")


def test_output_is_truncated(tmp_path: Path) -> None:
    p = script(tmp_path, "#!/bin/sh\nhead -c 1000000 /dev/zero | tr '\\0' x\nexit 3\n")
    r = run_script(p, ["HAFailed", "ro"], timeout=10, output_limit=10, owner=ME, env={"PATH": "/usr/bin:/bin"})
    assert r.exit_code == 3
    assert r.stdout == "xxxxxxxxxx …(truncated)"
