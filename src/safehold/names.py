"""The names Safehold gives what it makes for other servers, and the patterns that find them again.

For a server whose id is ID (its first 12 hex digits: SHORT), on the primary's database:

- a read-only server streams as the replication role ``repl_SHORT`` through the physical slot
  ``ro_SHORT``, and reports ID itself as its ``application_name``;
- a secondary logs in as ``app_SHORT`` (a member of the app login, holding its privileges).

On a read-only server, the audit records its replica cannot take wait in its data directory's
``spool`` directory until they are shipped to the primary.

'safehold ha pack', 'ha add-secondary', the rejoin of a server and the teardown all build and
recognise these names here, so they never drift apart.
"""

from __future__ import annotations

import re
import uuid

from safehold.errors import InvalidInput

#: A read-only server's replication role, its slot, a secondary's login (as made here).
REPLICATION_ROLE = re.compile(r"repl_[0-9a-f]{12}")
READONLY_SLOT = re.compile(r"ro_[0-9a-f]{12}")
SECONDARY_LOGIN = re.compile(r"app_[0-9a-f]{12}")
#: The read-only server's audit spool, a directory in its data directory.
SPOOL_DIR = "spool"


def short_id(server_id: str) -> str:
    """The first 12 hex digits of a server id (a UUID), which name what is made for that server."""
    try:
        return uuid.UUID(server_id).hex[:12]
    except (ValueError, TypeError, AttributeError):
        raise InvalidInput(f"{server_id!r} is not a server id", field="server_id") from None


def replication_role(server_id: str) -> str:
    """The replication role a read-only server streams as: ``repl_`` and its short id."""
    return f"repl_{short_id(server_id)}"


def readonly_slot(server_id: str) -> str:
    """The physical replication slot of a read-only server: ``ro_`` and its short id."""
    return f"ro_{short_id(server_id)}"


def application_name(server_id: str) -> str:
    """What a read-only server's replica reports to the primary (pg_stat_replication): its id."""
    return server_id


def secondary_login(server_id: str) -> str:
    """The database login of a secondary: ``app_`` and its short id."""
    return f"app_{short_id(server_id)}"
