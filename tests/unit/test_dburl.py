"""Database URLs as operators write them for an HA engine: both multi-host forms, libpq's reading of them,
the client tools' environment, and errors that never show the password."""

from __future__ import annotations

import pytest

from safehold.errors import ConfigError
from safehold.storage import dburl
from safehold.storage.db import DbTarget

LIBPQ = "postgresql://safehold:s3cr%40t@db1:5432,db2:5433/safehold?target_session_attrs=read-write"
ALCHEMY = "postgresql://safehold:s3cr%40t@/safehold?host=db1:5432&host=db2:5433&target_session_attrs=read-write"


@pytest.mark.parametrize("url", [LIBPQ, ALCHEMY])
def test_both_multi_host_forms_read_the_same(url: str) -> None:
    params = dburl.conninfo(url)
    assert params == {"user": "safehold", "password": "s3cr@t", "dbname": "safehold", "host": "db1,db2",
                      "port": "5432,5433", "target_session_attrs": "read-write"}
    assert dburl.hosts(params) == [("db1", 5432), ("db2", 5433)]
    assert dburl.describe(params) == "db1:5432,db2:5433/safehold (read-write)"


@pytest.mark.parametrize(("url", "hosts"), [
    ("postgresql://u:p@db/x", [("db", 5432)]),
    ("postgres://u:p@db:6000/x", [("db", 6000)]),
    ("postgresql://u:p@/x?host=a&host=b:7000", [("a", 5432), ("b", 7000)]),
    ("postgresql://u:p@/x?host=[::1]:7000&host=[fd00::2]", [("::1", 7000), ("fd00::2", 5432)]),
    ("postgresql://u:p@/x?host=a,b&port=7000", [("a", 7000), ("b", 7000)]),
    ("postgresql://u:p@/x?host=/run/postgresql", [("/run/postgresql", 5432)]),
])
def test_hosts_and_ports(url: str, hosts: list[tuple[str, int]]) -> None:
    assert dburl.hosts(dburl.conninfo(url)) == hosts


@pytest.mark.parametrize(("url", "said"), [
    ("mysql://u:s3cret@db/x", "must start with postgresql://"),
    ("postgresql://u:s3cret@db:99999/x", "invalid port number '99999'"),
    ("postgresql://u:s3cret@/x?host=a:1&host=b:2&port=3", "not both"),
    ("postgresql://u:s3cret@/x?host=a,b,c&port=1,2", "3 hosts but 2 ports"),
    ("postgresql://u:s3cret@/x?host=[::1:5432", "closing"),
    ("postgresql://u:s3cret@db/x?nonsense=1", "invalid parameter"),
])
def test_a_bad_url_is_refused_without_showing_its_password(url: str, said: str) -> None:
    with pytest.raises(ConfigError) as err:
        dburl.conninfo(url)
    assert said in err.value.message
    assert "s3cret" not in err.value.message and "s3cret" not in str(err.value.hint)


def test_the_client_tools_get_the_url_as_environment_variables() -> None:
    env = DbTarget("", 0, "", "", "", None, url=ALCHEMY + "&sslmode=verify-full&sslrootcert=/etc/ca.crt").libpq_env()
    assert env == {"PGUSER": "safehold", "PGPASSWORD": "s3cr@t", "PGDATABASE": "safehold", "PGHOST": "db1,db2",
                   "PGPORT": "5432,5433", "PGTARGETSESSIONATTRS": "read-write", "PGSSLMODE": "verify-full",
                   "PGSSLROOTCERT": "/etc/ca.crt"}


def test_a_target_never_shows_its_password() -> None:
    target = DbTarget("", 0, "", "", "", None, url=LIBPQ)
    assert "s3cr" not in repr(target) and "s3cr" not in target.where()
    assert target.where() == "db1:5432,db2:5433/safehold (read-write)"


def test_asking_for_another_kind_of_session() -> None:
    ro = dburl.with_session_attrs(ALCHEMY, "standby")
    assert dburl.conninfo(ro)["target_session_attrs"] == "standby"
    assert dburl.conninfo(ro)["host"] == "db1,db2" and dburl.conninfo(ro)["password"] == "s3cr@t"
    assert dburl.conninfo(dburl.with_session_attrs("postgresql://u:p@db/x", "read-write"))[
        "target_session_attrs"] == "read-write"
