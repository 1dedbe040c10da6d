"""A database URL as an operator writes it, read the way libpq reads it — pure, no connection made.

Both multi-host forms are accepted, so that one URL names every member of an HA engine and libpq picks
the one that fits (``target_session_attrs=read-write`` for the writable one, ``standby`` for a replica):

- libpq's: ``postgresql://user:pw@host1:5432,host2:5433/safehold?target_session_attrs=read-write``
- SQLAlchemy's: ``postgresql://user:pw@/safehold?host=host1:5432&host=host2:5433&target_session_attrs=…``

:func:`conninfo` gives the connection parameters (psycopg takes them as they are), :func:`libpq_env` the
same as environment variables for the client tools (pg_dump, pg_restore: never a password on a command
line), :func:`describe` the hosts without user or password, for messages.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict

from safehold.errors import ConfigError

#: libpq's connection parameters that have an environment variable (PostgreSQL's documentation, "Environment
#: Variables"); a URL parameter outside this table cannot be handed to the client tools.
ENV_OF = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "channel_binding": "PGCHANNELBINDING",
    "service": "PGSERVICE", "options": "PGOPTIONS", "application_name": "PGAPPNAME", "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION", "sslcompression": "PGSSLCOMPRESSION", "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY", "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL", "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI", "requirepeer": "PGREQUIREPEER", "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION", "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME", "gsslib": "PGGSSLIB", "gssdelegation": "PGGSSDELEGATION",
    "connect_timeout": "PGCONNECT_TIMEOUT", "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "require_auth": "PGREQUIREAUTH",
}
SCHEMES = ("postgresql://", "postgres://")


def _bad(why: str) -> ConfigError:
    return ConfigError(f"database.url is not a usable PostgreSQL URL: {why}",
                       hint="e.g. postgresql://safehold:PASSWORD@db1:5432,db2:5432/safehold"
                            "?target_session_attrs=read-write")


def _split_host(value: str) -> tuple[str, str | None]:
    """``host:port`` (or ``[v6]:port``) of SQLAlchemy's ``?host=`` form."""
    if value.startswith("/"):  # a Unix socket directory
        return value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise _bad("an IPv6 host lacks its closing ']'")
        rest = value[end + 1:]
        return value[1:end], rest[1:] if rest.startswith(":") else None
    host, sep, port = value.rpartition(":")
    return (host, port) if sep and host else (value, None)


def normalise(url: str) -> str:
    """The URL in libpq's own form (SQLAlchemy's repeated ``?host=h:p`` turned into ``host=h1,h2&port=p1,p2``)."""
    if not url.startswith(SCHEMES):
        raise _bad("it must start with postgresql://")
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    hosts = [v for k, v in query if k == "host"]
    if len(hosts) <= 1 and not any(_split_host(h)[1] for h in hosts):
        return url
    if any(k == "port" for k, _ in query):
        raise _bad("give each host its port as host=name:port, or one port= list, not both")
    split = [_split_host(h) for h in hosts]
    rest = [(k, v) for k, v in query if k != "host"]
    rest += [("host", ",".join(h for h, _ in split)), ("port", ",".join(p or "5432" for _, p in split))]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest, quote_via=quote, safe=",/"),
                       parts.fragment))


def conninfo(url: str) -> dict[str, str]:
    """The connection parameters of ``url`` (raises ConfigError, never showing the URL: it may hold a password)."""
    try:
        params = conninfo_to_dict(normalise(url))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - psycopg's message may quote the URL, password included
        what = "an invalid parameter" if "invalid" in str(exc).lower() else "it cannot be parsed"
        raise _bad(what) from None
    hosts, ports = str(params.get("host", "")).split(","), str(params.get("port", "")).split(",")
    if params.get("port") and len(ports) not in (1, len(hosts)):
        raise _bad(f"{len(hosts)} hosts but {len(ports)} ports")
    for p in ports:
        if p and not (p.isdigit() and 0 < int(p) < 65536):
            raise _bad(f"invalid port number {p!r}")
    return {k: str(v) for k, v in params.items()}


def libpq_env(params: dict[str, str]) -> dict[str, str]:
    """The parameters as libpq environment variables, for pg_dump and pg_restore."""
    unknown = sorted(set(params) - set(ENV_OF))
    if unknown:
        raise ConfigError(f"database.url has parameters the PostgreSQL client tools cannot take from the "
                          f"environment: {', '.join(unknown)}")
    return {ENV_OF[k]: v for k, v in params.items()}


def hosts(params: dict[str, str]) -> list[tuple[str, int]]:
    """Each host with its port, in the URL's order (5432 where none is given)."""
    names = [h for h in params.get("host", "").split(",")] or [""]
    ports = params.get("port", "").split(",") if params.get("port") else []
    if len(ports) == 1:
        ports = ports * len(names)
    ports += ["5432"] * (len(names) - len(ports))
    return [(h or "localhost", int(p or 5432)) for h, p in zip(names, ports, strict=False)]


def describe(params: dict[str, str]) -> str:
    """Where the URL points, for messages: hosts, database, session kind; never the user's password."""
    where = ",".join(f"{h}:{p}" for h, p in hosts(params))
    attrs = params.get("target_session_attrs")
    return f"{where}/{params.get('dbname', '')}" + (f" ({attrs})" if attrs else "")


def with_session_attrs(url: str, attrs: str) -> str:
    """``url`` asking for another kind of session (``read-write``, ``standby``…)."""
    parts = urlsplit(normalise(url))
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "target_session_attrs"]
    query.append(("target_session_attrs", attrs))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote, safe=",/"),
                       parts.fragment))
