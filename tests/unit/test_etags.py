"""Optimistic concurrency: If-Match headers as tables of (header, row version) -> proceed or 412."""

from __future__ import annotations

import pytest

from safehold.errors import PreconditionFailed
from safehold.services.access import IfMatch, etag, require_match

CURRENT = "4711"

# (If-Match header, current row version or None when there is no row) -> the write may proceed
IF_MATCH = [
    # no header: no precondition at all (the last writer wins, field by field)
    (None, CURRENT, True),
    (None, None, True),
    # the ETag of the current version, as the API sends it
    ('"4711"', CURRENT, True),
    ('  "4711"  ', CURRENT, True),
    # a stale ETag, or one of another row
    ('"4710"', CURRENT, False),
    ('"47111"', CURRENT, False),
    ('""', CURRENT, False),
    # a list matches if any member does; empty members are allowed
    ('"1", "4711"', CURRENT, True),
    ('"1","2"', CURRENT, False),
    ('"1", , "4711",', CURRENT, True),
    # strong comparison: a weak tag never matches, even with the same opaque value
    ('W/"4711"', CURRENT, False),
    ('W/"4711", "4711"', CURRENT, True),
    # "*": any current version, but there must be a row
    ("*", CURRENT, True),
    (" * ", CURRENT, True),
    ("*", None, False),
    ('"4711"', None, False),
    # malformed headers match nothing: a write is never made on a precondition not understood
    ("4711", CURRENT, False),
    ('"4711', CURRENT, False),
    ('"4711" x', CURRENT, False),
    ('"47 11"', "47 11", False),
    ("", CURRENT, False),
    ('*, "4711"', CURRENT, False),
]


@pytest.mark.parametrize(("header", "version", "proceeds"), IF_MATCH)
def test_if_match(header: str | None, version: str | None, proceeds: bool) -> None:
    precondition = IfMatch.parse(header)
    if proceeds:
        require_match(precondition, version, "resource")
    else:
        with pytest.raises(PreconditionFailed) as failed:
            require_match(precondition, version, "resource")
        assert failed.value.code == "precondition_failed"
        assert "resource" in failed.value.message


@pytest.mark.parametrize("version", ["1", "4711", "4294967295"])
def test_an_etag_the_api_sent_matches_its_own_version_only(version: str) -> None:
    sent = etag(version)
    assert sent == f'"{version}"'
    assert IfMatch.parse(sent) == IfMatch(tags=(version,))
    assert IfMatch.parse(sent).matches(version)  # type: ignore[union-attr]
    assert not IfMatch.parse(sent).matches(version + "0")  # type: ignore[union-attr]
