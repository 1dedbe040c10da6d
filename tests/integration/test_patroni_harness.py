"""The Patroni harness itself (tests/patroni_support.py), before any Safehold story is built on it.

A 2-member Patroni cluster on etcd: a row written through the read-write multi-host URL; kill -9 the
leader (Patroni and postmaster); the other member takes over and the same URL writes there; the killed
member comes back and streams from the new leader; every URL form reaches the leader.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from safehold.storage import dburl
from tests.patroni_support import PatroniCluster, cluster_fixture
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

patroni_cluster = cluster_fixture(n=2)  # module-scoped: both tests share one cluster, in order


def one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def write(url: str, note: str) -> int:
    """Insert a row through `url`; the port of the server that took it."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (note text PRIMARY KEY)")
        conn.execute("INSERT INTO notes (note) VALUES (%s) ON CONFLICT DO NOTHING", (note,))
        return int(one(conn, "SELECT inet_server_port()"))


def notes(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return {row[0] for row in conn.execute("SELECT note FROM notes")}


def port_of(cluster: PatroniCluster, name: str) -> int:
    return cluster.member(name).pg_port


def test_failover_and_rejoin_through_one_multi_host_url(patroni_cluster: PatroniCluster) -> None:
    cluster = patroni_cluster
    url = cluster.url()  # postgresql://safehold:…@127.0.0.1:p0,127.0.0.1:p1/safehold?target_session_attrs=read-write

    # the app login writes through the multi-host URL, and lands on Patroni's leader
    first = cluster.wait_leader()
    assert write(url, "before the failover") == port_of(cluster, first)

    # kill -9 the leader: Patroni and its postmaster
    killed = cluster.kill_leader()
    assert killed == first

    # the other member takes the leader key once the killed one's has expired
    second = cluster.wait_leader(exclude={killed})
    assert second != killed

    # the same URL now writes on the new leader (libpq skips the dead host), and the first row is there
    assert wait_until(lambda: write(url, "after the failover"), timeout=60, what="a write on the new leader") \
        == port_of(cluster, second)
    assert notes(url) == {"before the failover", "after the failover"}

    # the killed member comes back and streams from the new leader, which stays leader
    cluster.start_member(killed)
    cluster.wait_replicas_streaming()
    roles = {m["name"]: (m["role"], m["state"]) for m in cluster.members()}
    assert roles == {second: ("leader", "running"), killed: ("replica", "streaming")}

    # what the old leader had is on it too, read from it as a standby
    standby = cluster.url("standby")
    assert wait_until(lambda: notes(standby) == {"before the failover", "after the failover"}, timeout=60,
                      what="the rejoined replica to have both rows")


def test_every_url_form_reaches_the_leader(patroni_cluster: PatroniCluster) -> None:
    cluster = patroni_cluster
    leader = cluster.wait_leader()
    for form in ("hosts", "query"):  # libpq reads both itself
        url = cluster.url(form=form)
        assert write(url, f"through the {form} form") == port_of(cluster, leader), url.split("@")[1]
    # SQLAlchemy's repeated ?host=h:p form: only Safehold's URL reader takes it (libpq keeps the last host)
    conninfo = make_conninfo("", **dburl.conninfo(cluster.url(form="sqlalchemy")))
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        assert one(conn, "SELECT inet_server_port()") == port_of(cluster, leader)

    # the superuser reaches each member directly; Patroni's REST addresses answer
    for name in cluster.names:
        with psycopg.connect(cluster.superuser_url(name), autocommit=True, connect_timeout=5) as conn:
            in_recovery = one(conn, "SELECT pg_is_in_recovery()")
        assert in_recovery is (name != leader)
    assert len(cluster.rest_urls) == 2
