"""A counter (or a time) that every process of one server sees: 8 bytes of a file in its data directory, mapped into
memory.  A process bumps it after a change the others must not miss (a revoked token); the others compare
it with the value they saw before they cached something, at the cost of reading memory."""

from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path

log = logging.getLogger(__name__)


class SharedCounter:
    """Bumping need not be atomic across processes: a reader only asks whether the value changed."""

    def __init__(self, path: Path) -> None:
        self._map: mmap.mmap | None = None
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                if os.fstat(fd).st_size < 8:
                    os.ftruncate(fd, 8)
                self._map = mmap.mmap(fd, 8)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("%s cannot be shared (%s): a change reaches this server's other workers only within "
                        "their caches' short life", path, exc.strerror)

    def value(self) -> int:
        return int.from_bytes(self._map[:8], "little") if self._map is not None else 0

    def bump(self) -> None:
        if self._map is not None:
            self._map[:8] = ((self.value() + 1) % 2**64).to_bytes(8, "little")

    def raise_to(self, value: int) -> None:
        """Keep the highest value any process set (two setting at once may keep either: use it for times
        where that differs by no more than the instant between them)."""
        if self._map is not None and value > self.value():
            self._map[:8] = value.to_bytes(8, "little")

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
