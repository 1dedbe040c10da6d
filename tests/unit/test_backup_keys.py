"""Which key a backup or a database needs, and what the operator is told: pure functions and key files on disk
(no server).  The story with real servers is tests/integration/test_key_rotation_backups.py."""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
from pathlib import Path

import pytest

from safehold.config import ServerSection, Settings
from safehold.crypto.keyfile import MasterKey, create_key_file
from safehold.errors import KeyFileError
from safehold.services.backup import (
    Manifest,
    check_backup_key,
    made_on,
    plan_restore,
    restored_notes,
)
from safehold.services.keys import database_key_mismatch, find_key_file, rotation_notes


def manifest_for(key: MasterKey, dump: bytes = b"dump") -> Manifest:
    return Manifest(cluster_id=str(uuid.uuid4()), key_id=key.key_id, key_check=key.check_value.hex(),
                    created_at="2026-03-01T09:30:00.123456+00:00", version="0", dump_sha256=hashlib.sha256(dump).hexdigest(),
                    dump_size=len(dump))


def write_backup(path: Path, manifest: Manifest, dump: bytes = b"dump") -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in (("manifest.json", manifest.to_json()), ("database.dump", dump)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def settings_in(data_dir: Path) -> Settings:
    return Settings(server=ServerSection(id=str(uuid.uuid4()), name="vault-1"), data_dir=data_dir)


@pytest.fixture()
def rotated(tmp_path: Path) -> tuple[Path, MasterKey, Path, MasterKey]:
    """A data directory after one rotation: safehold.key (new) and safehold.key.old-<time> (the backup's)."""
    old_path = tmp_path / "safehold.key.old-20260301T100000Z"
    old = create_key_file(old_path)
    new = create_key_file(tmp_path / "safehold.key")
    return tmp_path / "safehold.key", new, old_path, old


def test_made_on_reads_the_manifest_time_and_keeps_an_odd_one() -> None:
    key = MasterKey(bytes(32))
    assert made_on(manifest_for(key)) == "2026-03-01 09:30 UTC"
    odd = Manifest(**{**manifest_for(key).__dict__, "created_at": "yesterday"})
    assert made_on(odd) == "yesterday"


def test_a_backup_refuses_another_key_and_names_the_one_it_needs(tmp_path: Path) -> None:
    backup_key, other = MasterKey(bytes(32)), MasterKey(b"\x01" * 32)
    manifest = manifest_for(backup_key)
    check_backup_key(manifest, backup_key, Path("k"), backup=Path("b"), data_dir=tmp_path)  # the right key: no error

    with pytest.raises(KeyFileError) as refused:
        check_backup_key(manifest, other, Path("/srv/k"), backup=Path("/b.backup"), data_dir=Path("/srv"))
    assert refused.value.message == (f"the key file /srv/k (master key {other.key_id}) does not match /b.backup, which "
                                     f"was made on 2026-03-01 09:30 UTC with master key {backup_key.key_id}")
    assert refused.value.hint is not None
    assert "current on 2026-03-01 09:30 UTC" in refused.value.hint
    assert "safehold restore /b.backup --data-dir /srv --key-file PATH" in refused.value.hint

    with pytest.raises(KeyFileError) as found:
        check_backup_key(manifest, other, Path("/srv/k"), backup=Path("/b.backup"), data_dir=Path("/srv"),
                         found=Path("/srv/k.old-1"))
    assert found.value.hint == (f"/srv/k.old-1 holds key {backup_key.key_id}: "
                                "safehold restore /b.backup --data-dir /srv --key-file /srv/k.old-1")


def test_the_key_a_database_needs_is_found_among_the_kept_key_files(rotated: tuple[Path, MasterKey, Path, MasterKey],
                                                                     ) -> None:
    key_file, new, old_path, old = rotated
    (key_file.parent / "safehold.key.old-20260101T000000Z").write_text("not a key\n")  # skipped, not an error
    (key_file.parent / "safehold.key.old-20260101T000000Z").chmod(0o600)
    assert find_key_file(old.check_value, key_file) == old_path
    assert find_key_file(new.check_value, key_file) == key_file
    assert find_key_file(MasterKey(b"\x07" * 32).check_value, key_file) is None
    unfinished = create_key_file(key_file.with_name("safehold.key.new"))
    assert find_key_file(unfinished.check_value, key_file) == key_file.with_name("safehold.key.new")


def test_the_database_key_refusal_says_which_key_and_how_to_name_it() -> None:
    master, needed = MasterKey(bytes(32)), MasterKey(b"\x02" * 32)
    found = database_key_mismatch(Path("/d/safehold.key"), master, needed.check_value, found=Path("/d/safehold.key.old-1"),
                                  config=Path("/d/safehold.toml"), from_env=False)
    assert found.message == (f"the key file /d/safehold.key does not match this database: it holds master key {master.key_id}, "
                             f"but this database needs "
                             f"master key {needed.key_id}")
    assert found.hint is not None and "init" not in found.hint
    assert found.hint.startswith(f"/d/safehold.key.old-1 holds key {needed.key_id}: name it as key_file in the "
                                 "[security] section of /d/safehold.toml, or start with "
                                 "SAFEHOLD_SECURITY__KEY_FILE=/d/safehold.key.old-1.")
    lost = database_key_mismatch(Path("/e/other.key"), master, needed.check_value, found=None,
                                 config=Path("/d/safehold.toml"), from_env=True)
    assert "/e/other.key (from SAFEHOLD_SECURITY__KEY_FILE)" in lost.message
    assert lost.hint is not None and f"key file of key {needed.key_id}" in lost.hint and "other.key.old-<time>" in lost.hint


def test_rotation_says_old_backups_need_the_old_key_file() -> None:
    notes = rotation_notes(Path("/d/safehold.key.old-X"), Path("/d"))
    assert any("--key-file /d/safehold.key.old-X" in line and "backups made before now" in line for line in notes)
    assert any(line.startswith("keep /d/safehold.key.old-X") for line in notes)


def test_restore_plan_after_a_rotation(tmp_path: Path, rotated: tuple[Path, MasterKey, Path, MasterKey]) -> None:
    key_file, new, old_path, old = rotated
    settings = settings_in(tmp_path)
    backup = write_backup(tmp_path / "old.backup", manifest_for(old))

    with pytest.raises(KeyFileError) as refused:  # the server's own key: refused, the kept old key named
        plan_restore(settings, backup, None, find=find_key_file)
    assert refused.value.hint is not None and f"--key-file {old_path}" in refused.value.hint

    plan = plan_restore(settings, backup, old_path, find=find_key_file)
    assert plan.rewrap and plan.start_key_file == key_file
    notes = restored_notes(plan)
    assert notes[0] == f"restored the backup of 2026-03-01 09:30 UTC (made with master key {old.key_id})"
    assert f"now wrapped by this server's key file {key_file} (key {new.key_id})" in notes[1]
    assert f"still needs {old_path}" in notes[2]


def test_restore_plan_without_the_servers_own_key_file(tmp_path: Path,
                                                       rotated: tuple[Path, MasterKey, Path, MasterKey]) -> None:
    key_file, _, old_path, old = rotated
    key_file.unlink()
    settings = settings_in(tmp_path)
    backup = write_backup(tmp_path / "old.backup", manifest_for(old))
    with pytest.raises(KeyFileError) as missing:
        plan_restore(settings, backup, None)
    assert missing.value.hint is not None and "--key-file" in missing.value.hint and old.key_id in missing.value.hint

    plan = plan_restore(settings, backup, old_path)
    assert not plan.rewrap and plan.start_key_file == old_path
    assert any(f"needs the key file {old_path}" in line and "copy it to" in line for line in restored_notes(plan))


def test_restore_plan_with_the_key_from_the_environment(tmp_path: Path,
                                                        rotated: tuple[Path, MasterKey, Path, MasterKey]) -> None:
    _, _, old_path, old = rotated
    settings = Settings(server=ServerSection(id=str(uuid.uuid4()), name="vault-1"), data_dir=tmp_path,
                        security={"key_file": old_path})
    plan = plan_restore(settings, write_backup(tmp_path / "old.backup", manifest_for(old)), None, key_from_env=True)
    assert not plan.rewrap
    assert any("SAFEHOLD_SECURITY__KEY_FILE" in line and "'safehold serve' too" in line for line in restored_notes(plan))
