"""Per-server configuration: ``safehold.toml`` in the data directory.

Every value may be overridden by an environment variable: ``SAFEHOLD_``, then the key's path with each
dot written as two underscores, at any depth (``SAFEHOLD_HTTP__PORT=9443`` for ``http.port``,
``SAFEHOLD_HA__FAILOVER__ENABLED=true`` for ``enabled`` in ``[ha.failover]``).  pydantic-settings reads
them and the file (:func:`load_settings`): the environment wins over the file, the file over the
defaults.  A list is given as JSON (``'["a", "b"]'``); ``ha.patroni_urls`` and
``ha.failover.witness_targets`` also take items separated by commas.  Names are case-insensitive after
the prefix.  A variable with two underscores that names no section or key is refused, as an unknown key
in the file is; ``SAFEHOLD_`` variables without them (``SAFEHOLD_DATA_DIR``, ``SAFEHOLD_LOG_LEVEL``,
those an event script gets) are other code's and ignored here.

Relative paths are relative to the data directory.  Validation errors name the offending key, and the
variable it came from, and never echo its value (a database URL may hold a password).  Overrides are
never written back: the commands that rewrite the file read it with ``env={}`` first.
"""

from __future__ import annotations

import json
import os
import tomllib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import tomli_w
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from safehold.alerts_config import AlertsSection
from safehold.domain import ServerRole
from safehold.errors import ConfigError
from safehold.files import write_atomic

CONFIG_NAME = "safehold.toml"
ENV_PREFIX = "SAFEHOLD_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _listed(v: Any) -> Any:
    """A list given as one string (an environment variable, or one address in the file): a JSON array, or
    items separated by commas."""
    if not isinstance(v, str):
        return v
    if v.lstrip().startswith("["):
        try:
            return json.loads(v)
        except ValueError:
            raise ValueError("must be a JSON list, or items separated by commas") from None
    return [part.strip() for part in v.split(",") if part.strip()]


#: a list of strings that an environment variable may give as "a,b" too (NoDecode: pydantic-settings leaves
#: the string to :func:`_listed` instead of requiring JSON)
StrList = Annotated[list[str], NoDecode, BeforeValidator(_listed)]


class ServerSection(_Section):
    id: str
    name: str = Field(min_length=1, max_length=100)
    role: ServerRole = ServerRole.STANDALONE

    @field_validator("id")
    @classmethod
    def _uuid(cls, v: str) -> str:
        uuid.UUID(v)
        return v


