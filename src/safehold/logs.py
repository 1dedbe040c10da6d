"""Log lines for the operator's tooling: text or JSON, with the server, its role and the request answered.

Every process of a server (the ``serve`` process, its workers) logs to standard error — the journal, under
systemd — through the one handler that :func:`setup` puts on the root logger:

- ``text`` (the default): ``time LEVEL logger: message``, and ``[request <id>]`` while a request is answered;
- ``json``: one JSON object a line with ``time``, ``level``, ``logger``, ``message``, ``server``, ``role``,
  ``request_id`` and ``pid``; a traceback is the ``exception`` field (JSON escapes its line breaks, so a
  record is always one line).

The level comes from ``SAFEHOLD_LOG_LEVEL`` when it is set (it predates the settings file's ``[log]``
section and keeps working), else from ``log.level``, else WARNING.  Libraries whose debug and info lines
carry data — SQL parameters, HTTP headers, webhook URLs with their tokens — stay at WARNING whatever the
level: a password vault never logs them (:data:`QUIET`).

The request id is a context variable: the web layer sets it for each request it answers, so every line
logged while answering it, in any module, carries it.  It lives here, below every layer, so that any layer
may log with it; this module imports nothing of Safehold.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import IO, Any

LEVEL_ENV = "SAFEHOLD_LOG_LEVEL"
#: the settings file's [log] keys as environment overrides (safehold.config's rule), read before the file is
FORMAT_OVERRIDE, LEVEL_OVERRIDE = "SAFEHOLD_LOG__FORMAT", "SAFEHOLD_LOG__LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
DEFAULT_LEVEL = "WARNING"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_suffix)s"

#: loggers of libraries whose debug or info lines can carry data: SQLAlchemy logs every statement with its
#: parameters (ciphertexts, hashes, names) at INFO; httpx and httpcore log URLs (a webhook's token) and
#: headers; hpack and multipart log header and form fields.  They stay at WARNING whatever the level.
QUIET = ("sqlalchemy", "httpx", "httpcore", "hpack", "multipart", "python_multipart", "urllib3")

REQUEST_ID_HEADER = "X-Request-Id"
#: a request id taken from the client: at most this long, of these characters (a UUID, a trace id, a
#: proxy's id), else a new one is made: nothing a client sends reaches a log line unbounded or unescaped
MAX_REQUEST_ID = 128
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]*")

#: the id of the request this task answers (None outside a request)
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("safehold_request_id", default=None)

Identity = Callable[[], tuple[str | None, str | None]]
_identity: Identity = lambda: (None, None)  # noqa: E731 - replaced by identify()
_MARK = "_safehold_handler"


# --- pure ------------------------------------------------------------------------------------------------

def sane_request_id(value: str | None) -> bool:
    """Whether a client's request id may be kept: bounded, and of a charset that needs no escaping."""
    return value is not None and 0 < len(value) <= MAX_REQUEST_ID and _SANE_ID.fullmatch(value) is not None


def request_id_for(header: str | None, *, new: Callable[[], str] = lambda: uuid.uuid4().hex) -> str:
    """The id of a request: the client's ``X-Request-Id`` when it is sane, else a new one."""
    return header if header is not None and sane_request_id(header) else new()


def resolve_level(env: Mapping[str, str], configured: str | None) -> tuple[str, str | None]:
    """The level to log at, and a complaint about ``SAFEHOLD_LOG_LEVEL`` when it is set but is no level
    (then the configured level is used).  The environment wins over the settings file, as it always has."""
    wanted = env.get(LEVEL_ENV, "").strip().upper()
    fallback = (configured or DEFAULT_LEVEL).upper()
    if not wanted:
        return fallback, None
    if wanted in LEVELS:
        return wanted, None
    return fallback, (f"{LEVEL_ENV} is not a log level (one of {', '.join(LEVELS)}): logging at {fallback} "
                      "instead")


def json_line(record: logging.LogRecord, exception: str | None) -> str:
    """One record as one line of JSON (its fields set by :class:`_Context`)."""
    body: dict[str, Any] = {
        "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "logger": record.name,
        "message": record.getMessage(),
        "server": getattr(record, "server", None),
        "role": getattr(record, "role", None),
        "request_id": getattr(record, "request_id", None),
        "pid": record.process,
    }
    if exception:
        body["exception"] = exception
    return json.dumps(body, ensure_ascii=False, default=str)


# --- the handler ------------------------------------------------------------------------------------------

class _Context(logging.Filter):
    """Adds the server, its role (read at each record: a promotion changes it) and the request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.server, record.role = _identity()
        except Exception:  # noqa: BLE001 - a log line is never lost to its decoration
            record.server, record.role = None, None
        rid = request_id.get()
        record.request_id = rid
        record.request_suffix = f" [request {rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        exception = None
        if record.exc_info:
            exception = self.formatException(record.exc_info)
        elif record.exc_text:
            exception = record.exc_text
        if record.stack_info:
            stack = self.formatStack(record.stack_info)
            exception = f"{exception}\n{stack}" if exception else stack
        return json_line(record, exception)


def formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup(fmt: str = "text", level: str = DEFAULT_LEVEL, *, stream: IO[str] | None = None) -> logging.Handler:
    """Make the root logger write ``fmt`` lines at ``level`` to ``stream`` (standard error).  Called again
    (once the settings file is read), it replaces its own handler; handlers others added are kept."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()  # (a StreamHandler leaves its stream open)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _MARK, True)
    handler.addFilter(_Context())
    handler.setFormatter(formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)  # Python's warnings become records too: no plain lines among JSON ones
    return handler


def setup_from(env: Mapping[str, str], fmt: str | None = None, configured_level: str | None = None) -> None:
    """:func:`setup` with the level :func:`resolve_level` picks, saying so when ``SAFEHOLD_LOG_LEVEL`` is
    not a level.  Before a settings file is read (``fmt`` and ``configured_level`` None), the environment's
    overrides of the ``[log]`` section (``SAFEHOLD_LOG__FORMAT``, ``SAFEHOLD_LOG__LEVEL``) stand in for it."""
    if fmt is None:
        fmt = env.get(FORMAT_OVERRIDE, "").strip().lower()
        fmt = fmt if fmt in FORMATS else "text"
    if configured_level is None:
        wanted = env.get(LEVEL_OVERRIDE, "").strip().upper()
        configured_level = wanted if wanted in LEVELS else None
    level, complaint = resolve_level(env, configured_level)
    setup(fmt, level)
    if complaint:
        logging.getLogger(__name__).warning("%s", complaint)


def identify(source: Identity) -> None:
    """Where each record's ``server`` and ``role`` come from: ``source()`` is called for every record (a
    running server hands in its runtime's identity, which a promotion replaces)."""
    global _identity
    _identity = source
