"""``safehold ha …``: set up and watch the high-availability topology."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from safehold.cli.common import DataDir, err, ha_app, out, read_passphrase  # noqa: F401 - re-exported
from safehold.cli.layout import print_json, print_rows, when
from safehold.ha.setupfile import peek_kind

Json = Annotated[bool, typer.Option("--json", help="Print the status as JSON (the keys of GET /api/v1/ha/status).")]


@ha_app.command()
def status(data_dir: DataDir, as_json: Json = False) -> None:
    """The cluster as this server sees it: servers, databases, HA and replication status."""
    from safehold.cli.context import with_runtime
    from safehold.ha.status import cluster_status

    st = with_runtime(data_dir, lambda rt: cluster_status(rt, ask_self=True))
    if as_json:
        print_json(st)
        return
    fence = st.get("fence")
    if fence:
        err.print(Text.assemble(
            ("FENCED", "bold red"), f": {fence['acting_primary_name']} ({fence['acting_primary_url']}) is the acting "
            f"primary since generation {fence['generation']}; this server refuses every change. Rejoin it: "
            f"safehold ha rejoin --data-dir {data_dir} --from {fence['acting_primary_url']}"), soft_wrap=True)
    out.print(f"Cluster {st['cluster_id']}, generation {st['generation']}", highlight=False, markup=False)
    print_rows(out, "Servers", ("name", "role", "status", "url", "sessions", "last seen", "id"),
               [(s["name"], s["role"], _server_status(s), s["url"] or "-", str(s["sessions"]),
                 when(s["last_seen"]), s["id"]) for s in st["servers"]])
    print_rows(out, "Databases", ("host", "port", "role", "servers configured", "servers active"),
               [(str(db["host"]), str(db["port"]), db["role"], str(db["servers_configured"]),
                 str(db["servers_active"])) for db in st["databases"]])
    inputs = [(s["name"], i) for s in st["servers"] for i in s.get("failover_inputs") or ()]
    if inputs:
        states = {True: Text("reachable", "green"), False: Text("UNREACHABLE", "bold red"), None: Text("unknown")}
        print_rows(out, "Automatic failover: gateway and witnesses", ("server", "kind", "target", "state", "since"),
                   [(name, i["kind"], i["target"], states[i["reachable"]],
                     when(dt.datetime.fromtimestamp(i["since"], dt.UTC).isoformat()) if i["since"] else "-")
                    for name, i in inputs])
    engine = st.get("engine")
    if engine and not engine["reachable"]:
        err.print(Text.assemble(("HA engine unreachable", "bold red"), f": {engine['error']}"), soft_wrap=True)
    elif engine:
        print_rows(out, f"Engine members (Patroni, scope {engine['scope'] or '?'})",
                   ("name", "role", "state", "host:port", "timeline", "lag (bytes)"),
                   [(m["name"], m["role"], Text(m["state"], "green" if m["state"] in ("running", "streaming")
                                                else "red"),
                     f"{m['host']}:{m['port'] or '?'}", "-" if m["timeline"] is None else str(m["timeline"]),
                     "-" if m["lag"] is None else str(m["lag"])) for m in engine["members"]])
    for line in status_lines(st):
        out.print(line, soft_wrap=True)
    for alarm in st.get("alarms", []):
        out.print(Text.assemble(("ALARM", "bold red"), f" {alarm['condition']} on {alarm['server']}: "
                                f"{alarm['message']}"), soft_wrap=True)


def _server_status(s: dict[str, Any]) -> Text:
    """A server's status now, and the confirmed one when the HA monitor has not confirmed it yet."""
    text = Text(s["status"], "green" if s["status"] == "active" else "red")
    confirmed = s.get("confirmed_status")
    if confirmed and confirmed != s["status"]:
        text.append(f" (latest check; confirmed: {confirmed})")
    return text


def _health(live: str | None, confirmed: dict[str, Any] | None, key: str) -> str:
    """A status as the latest check saw it, with the confirmed one (what was logged and alerted) when it differs."""
    if live is None:
        return "n/a (no read-only server)"
    held = confirmed.get(key) if confirmed else None
    if confirmed is None or held == live:
        return live
    checks = confirmed.get("confirm_checks")
    return f"{held or 'not confirmed yet'}, latest check {live} (a change counts after {checks} checks in a row)"


