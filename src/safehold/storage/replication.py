"""Streaming replication as the databases report it: plain, immutable data, no policy.

`primary_view` reads a primary (pg_stat_replication with its physical slots),
`replica_view` a hot standby (pg_stat_wal_receiver and the replay position).
The HA monitors turn these into observations; what is healthy is decided in
`safehold.ha.policy`, not here.

The connecting role sees the LSNs, addresses and receiver details only with
the privileges of pg_monitor (or pg_read_all_stats), or as a superuser; others
get NULLs, i.e. None everywhere (see `storage.admin.grant_monitoring`).
LSNs are PostgreSQL's text form ('0/3000148'); lags are measured by the
server itself, so no clock of ours takes part.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.db import DbTarget, connect


@dataclass(frozen=True)
class Slot:
    """One replication slot (pg_replication_slots)."""

    name: str
    slot_type: str  # 'physical' or 'logical'
    active: bool
    active_pid: int | None
    restart_lsn: str | None
    wal_status: str | None  # 'reserved', 'extended', 'unreserved', 'lost'
    retained_bytes: int | None  # WAL kept for it (None on a standby or before it reserved any)


@dataclass(frozen=True)
class StandbyLink:
    """One standby as its primary sees it: a WAL sender (when connected), its physical slot
    (when it has one), or both."""

    application_name: str | None
    state: str | None  # 'streaming', 'catchup', 'startup', 'backup'…; None: not connected
    client_addr: str | None
    sent_lsn: str | None
    write_lsn: str | None
    flush_lsn: str | None
    replay_lsn: str | None
    lag_bytes: int | None  # current WAL position - replay_lsn
    replay_lag_seconds: float | None  # PostgreSQL's replay_lag; None when idle or unknown
    sync_state: str | None  # 'async', 'sync', 'potential', 'quorum'
    slot_name: str | None
    slot_active: bool | None  # None: no slot

    @property
    def connected(self) -> bool:
        return self.state is not None


@dataclass(frozen=True)
class PrimaryView:
    in_recovery: bool  # True: this server is itself a standby (its links are cascading ones)
    current_lsn: str | None  # None on a standby
    standbys: tuple[StandbyLink, ...]

    def by_slot(self, slot: str) -> StandbyLink | None:
        return next((s for s in self.standbys if s.slot_name == slot), None)

    def by_application_name(self, name: str) -> StandbyLink | None:
        return next((s for s in self.standbys if s.application_name == name), None)


@dataclass(frozen=True)
class ReplicaView:
    """A hot standby as it reports itself."""

    in_recovery: bool  # False: a primary (or a promoted standby); every other field is then None
    receiver_status: str | None  # 'streaming', 'starting', 'waiting'…; None: no receiver
    sender_host: str | None
    sender_port: int | None
    slot_name: str | None
    last_msg_send_time: datetime | None  # by the primary's clock
    last_msg_receipt_time: datetime | None  # by this server's clock
    latest_end_lsn: str | None  # last WAL position the primary reported to the receiver
    receive_lsn: str | None  # last WAL received and flushed (kept after the receiver stops)
    replay_lsn: str | None
    replay_backlog_bytes: int | None  # received but not yet replayed
    # now() - time of the last replayed commit: the replica's staleness while the
    # primary takes writes; it also grows while the primary is idle.
    replay_delay_seconds: float | None

    @property
    def streaming(self) -> bool:
        return self.receiver_status == "streaming"


# --- SQL ------------------------------------------------------------------------------

SLOTS_SQL = """
SELECT slot_name::text, slot_type, active, active_pid, restart_lsn::text, wal_status,
       CASE WHEN pg_is_in_recovery() OR restart_lsn IS NULL THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END
  FROM pg_replication_slots
 ORDER BY slot_name
"""

_POSITION_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END
"""

_LINKS_SQL = """
SELECT r.application_name, r.state, host(r.client_addr),
       r.sent_lsn::text, r.write_lsn::text, r.flush_lsn::text, r.replay_lsn::text,
       pg_wal_lsn_diff(CAST(:current AS pg_lsn), r.replay_lsn)::bigint,
       extract(epoch FROM r.replay_lag)::float8,
       r.sync_state, s.slot_name::text, s.active
  FROM pg_stat_replication r
  FULL JOIN (SELECT slot_name, active, active_pid FROM pg_replication_slots
              WHERE slot_type = 'physical') s ON s.active_pid = r.pid
 ORDER BY coalesce(s.slot_name::text, r.application_name), r.pid
"""

