"""A read-only server's other workers follow its first worker's view while it is fresh."""

from __future__ import annotations

import time
from pathlib import Path

from safehold.domain import ServerRole
from safehold.ha.policy import PeerObservation
from safehold.ha.shared_view import STALE_CYCLES, SharedView, SharedViewFile, decode, encode

PRIMARY = PeerObservation("id-1", "primary", ServerRole.PRIMARY, "https://127.0.0.1:8443", True)
SECONDARY = PeerObservation("id-2", "secondary", ServerRole.SECONDARY, "https://127.0.0.1:8444", False)


def test_a_view_survives_its_file() -> None:
    view = SharedView(123.5, PRIMARY, (PRIMARY, SECONDARY), 1.5, ("FailoverLagTooHigh", "too far behind"), "why")
    assert decode(encode(view)) == view
    empty = SharedView(1.0, None, (), None, None, None)
    assert decode(encode(empty)) == empty


def test_followers_see_what_was_written_until_it_is_stale(tmp_path: Path) -> None:
    first = SharedViewFile(tmp_path / "run" / "view.json", interval=1.0)
    follower = SharedViewFile(tmp_path / "run" / "view.json", interval=1.0)
    assert follower.fresh() is None  # nothing written yet: each decides for itself
    now = time.time()
    first.write(SharedView(now, PRIMARY, (PRIMARY,), 0.0, None, None))
    assert follower.fresh(now) is not None and follower.fresh(now).redirect == PRIMARY  # type: ignore[union-attr]
    first.write(SharedView(now + 1, None, (PRIMARY,), 0.0, None, None))  # emergency mode: no redirect
    assert follower.fresh(now + 1).redirect is None  # type: ignore[union-attr]
    assert follower.fresh(now + 1 + STALE_CYCLES + 0.1) is None  # the first worker stopped writing
    assert ((tmp_path / "run" / "view.json").stat().st_mode & 0o777) == 0o600


def test_a_damaged_view_is_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "view.json"
    path.write_text('{"written_at": ')
    assert SharedViewFile(path, 1.0).fresh() is None
