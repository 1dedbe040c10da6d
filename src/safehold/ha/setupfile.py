"""Setup files and setup packs: what the primary hands to a new secondary or read-only server.

Both are sealed with a passphrase (:mod:`safehold.crypto.sealedfile`) and hold
a tar archive whose first member is ``manifest.json``::

    {"format": "safehold-setup-1", "kind": "secondary" | "readonly",
     "cluster_id": ..., "key_check": <hex of the master key's check value>,
     "key_id": ..., "created_at": ..., ...kind-specific fields}

followed by the kind's payload members.  They never hold the master key file;
the joining server brings its own copy and it must match ``key_check``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from safehold.crypto.keyfile import MasterKey
from safehold.crypto.sealedfile import SealedFileError, SealedReader, SealedWriter
from safehold.errors import KeyFileError, SafeholdError
from safehold.files import sync_dir

FORMAT = "safehold-setup-1"
KINDS = ("secondary", "readonly")


class SetupFileError(SafeholdError):
    pass


def new_passphrase() -> str:
    """Six groups of five characters from an unambiguous alphabet (about 150 bits)."""
    alphabet = "23456789abcdefghijkmnpqrstuvwxyz"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(5)) for _ in range(6))


@dataclass(frozen=True)
class Manifest:
    kind: str
    cluster_id: str
    key_check: str
    key_id: str
    created_at: str
    fields: dict[str, Any]

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "kind": self.kind, "cluster_id": self.cluster_id,
                           "key_check": self.key_check, "key_id": self.key_id, "created_at": self.created_at,
                           **self.fields}, indent=2, sort_keys=True).encode()

    def check_key(self, master: MasterKey) -> None:
        if master.check_value.hex() != self.key_check:
            raise KeyFileError(
                f"the key file does not match this cluster (the setup file expects key id {self.key_id}, "
                f"the key file is {master.key_id})",
                hint="copy the master key file of the primary to this host and pass it with --key-file",
            )


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o600
    tar.addfile(info, io.BytesIO(data))


@contextmanager
def write_setup_file(out: Path, passphrase: str, manifest: Manifest) -> Iterator[tarfile.TarFile]:
    """Yield a tar to add payload members to; the file appears at ``out`` only when complete."""
    if manifest.kind not in KINDS:
        raise ValueError(manifest.kind)
    out = out.resolve()
    part = out.with_name(out.name + ".part")
    with contextlib.suppress(FileNotFoundError):
        part.unlink()  # a leftover of an interrupted run: never reuse its (possibly wider) mode
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    try:
        with open(fd, "wb") as raw:
            with SealedWriter(raw, passphrase) as sealed, tarfile.open(fileobj=sealed, mode="w|") as tar:  # type: ignore[call-overload]
                _add(tar, "manifest.json", manifest.to_json())
                yield tar
            raw.flush()
            os.fsync(raw.fileno())
        part.replace(out)
    except BaseException:
        part.unlink(missing_ok=True)  # a full disk or an error: no half-written pack left behind
        raise
    sync_dir(out.parent)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    _add(tar, name, data)


@contextmanager
def read_setup_file(path: Path, passphrase: str) -> Iterator[tuple[Manifest, tarfile.TarFile]]:
    """Open, decrypt and check the manifest; the tar's remaining members follow in order.

    Any damage anywhere in the file raises SetupFileError, also while members are read."""
    try:
        raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise SetupFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        try:
            reader = SealedReader(raw, passphrase)
            tar = tarfile.open(fileobj=reader, mode="r|")  # type: ignore[call-overload]
            first = tar.next()
            if first is None or first.name != "manifest.json" or not first.isfile():
                raise SetupFileError(f"{path} is not a Safehold setup file (no manifest)")
            data = json.loads(tar.extractfile(first).read())  # type: ignore[union-attr]
        except SealedFileError as exc:
            raise SetupFileError(f"{path}: {exc.message}") from None
        except (tarfile.TarError, ValueError, KeyError):
            raise SetupFileError(f"{path} is damaged or not a Safehold setup file") from None
        if data.get("format") != FORMAT or data.get("kind") not in KINDS:
            raise SetupFileError(f"{path} is not a Safehold setup file of a known kind")
        manifest = Manifest(
            kind=data.pop("kind"), cluster_id=str(data.pop("cluster_id")), key_check=str(data.pop("key_check")),
            key_id=str(data.pop("key_id")), created_at=str(data.pop("created_at")),
            fields={k: v for k, v in data.items() if k != "format"},
        )
        try:
            yield manifest, tar
        except SealedFileError as exc:
            raise SetupFileError(f"{path}: {exc.message}") from None
        except tarfile.TarError:
            raise SetupFileError(f"{path} is damaged (its archive is broken)") from None
    finally:
        raw.close()


def payload(tar: tarfile.TarFile) -> Iterator[tuple[str, BinaryIO]]:
    """The members after the manifest, in order, as (name, readable stream).  Each stream must be
    read (or skipped) before the next member is asked for: the archive is read once, front to back."""
    while (member := tar.next()) is not None:
        if not member.isfile():
            raise SetupFileError(f"unexpected member {member.name!r} in the setup file")
        stream = tar.extractfile(member)
        assert stream is not None
        yield member.name, stream  # type: ignore[misc]


def peek_kind(path: Path, passphrase: str) -> Manifest:
    with read_setup_file(path, passphrase) as (manifest, _):
        return manifest


def scratch_dir(near: Path) -> tempfile.TemporaryDirectory[str]:
    """A private temporary directory on the same file system as ``near`` (so renames are atomic)."""
    near.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=".safehold-join-", dir=near)