_REPLICA_SQL = """
SELECT pg_is_in_recovery(),
       w.status, w.sender_host, w.sender_port, w.slot_name,
       w.last_msg_send_time, w.last_msg_receipt_time, w.latest_end_lsn::text,
       pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
  FROM (SELECT 1) AS one
  LEFT JOIN pg_stat_wal_receiver w ON true
"""


def slot_from_row(row: Sequence[Any]) -> Slot:
    """A `Slot` from one row of SLOTS_SQL (also read through psycopg by storage.admin)."""
    name, slot_type, active, pid, restart_lsn, wal_status, retained = row
    return Slot(
        name=name,
        slot_type=slot_type,
        active=bool(active),
        active_pid=pid,
        restart_lsn=restart_lsn,
        wal_status=wal_status,
        retained_bytes=None if retained is None else int(retained),
    )


# --- readers ----------------------------------------------------------------------------


async def slots(conn: AsyncConnection) -> list[Slot]:
    return [slot_from_row(tuple(row)) for row in await conn.execute(text(SLOTS_SQL))]


async def primary_view(conn: AsyncConnection) -> PrimaryView:
    """The standbys as this server (normally the primary) sees them."""
    in_recovery, current = (await conn.execute(text(_POSITION_SQL))).one()
    rows = await conn.execute(text(_LINKS_SQL), {"current": current})
    links = tuple(
        StandbyLink(
            application_name=r[0],
            state=r[1],
            client_addr=r[2],
            sent_lsn=r[3],
            write_lsn=r[4],
            flush_lsn=r[5],
            replay_lsn=r[6],
            lag_bytes=None if r[7] is None else int(r[7]),
            replay_lag_seconds=r[8],
            sync_state=r[9],
            slot_name=r[10],
            slot_active=r[11],
        )
        for r in rows
    )
    return PrimaryView(in_recovery=bool(in_recovery), current_lsn=current, standbys=links)


async def replica_view(conn: AsyncConnection) -> ReplicaView:
    """This server as a standby: its WAL receiver and how far it has replayed."""
    r = (await conn.execute(text(_REPLICA_SQL))).one()
    return ReplicaView(
        in_recovery=bool(r[0]),
        receiver_status=r[1],
        sender_host=r[2],
        sender_port=r[3],
        slot_name=r[4],
        last_msg_send_time=r[5],
        last_msg_receipt_time=r[6],
        latest_end_lsn=r[7],
        receive_lsn=r[8],
        replay_lsn=r[9],
        replay_backlog_bytes=None if r[10] is None else int(r[10]),
        replay_delay_seconds=r[11],
    )


async def wal_position(conn: AsyncConnection) -> tuple[bool, str]:
    """(in recovery, WAL position): a writable database's current WAL position, or how far a replica has
    received its primary's WAL."""
    r = (await conn.execute(text(
        "SELECT pg_is_in_recovery(), (CASE WHEN pg_is_in_recovery() THEN "
        "coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) ELSE pg_current_wal_lsn() END)::text"
    ))).one()
    return bool(r[0]), str(r[1])


async def replayed_up_to(conn: AsyncConnection, lsn: str) -> bool:
    """Whether this replica has replayed the WAL up to ``lsn``."""
    return bool((await conn.execute(text("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)"),
                                    {"lsn": lsn})).scalar())


# --- synchronously, on a connection of their own (the CLI) -------------------------------------


def current_wal_lsn(target: DbTarget) -> str:
    """The database's current WAL position ('0/0' when it reports none)."""
    with connect(target) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return str(row[0]) if row else "0/0"


def wait_replayed(target: DbTarget, lsn: str, timeout: float, *, interval: float = 0.2) -> bool:
    """Poll the replica at ``target`` until it has replayed up to ``lsn``; False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    with connect(target) as conn:
        while True:
            done = conn.execute("SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)",
                                (lsn,)).fetchone()
            if done and done[0]:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)


def receiver_state(target: DbTarget, *, timeout: float = 10) -> tuple[bool, str | None]:
    """(in recovery, WAL receiver status) of the database at ``target``."""
    with connect(target, timeout=timeout) as conn:
        row = conn.execute("SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver)").fetchone()
    return (bool(row[0]), None if row[1] is None else str(row[1])) if row else (False, None)
