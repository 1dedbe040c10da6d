"""PostgreSQL WAL positions (``'16/B374D848'``) as numbers, and the bytes between two of them (pure)."""

from __future__ import annotations


def parse_lsn(text: str | None) -> int | None:
    """The byte position of an LSN written as PostgreSQL does (``'X/Y'``, hexadecimal); None if absent or
    malformed."""
    if not text or "/" not in text:
        return None
    high, _, low = text.partition("/")
    try:
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        return None


def lag_bytes(ahead: str | None, behind: str | None) -> int | None:
    """How many bytes of WAL ``behind`` lacks of ``ahead`` (0 when it has it all); None when either is
    unknown."""
    a, b = parse_lsn(ahead), parse_lsn(behind)
    if a is None or b is None:
        return None
    return max(0, a - b)
