"""Backups made before a key rotation, restored after it: the story an operator lives through, on a real server.

A backup holds the data keys wrapped by the master key that was current when it was made.  After 'safehold
key rotate' the server's key file is a new key, so restoring an older backup needs the old key file
('restore --key-file'); the restored data keys are then wrapped by the server's own key file again, and the
server starts as before.  A key file that is not the one the database or the backup needs is refused with
a message that names the key needed and the file that holds it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import SAFEHOLD, Server, run_cli, seed_account


def serve_once(server: Server, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """'safehold serve' that is expected to refuse to start (it returns; a server that did start is an error)."""
    try:
        return subprocess.run([*SAFEHOLD, "serve", "--data-dir", str(server.data_dir)], capture_output=True,
                              text=True, timeout=90, env={**os.environ, "COLUMNS": "300", **(env or {})})
    except subprocess.TimeoutExpired:
        raise AssertionError("'safehold serve' started with a key file that does not match the database") from None


def password_of(server: Server, account: str) -> str:
    with server.client(server.login()) as c:
        r = c.get(f"/accounts/{account}/password")
        assert r.status_code == 200, r.text
        return str(r.json()["password"])


def test_an_old_backup_is_restored_with_the_old_key_and_the_server_starts_with_its_own(
        server: Server, tmp_path: Path) -> None:
    token = server.login()
    _, before = seed_account(server, token, "made-before-the-rotation", resource="db01")
    backup = tmp_path / "before-rotation.backup"
    made = server.cli("backup", "--out", str(backup))
    assert "restoring it needs master key" in made.stdout

    rotated = server.cli("key", "rotate")
    (old_key,) = server.data_dir.glob("safehold.key.old-*")
    new_key = server.data_dir / "safehold.key"
    said = " ".join(rotated.stdout.split())  # the console may wrap long lines
    assert f"the old one is kept as {old_key}" in said
    assert f"--key-file {old_key}" in said and "backups made before now still need the old key" in said
    _, after = seed_account(server, server.login(), "made-after-the-rotation", resource="db02")
    server.stop()

    # the server's own (new) key cannot open the old backup: the refusal names the key, the date and the file
    refused = server.cli("restore", str(backup), "--yes", check=False)
    assert refused.returncode == 1
    words = " ".join(refused.stderr.split())
    backup_key_id = " ".join(made.stdout.split()).split("needs master key ")[1].split(",")[0]
    assert "does not match" in words and "made on 20" in words and f"with master key {backup_key_id}" in words
    assert f"{old_key} holds key {backup_key_id}" in words and f"--key-file {old_key}" in words
    assert "Traceback" not in refused.stderr and "KeyFileError" not in refused.stderr

    # the environment override also restores it, but then the database needs the old key: 'serve' with the
    # server's own key file refuses at once, naming the key the database needs and the file that holds it
    via_env = run_cli("restore", str(backup), "--data-dir", str(server.data_dir), "--yes",
                      env={"SAFEHOLD_SECURITY__KEY_FILE": str(old_key)})
    assert "SAFEHOLD_SECURITY__KEY_FILE" in " ".join(via_env.stdout.split())
    wrong = serve_once(server)
    assert wrong.returncode == 1
    hint = " ".join(wrong.stderr.split())
    assert f"this database needs master key {backup_key_id}" in hint and f"{old_key} holds key {backup_key_id}" in hint
    assert "security" in hint and "serving on" not in wrong.stdout
    assert "created by 'safehold init'" not in hint  # the old, misleading hint

    # restore with --key-file: the data keys go back under the server's own key file, which it starts with
    restored = server.cli("restore", str(backup), "--yes", "--key-file", str(old_key))
    told = " ".join(restored.stdout.split())
    assert f"now wrapped by this server's key file {new_key}" in told and "starts with it" in told
    server.start()
    assert password_of(server, before) == "made-before-the-rotation"
    with server.client(server.login()) as c:
        assert c.get(f"/accounts/{after}/password").status_code == 404  # the backup is older than that account
        restores = c.get("/audit", params={"action": "backup_restored"}).json()["items"]
        assert restores and restores[0]["detail"]["key_id"] == backup_key_id
    server.cli("audit", "verify")


def test_a_backup_made_after_the_rotation_needs_no_key_file(server: Server, tmp_path: Path) -> None:
    server.cli("key", "rotate")
    _, account = seed_account(server, server.login(), "after-rotation")
    backup = tmp_path / "after.backup"
    server.cli("backup", "--out", str(backup))
    server.stop()
    restored = server.cli("restore", str(backup), "--yes")
    assert "the server starts with its key file" in " ".join(restored.stdout.split())
    server.start()
    assert password_of(server, account) == "after-rotation"
