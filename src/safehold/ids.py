"""Identifiers: every id is a UUID; a malformed one is simply not found."""

from __future__ import annotations

import uuid

from safehold.errors import NotFound


def parse_id(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError):
        raise NotFound(f"{what} not found") from None