def status_lines(st: dict[str, Any]) -> list[Text]:
    """The HA and replication status, lag and audit backlog, in words (nothing shown as "None")."""
    confirmed = st.get("confirmed")
    lag_bytes, lag_seconds = st.get("replication_lag_bytes"), st.get("replication_lag_seconds")
    if st["ha_status"] is None and lag_bytes is None and lag_seconds is None:
        lag = "no replica"
    else:
        known = [f"{lag_bytes} bytes" if lag_bytes is not None else "", f"{lag_seconds:g} s" if lag_seconds is not None
                 else ""]
        lag = ", ".join(k for k in known if k) or "unknown"
    lines = [Text(f"HA status: {_health(st['ha_status'], confirmed, 'ha_status')}"),
             Text(f"Replication status: {_health(st['replication_status'], confirmed, 'replication_status')}"),
             Text(f"Replication lag: {lag}")]
    backlog = st["audit_backlog"]
    lines.append(Text(f"Audit backlog: {backlog_words(backlog)}"))
    return lines


def backlog_words(backlog: dict[str, Any]) -> str:
    """The read-only servers' audit spools in words: what those that answered reported, and whose is unknown."""
    pending = backlog["pending"]
    text = f"{pending} record(s) not yet in the primary database" if pending else "none pending"
    if backlog.get("oldest_pending"):
        text += f" (oldest {when(backlog['oldest_pending'])})"
    unknown = [b["name"] for b in backlog.get("servers", []) if not b["reported"]]
    if unknown:
        text += f"; unknown for {', '.join(unknown)} (not answering)"
    return text


@ha_app.command()
def join(
    setup_file: Annotated[Path, typer.Argument(help="A setup file ('ha add-secondary') or setup pack ('ha pack').")],
    data_dir: DataDir,
    key_file: Annotated[Path, typer.Option(help="This cluster's master key file (copied from the primary).")],
    passphrase_file: Annotated[Path | None, typer.Option(help="File holding the passphrase printed by the "
                                                         "primary (else it is asked for).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTPS port of this server.", min=1, max=65535)] = None,
    db_port: Annotated[int | None, typer.Option(help="Port of this read-only server's replica.",
                                                min=1, max=65535)] = None,
    name: Annotated[str | None, typer.Option(help="Display name of this server.")] = None,
) -> None:
    """Configure this host as a secondary or read-only server from what the primary wrote.
    A damaged file, a wrong passphrase, a wrong key file or a file of another cluster is refused
    and nothing is changed on disk."""
    passphrase = read_passphrase(passphrase_file)
    manifest = peek_kind(setup_file, passphrase)
    say = lambda m: out.print(f"• {m}")  # noqa: E731
    if manifest.kind == "readonly":
        from safehold.ha.join_readonly import join_readonly

        settings = join_readonly(setup_file, passphrase, data_dir=data_dir, key_file=key_file, port=port,
                                 db_port=db_port, name=name, say=say)
    else:
        from safehold.ha.join_secondary import join_secondary

        settings = join_secondary(setup_file, passphrase, data_dir=data_dir, key_file=key_file, port=port,
                                  name=name, say=say)
    out.print(f"[green]✓[/] {settings.server.name} joined as {settings.server.role}; "
              f"start it with: safehold serve --data-dir {settings.data_dir}", highlight=False)

from safehold.cli.ha_sync import sync  # noqa: E402

ha_app.command()(sync)

from safehold.cli.ha_teardown import teardown  # noqa: E402

ha_app.command()(teardown)


from safehold.cli.ha_ops import override_lease, promote, rejoin, switchover  # noqa: E402

ha_app.command()(promote)
ha_app.command()(rejoin)
ha_app.command()(switchover)
ha_app.command("override-lease")(override_lease)

from safehold.cli.ha_check import check  # noqa: E402
from safehold.cli.ha_failover import failover  # noqa: E402

ha_app.command()(failover)
ha_app.command()(check)