class HttpSection(_Section):
    listen: str = "127.0.0.1"
    port: int = Field(default=8443, ge=1, le=65535)
    tls_cert: Path = Path("tls/server.crt")
    tls_key: Path = Path("tls/server.key")
    tls_ca: Path = Path("tls/ca.crt")
    public_url: str | None = None
    # worker processes sharing the port (see web.supervisor); unset: one per CPU (``processes``)
    workers: int | None = Field(default=None, ge=1, le=64)
    # the largest request body accepted (the CSV import has its own, larger limit); refused before reading
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=1024**3)
    # the Vault-compatible API's KV version 2 mount: /v1/<vault_mount>/data/<resource>/<account> (docs/VAULT-API.md)
    vault_mount: str = Field(default="safehold", max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

    @property
    def processes(self) -> int:
        """How many worker processes ``workers`` asks for: as set, else one per CPU (at most 64)."""
        return self.workers if self.workers is not None else max(1, min(64, os.cpu_count() or 1))


class DatabaseSection(_Section):
    # bundled: this server runs its own PostgreSQL (a primary, or a read-only server's replica);
    # remote: another Safehold server's bundled PostgreSQL (a secondary's view of the primary);
    # external: any PostgreSQL given by ``url``.
    mode: Literal["bundled", "remote", "external"] = "bundled"
    url: str | None = Field(default=None, repr=False)  # may hold a password
    # external, on a read-only server whose url leads to a replica: where the writable database is, to ship the
    # audit spool (None: the same URL asking for target_session_attrs=read-write)
    primary_url: str | None = Field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = Field(default=5433, ge=1, le=65535)
    name: str = "safehold"
    user: str = "safehold"
    password_file: Path = Path("secrets/db_password")
    superuser: str = "safehold_admin"
    superuser_password_file: Path = Path("secrets/db_superuser_password")
    bin_dir: Path | None = None
    data_dir: Path = Path("pg")
    pool_size: int = Field(default=20, ge=2, le=200)
    # a database call (a request's reads, or its whole transaction) that has no answer for this long is
    # abandoned with a 503 and the pool's connections are replaced: a frozen database host (its
    # connections open, nothing answering) must not hold the app server once the database failed over
    operation_timeout: float = Field(default=20.0, ge=1, le=3600)
    # a new connection gives up on a host that does not answer within this (each host of a multi-host URL;
    # the operation timeout is stretched to try them all)
    connect_timeout: float = Field(default=5.0, ge=1, le=60)
    # 'safehold serve' waits this long for a database that does not answer yet (another server's, or an
    # engine's, starting at the same moment) before it gives up; 0: no wait
    connect_wait: float = Field(default=60.0, ge=0, le=3600)

    @field_validator("url", "primary_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v


class SecuritySection(_Section):
    key_file: Path = Path("safehold.key")
    lockout_threshold: int = Field(default=5, ge=1, le=100)
    lockout_minutes: int = Field(default=15, ge=1, le=24 * 60)
    session_idle_minutes: int = Field(default=30, ge=1, le=24 * 60)
    session_max_hours: int = Field(default=12, ge=1, le=24 * 30)


class FailoverSection(_Section):
    """Automatic failover (opt-in): a read-only server pings the primary (app and database) every
    ``ping_interval`` seconds and promotes itself after ``ping_iterations`` consecutive failures, unless
    its gateway and every witness target are unreachable too (then the fault is on its own side)."""

    enabled: bool = False
    ping_interval: float = Field(default=15.0, ge=1, le=3600)
    ping_iterations: int = Field(default=12, ge=2, le=20)
    # hosts ("host" for an ICMP ping, "host:port" for a TCP connect) that tell this server's own side of
    # the network is up; at most 3, unique, none of them one of the cluster's own servers
    witness_targets: StrList = Field(default_factory=list, max_length=3)
    # the gateway to check too ("host" or "host:port"); None: the default route's gateway, if any
    gateway: str | None = None
    # whether this server may become the primary at all (by automatic failover)
    may_promote: bool = True
    # the lag guard: promote only if, when this server last heard from the primary, its replica was
    # streaming and had received all but at most this many bytes of the primary's WAL
    max_lag_bytes: int = Field(default=1024 * 1024, ge=0, le=1024**4)


MAX_PATRONI_URLS = 9


def rest_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable REST address (http or https, a host, no user or password in it)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not hold a user name or password"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


class HaSection(_Section):
    """High availability: set by 'safehold ha ...' commands; a standalone server leaves it empty."""

    cluster_id: str | None = None
    # the primary database, as the read-only server reaches it to ship its audit spool
    primary_db_host: str | None = None
    primary_db_port: int | None = Field(default=None, ge=1, le=65535)
    check_interval: float = Field(default=2.0, ge=0.2, le=60)
    peer_timeout: float = Field(default=2.0, ge=0.2, le=60)
    status_confirm_checks: int = Field(default=3, ge=1, le=100, description=(
        "Hysteresis of the HA monitor: a new HA status, replication status or server state (active/inactive) "
        "is logged as an event and alerted only once this many consecutive checks (one every check_interval) "
        "saw it, so a link that flaps for a few seconds raises no alert; 1 reports every change at once. "
        "The status API and 'safehold ha status' show the latest check beside the confirmed status."))
    # the write lease: a primary or secondary acknowledges a write only while its last confirmation
    # that it is still the cluster's writer is younger than this (see docs/HA.md, "What Safehold
    # guarantees"); it must be longer than check_interval and shorter than any standby's automatic
    # failover threshold (ping_interval x ping_iterations); unset: 10 s with the defaults (see write_lease)
    write_lease_seconds: float | None = Field(default=None, ge=0.4, le=600)
    lag_threshold_seconds: float = Field(default=30.0, ge=1, le=86400)
    lag_threshold_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # 'safehold ha promote' refuses a replica that heard from its primary longer ago than this (--force)
    promote_max_data_age: float = Field(default=3600.0, ge=0, le=365 * 86400)
    # synchronous mode: a commit on the primary is acknowledged once a read-only replica has it too;
    # after ``sync_degrade_after`` seconds without one the primary degrades to asynchronous (RaiseAlarm)
    synchronous: bool = False
    sync_degrade_after: float = Field(default=30.0, ge=1, le=86400)
    failover: FailoverSection = FailoverSection()
    # an external HA engine's REST API (Patroni): its members are shown beside the app servers, and a leader
    # change or a member going down raises the HA events; ``patroni_url`` in the file takes one address or a
    # list, an environment variable a comma-separated list
    patroni_urls: StrList = Field(default_factory=list, max_length=MAX_PATRONI_URLS)
    # the CA that Patroni's REST certificate is issued by, when it serves HTTPS (None: the system's CAs)
    patroni_ca: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _patroni_url(cls, data: Any) -> Any:
        """``patroni_url`` is another spelling of ``patroni_urls``."""
        if isinstance(data, dict) and "patroni_url" in data:
            data = dict(data)
            value = data.pop("patroni_url")
            if "patroni_urls" in data and data["patroni_urls"] != value:
                raise ValueError("give ha.patroni_url or ha.patroni_urls, not both")
            data["patroni_urls"] = value
        return data

    @field_validator("patroni_urls")
    @classmethod
    def _patroni_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            problem = rest_url_problem(url)
            if problem:
                raise ValueError(problem)
        if len(set(v)) != len(v):
            raise ValueError("an address is listed twice")
        return v

    @property
    def write_lease(self) -> float:
        """The write lease in seconds: ``write_lease_seconds``, else the larger of 5 x ``check_interval`` and
        3 x ``check_interval`` + ``peer_timeout`` (10 s with the defaults)."""
        if self.write_lease_seconds is not None:
            return self.write_lease_seconds
        return max(5 * self.check_interval, 3 * self.check_interval + self.peer_timeout)

    @model_validator(mode="after")
    def _lease(self) -> HaSection:
        problem = lease_problem(self.write_lease, self.check_interval, self.failover, self.peer_timeout)
        if problem:
            raise ValueError(problem)
        return self


def lease_problem(lease: float, check_interval: float, failover: FailoverSection,
                  peer_timeout: float = 0.0) -> str | None:
    """Why a write lease does not fit: it must outlast a heartbeat cycle, even one that waits the whole
    peer timeout for a hung peer (so that normal operation renews it), and end before a standby with
    automatic failover could promote itself."""
    least = 2 * check_interval + peer_timeout
    if lease < least:
        return (f"write_lease_seconds ({lease:g}) must be at least 2 x check_interval + peer_timeout ({least:g}): "
                "the heartbeat renews the lease every check_interval, and asking a hung peer takes up to "
                "peer_timeout")
    threshold = failover.ping_interval * failover.ping_iterations
    if failover.enabled and lease >= threshold:
        return (f"write_lease_seconds ({lease:g}) must be shorter than the automatic failover threshold "
                f"(ping_interval x ping_iterations = {threshold:g} s): otherwise a frozen primary could still "
                "acknowledge writes after this standby promoted itself")
    return None


class BackupSection(_Section):
    """Scheduled backups, made by whichever primary/secondary holds the schedules lease."""

    every_minutes: float = Field(default=1440, ge=0, le=7 * 24 * 60)  # 0: no scheduled backups
    directory: Path = Path("backups")
    keep: int = Field(default=7, ge=1, le=1000)


# --- [audit]: audit sinks (docs/AUDIT-STREAMING.md) -------------------------------------------------------------

#: The keys each kind of audit sink takes besides the common ones, and those it requires.
AUDIT_SINK_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "syslog": (frozenset({"host", "port", "ca_file", "facility", "app_name"}), frozenset({"host"})),
    "file": (frozenset({"path"}), frozenset({"path"})),
    "webhook": (frozenset({"url", "ca_file", "secret_file"}), frozenset({"url"})),
}


class AuditSinkSection(_Section):
    """One ``[[audit.sinks]]``: where every audit record is delivered, in order, at least once (see
    safehold.audit.delivery).  ``fail_closed``: audited actions are refused while it cannot take records."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: Literal["syslog", "file", "webhook"]
    fail_closed: bool = False
    max_lag: int = Field(default=1000, ge=1, le=10_000_000)  # fail_closed: records behind before refusing
    start: Literal["now", "beginning"] = "now"  # a new sink's first record: the next one, or the oldest
    batch: int = Field(default=500, ge=1, le=10_000)  # records per delivery
    timeout: float = Field(default=10.0, gt=0, le=300)
    retry_initial: float = Field(default=1.0, gt=0, le=3600)  # back-off after a failed delivery, doubled
    retry_max: float = Field(default=30.0, gt=0, le=3600)  # each time up to this
    host: str | None = Field(default=None, min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.:%-]+$")
    port: int | None = Field(default=None, ge=1, le=65535)  # syslog: 6514 (RFC 5425's port for syslog over TLS)
    ca_file: Path | None = None  # the CA the receiver's certificate is checked against (None: the system's)
    facility: str | None = None  # syslog: authpriv
    app_name: str | None = Field(default=None, min_length=1, max_length=48, pattern=r"^[!-~]+$")  # syslog: safehold
    path: Path | None = None
    url: str | None = Field(default=None, repr=False)  # the path may hold a token
    secret_file: Path | None = None  # signs each batch (X-Safehold-Signature), as the alert webhook does

    @field_validator("facility")
    @classmethod
    def _facility(cls, v: str | None) -> str | None:
        from safehold.alerts_config import SYSLOG_FACILITIES

        if v is not None and v not in SYSLOG_FACILITIES:
            raise ValueError("must be one of " + ", ".join(SYSLOG_FACILITIES))
        return v

    @field_validator("url")
    @classmethod
    def _https(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise ValueError("must be an https:// URL") from None
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL (the records travel over TLS)")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold a user name or password (sign the batches with secret_file)")
        return v

    @model_validator(mode="after")
    def _keys_of_kind(self) -> AuditSinkSection:
        allowed, required = AUDIT_SINK_KEYS[self.kind]
        given = self.model_fields_set & set().union(*(keys for keys, _ in AUDIT_SINK_KEYS.values()))
        if given - allowed:
            raise ValueError(f"sink '{self.name}': {', '.join(sorted(given - allowed))} is not a key of a "
                             f"{self.kind} sink (it takes {', '.join(sorted(allowed))})")
        missing = sorted(k for k in required if getattr(self, k) is None)
        if missing:
            raise ValueError(f"sink '{self.name}': a {self.kind} sink needs {', '.join(missing)}")
        if self.retry_max < self.retry_initial:
            raise ValueError(f"sink '{self.name}': retry_max must be at least retry_initial")
        return self

    @property
    def syslog(self) -> tuple[str, int, str, str]:
        """A syslog sink's host, port, facility and app name, with their defaults."""
        return self.host or "", self.port or 6514, self.facility or "authpriv", self.app_name or "safehold"


class AuditSection(_Section):
    """Audit streaming: the sinks every record goes to, delivered by the schedules-lease holder every
    ``interval`` seconds."""

    interval: float = Field(default=1.0, ge=0.1, le=60)
    sinks: list[AuditSinkSection] = Field(default_factory=list, max_length=16)

    @field_validator("sinks")
    @classmethod
    def _unique(cls, v: list[AuditSinkSection]) -> list[AuditSinkSection]:
        names = [s.name for s in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two sinks are named {', '.join(twice)}: each needs a name of its own (its cursor "
                             "in the database is kept by name)")
        return v

    @property
    def fail_closed(self) -> list[AuditSinkSection]:
        return [s for s in self.sinks if s.fail_closed]


class LogSection(_Section):
    """How 'safehold serve' logs (to standard error: the journal under systemd; see docs/OPERATIONS.md).
    The environment variable SAFEHOLD_LOG_LEVEL, when set, wins over ``level`` (safehold.logs reads it; it is
    not an override of this file, which would be SAFEHOLD_LOG__LEVEL)."""

    format: Literal["text", "json"] = "text"  # json: one object a line (safehold.logs)
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "WARNING"

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v


class Settings(_Section):
    server: ServerSection
    http: HttpSection = HttpSection()
    database: DatabaseSection = DatabaseSection()
    security: SecuritySection = SecuritySection()
    ha: HaSection = HaSection()
    backup: BackupSection = BackupSection()
    alerts: AlertsSection = AlertsSection()
    log: LogSection = LogSection()
    audit: AuditSection = AuditSection()  # audit sinks (docs/AUDIT-STREAMING.md)
    data_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _engine(self) -> Settings:
        if self.ha.patroni_urls and self.database.mode != "external":
            raise ValueError("ha.patroni_urls is for a database that an HA engine runs (database.mode = "
                             "\"external\")")
        return self

    def path(self, p: Path) -> Path:
        """Resolve a configured path against the data directory."""
        return p if p.is_absolute() else self.data_dir / p

    @property
    def key_file(self) -> Path:
        return self.path(self.security.key_file)

    @property
    def pg_data_dir(self) -> Path:
        return self.path(self.database.data_dir)

    def read_secret(self, p: Path) -> str:
        path = self.path(p)
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(f"secret file {path} is missing") from None


# --- loading: the file and the environment, through pydantic-settings ---------------------------------------------

def override_names(environ: Mapping[str, str]) -> list[str]:
    """The variables of ``environ`` that override settings: ``SAFEHOLD_`` and a key path with ``__`` (pure).
    A ``SAFEHOLD_`` variable without one is not a setting (``SAFEHOLD_DATA_DIR``, ``SAFEHOLD_LOG_LEVEL``,
    ``SAFEHOLD_SERVER`` in an event script's environment) and is left alone, whatever field it seems to name."""
    return [name for name in environ if name.startswith(ENV_PREFIX) and "__" in name[len(ENV_PREFIX):]]


def _key_path(variable: str) -> tuple[str, ...]:
    """SAFEHOLD_HA__FAILOVER__ENABLED -> ("ha", "failover", "enabled")."""
    return tuple(variable[len(ENV_PREFIX):].lower().split("__"))


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over the overrides of a given mapping (``{}`` reads the file
    alone), nested at any depth by ``__``, their names spelled as it matches them (the prefix, then lower
    case).  A variable naming no section is kept, for validation to refuse as an unknown key
    (pydantic-settings would drop it silently: a typo would go unnoticed)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {ENV_PREFIX + "__".join(_key_path(name)): environ[name] for name in override_names(environ)}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        """A list or a section is given as JSON; a value that is not JSON is kept as given, so that validation
        names its key and variable (pydantic-settings would stop with an error naming neither)."""
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        for name, value in self.env_vars.items():
            section, _, rest = name[len(ENV_PREFIX):].partition("__")
            if section not in self.settings_cls.model_fields:
                values.setdefault(section, {})[rest] = value
        return values


class _FileAndEnvironment(BaseSettings, Settings):
    """:class:`Settings` as pydantic-settings builds it from its sources.  :func:`load_settings` hands back a
    plain :class:`Settings`: the class that 'safehold init' and the joins build by hand must read nothing from
    the environment (it would be written into the file)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=True,
                                      extra="forbid", frozen=True)

    def __init__(self, data_dir: Path, environ: Mapping[str, str]) -> None:
        """Read the sources, the first winning: ``data_dir`` itself (one in the file is not taken), the
        environment's overrides, the file; the defaults fill the rest."""
        cls = type(self)
        super().__init__(_build_sources=((InitSettingsSource(cls, {"data_dir": data_dir}), _Environment(cls, environ),
                                          TomlConfigSettingsSource(cls, toml_file=data_dir / CONFIG_NAME)), {}))


def override_behind(loc: tuple[int | str, ...], kind: str, variables: Iterable[str]) -> list[str]:
    """The override variables that gave the value at ``loc`` (pure): the one whose key path holds it (the key
    itself, or a list or section given whole as JSON), else, for an unknown key or a value of the wrong type,
    those that made it (``SAFEHOLD_HTPP__PORT`` makes a section ``htpp``).  A check across a section's keys
    is put on no variable: the keys its message names may come from the file."""
    paths = {name: _key_path(name) for name in variables}
    holding = [name for name, path in paths.items() if loc[:len(path)] == path]
    if holding:
        return [max(holding, key=lambda name: len(paths[name]))]
    if loc and kind != "value_error":
        return sorted(name for name, path in paths.items() if path[:len(loc)] == loc)
    return []


def describe_validation_error(exc: ValidationError, source: str, variables: Sequence[str] = ()) -> str:
    """One line an error, naming the key and the override variable it came from (``variables``: the names
    of those in effect).  Never a value: pydantic's ``input`` is left out (a database URL may hold a
    password), and its messages say what is expected, not what was given."""
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors(include_url=False, include_input=False):
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        behind = override_behind(err["loc"], err["type"], variables)
        if behind:
            key += f" (from {', '.join(behind)})"
        # (a check across sections has no key of its own: its message names the keys)
        lines.append(f"  {key}: {msg}" if key else f"  {str(msg).removeprefix('Value error, ')}")
    return "\n".join(lines)


#: The keys that say where a server's database is, by ``database.mode``: their defaults would point it at
#: another database (the bundled one's port is chosen free at 'safehold init'), so the file (or an
#: environment override) must give them.
REQUIRED_DATABASE_KEYS: dict[str, tuple[str, ...]] = {
    "bundled": ("port",),
    "remote": ("host", "port"),
    "external": ("url",),
}


def missing_keys(raw: Mapping[str, Any]) -> list[str]:
    """The required keys that ``raw`` (the file with the environment's overrides) leaves out, as
    ``section.key`` (pure).  A mode that is not known is left to validation to name."""
    database = raw.get("database")
    section: Mapping[str, Any] = database if isinstance(database, Mapping) else {}
    mode = section.get("mode", "bundled")
    required = REQUIRED_DATABASE_KEYS.get(mode, ()) if isinstance(mode, str) else ()
    return [f"database.{key}" for key in required if section.get(key) in (None, "")]


def load_settings(data_dir: Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``safehold.toml`` from ``data_dir`` with the overrides of ``env`` (the process environment when
    None; ``{}``: the file alone, as the commands that rewrite it read it), through pydantic-settings
    (:class:`_FileAndEnvironment`)."""
    data_dir = data_dir.resolve()
    path = data_dir / CONFIG_NAME
    if not path.exists():
        raise ConfigError(
            f"no {CONFIG_NAME} in {data_dir}",
            hint=f"run 'safehold init --data-dir {data_dir}' first",
        )
    environ = os.environ if env is None else env
    try:
        loaded = _FileAndEnvironment(data_dir, environ)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, str(path), override_names(environ))) from None
    missing = missing_keys(loaded.model_dump(exclude_unset=True))
    if missing:
        raise ConfigError(
            f"{path} does not say where this server's database is: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing (database.mode = \"{loaded.database.mode}\")",
            hint=f"add {' and '.join(k.partition('.')[2] for k in missing)} to its [database] section (the file "
                 "'safehold init' or 'safehold join' wrote has them), or set "
                 + " and ".join(f"{ENV_PREFIX}{k.upper().replace('.', '__')}" for k in missing))
    return Settings.model_construct(_fields_set=loaded.model_fields_set,
                                    **{name: getattr(loaded, name) for name in Settings.model_fields})


def write_settings(settings: Settings) -> Path:
    """Write the configuration file (atomically) and return its path."""
    data = settings.model_dump(mode="json", exclude_none=True)
    path = settings.data_dir / CONFIG_NAME
    text = "# Safehold server configuration. See 'safehold --help'.\n" + tomli_w.dumps(data)
    write_atomic(path, text.encode(), mode=0o600)
    return path
