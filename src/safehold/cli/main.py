"""The ``safehold`` command."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from safehold import __version__
from safehold.cli.context import cli_actor, load, pid_path, refuse_if_serving, runtime, with_runtime
from safehold.domain import UserRole
from safehold.errors import SafeholdError
from safehold.runtime import Runtime

if TYPE_CHECKING:
    from safehold.config import Settings

app = typer.Typer(help="Safehold: a self-hosted vault for privileged passwords, built for high availability.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
db_app = typer.Typer(help="The bundled PostgreSQL database. One that 'serve' started stops with it (after a "
                          "killed 'serve', with the next one); one started with 'db start' runs until 'db stop'.",
                     no_args_is_help=True)
user_app = typer.Typer(help="Manage users.", no_args_is_help=True)
token_app = typer.Typer(help="Personal API tokens.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
key_app = typer.Typer(help="The master key.", no_args_is_help=True)
from safehold.cli import ha_pack, ha_secondary  # noqa: E402,F401 - they add their commands to ha_app
from safehold.cli.alerts import alerts_app  # noqa: E402
from safehold.cli.ha import ha_app  # noqa: E402

for sub, name in ((ha_app, "ha"), (db_app, "db"), (user_app, "user"), (token_app, "token"), (audit_app, "audit"), (key_app, "key")):
    app.add_typer(sub, name=name)
app.add_typer(alerts_app, name="alerts")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Path, typer.Option("--data-dir", "-d", help="The server's data directory.",
                                       envvar="SAFEHOLD_DATA_DIR")]


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _read_secret_file(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip("\r\n")
    except OSError as exc:
        fail(f"cannot read the {what} file {path}: {exc.strerror or 'the system refused it'}")
    except UnicodeDecodeError:
        fail(f"the {what} file {path} is not text (UTF-8): it must hold the {what} on one line")
    if not value:
        fail(f"the {what} file {path} is empty")
    return value


from safehold.cli.demo import demo_app  # noqa: E402

app.add_typer(demo_app, name="demo")

from safehold.cli.join import join as _join  # noqa: E402

app.command(name="join")(_join)

from safehold.cli.audit_sinks import sinks as _audit_sinks  # noqa: E402

audit_app.command("sinks")(_audit_sinks)


@app.command()
def version() -> None:
    """Print the Safehold version."""
    out.print(f"safehold {__version__}")


@app.command()
def init(
    data_dir: DataDir,
    port: Annotated[int, typer.Option(help="HTTPS port.", min=1, max=65535)] = 8443,
    listen: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for all).")] = "127.0.0.1",
    name: Annotated[str | None, typer.Option(help="Display name of this server (default: the hostname).")] = None,
    db_port: Annotated[int | None, typer.Option(help="Port of the bundled PostgreSQL (default: a free one).",
                                                min=1, max=65535)] = None,
    database_url: Annotated[str | None, typer.Option(help="Use this external PostgreSQL instead of the bundled one.",
                                                     envvar="SAFEHOLD_DATABASE_URL")] = None,
    key_file: Annotated[Path | None, typer.Option(help="Master key file (created if missing; default "
                                                  "DATA_DIR/safehold.key).")] = None,
    admin_username: Annotated[str, typer.Option(help="Name of the first administrator.")] = "admin",
    admin_password_file: Annotated[Path | None, typer.Option(help="Read the first administrator's password "
                                                             "from this file (else one is generated).")] = None,
    hostname: Annotated[list[str] | None, typer.Option("--hostname", help="Extra DNS name or IP for the "
                                                       "certificate (repeatable).")] = None,
) -> None:
    """Create a new server: key file, TLS certificates, database, schema and first administrator."""
    from safehold.cli.common import steps
    from safehold.cli.context import init_port_problems
    from safehold.pg import port_in_use
    from safehold.services.setup import InitOptions, initialise

    problems = init_port_problems(listen, port, None if database_url else db_port, port_in_use)
    if problems:
        fail("; ".join(problems) + ". Nothing was created.")
    password = _read_secret_file(admin_password_file, "admin password") if admin_password_file else None
    opts = InitOptions(data_dir=data_dir, port=port, listen=listen, name=name, db_port=db_port,
                       database_url=database_url, key_file=key_file, admin_username=admin_username,
                       admin_password=password, hostnames=tuple(hostname or ()))
    with steps(out, "initialising…") as say:
        result = initialise(opts, say=say)
    s = result.settings
    out.print(f"[green]✓[/] Safehold server [bold]{s.server.name}[/] initialised in {s.data_dir}")
    out.print(f"  server id  {s.server.id}\n  URL        https://{s.http.listen}:{s.http.port}")
    out.print(f"  key file   {result.key_file}  [yellow](needed at every start; back it up apart from the data)[/]")
    if result.admin_password:
        out.print(f"  administrator [bold]{result.admin_username}[/], password (shown once): "
                  f"[bold]{result.admin_password}[/]", highlight=False)
    else:
        out.print(f"  administrator [bold]{result.admin_username}[/] with the password from the file")
    out.print(f"Start it with: safehold serve --data-dir {s.data_dir}")


@app.command()
def serve(data_dir: DataDir) -> None:
    """Run the server (HTTPS) in the foreground; SIGTERM or Ctrl-C stops it cleanly.

    It first waits (database.connect_wait, 60 s by default) for a database that does not answer yet, and
    checks the key file against it: "serving on" is printed only once both hold.  The bundled PostgreSQL
    is stopped with the server when this 'serve' started it, or took it over from a 'serve' that was killed;
    one started on purpose with 'safehold db start' keeps running.
    """
    from safehold.cli.context import claim_database, release_database
    from safehold.runtime import database
    from safehold.web.server import (
        apply_log_settings,
        check_database_key,
        check_port_free,
        run_server,
        wait_for_database,
    )

    settings, master = load(data_dir)
    apply_log_settings(settings)
    refuse_if_serving(settings, "starting it again")
    check_port_free(settings.http.listen, settings.http.port)
    pg, owned = None, False
    if database.is_bundled(settings):
        pg = database.manager(settings)
        pg.check_data_dir()
        owned = claim_database(settings, started=pg.start())
    pidfile = pid_path(settings)
    try:
        if pg is not None:
            pg.wait_ready()
        wait_for_database(settings, say=lambda line: out.print(line, highlight=False, markup=False))
        if not database.migrate(settings):
            out.print("[yellow]the database is fenced (read-only): this server starts fenced, redirects users to "
                      "the acting primary and refuses every change[/]")
        check_database_key(settings, master)
        pidfile.parent.mkdir(exist_ok=True)
        pidfile.write_text(f"{os.getpid()}\n")
        workers = settings.http.processes
        out.print(f"Safehold {__version__} [bold]{escape(settings.server.name)}[/] ({settings.server.role}) serving on "
                  f"https://{settings.http.listen}:{settings.http.port}"
                  + (f" with {workers} worker processes" if workers > 1 else ""), highlight=False)
        run_server(settings, master)
    finally:
        pidfile.unlink(missing_ok=True)
        if pg is not None and owned:
            pg.stop()
            release_database(settings)
            out.print("stopped the bundled PostgreSQL")
    out.print("Safehold stopped")


# --- db ---------------------------------------------------------------------------

def _bundled(data_dir: Path, what: str) -> Settings:
    """This server's settings (no key needed), refusing if its database is not the bundled one."""
    from safehold.cli.context import not_bundled
    from safehold.config import load_settings
    from safehold.runtime import database
    from safehold.web.server import database_where

    settings = load_settings(data_dir)
    if not database.is_bundled(settings):
        raise SafeholdError(not_bundled(settings, database_where(settings)),
                            hint=f"{what} it where it runs; 'safehold db status' tells whether it answers")
    return settings


@db_app.command("start")
def db_start(data_dir: DataDir) -> None:
    """Start the bundled PostgreSQL on purpose: it keeps running after this command and after any 'serve',
    until 'db stop' (one that a killed 'serve' left running is kept running from now on too)."""
    from safehold.cli.context import release_database, server_pid
    from safehold.runtime import database

    settings = _bundled(data_dir, "start")
    pg = database.manager(settings)
    pg.check_data_dir()
    started = pg.start()
    pg.wait_ready()
    if server_pid(settings) is None:
        release_database(settings)
    out.print("started" if started else "already running")


@db_app.command("stop")
def db_stop(data_dir: DataDir) -> None:
    """Stop the bundled PostgreSQL."""
    from safehold.cli.context import release_database
    from safehold.runtime import database

    settings = _bundled(data_dir, "stop")
    stopped = database.manager(settings).stop()
    release_database(settings)
    out.print("stopped" if stopped else "was not running")


@db_app.command("status")
def db_status(
    data_dir: DataDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as one JSON object: mode, bundled, "
                                          "running, pid, where, port, data_dir, problem.")] = False,
) -> None:
    """Show whether the bundled PostgreSQL runs (exit 0), or not (exit 3).  On a server whose database is not
    bundled (a secondary's, an engine's): where it is and whether it answers."""
    import json

    from safehold.cli.context import db_status_report, not_bundled
    from safehold.config import load_settings
    from safehold.runtime import database
    from safehold.web.server import database_problem, database_where

    settings = load_settings(data_dir)
    where = database_where(settings)
    if database.is_bundled(settings):
        st = database.manager(settings).status()
        report = db_status_report(settings, running=st.running, pid=st.pid, where=where)
        text = (f"{'running' if st.running else 'stopped'}  pid={st.pid or '-'}  port={settings.database.port}  "
                f"data={st.data_dir}")
    else:
        problem = database_problem(settings)
        report = db_status_report(settings, running=problem is None, pid=None, where=where, problem=problem)
        text = not_bundled(settings, where) + ("; it answers" if problem is None else f"; it does not answer: {problem}")
    if as_json:
        print(json.dumps(report))
    else:
        out.print(text, highlight=False, markup=False)
    raise typer.Exit(0 if report["running"] else 3)


# --- users ------------------------------------------------------------------------

def _user_table(rows: list[Any]) -> Table:
    t = Table("username", "role", "TOTP", "disabled", "locked until", "id")
    for r in rows:
        t.add_row(r.username, r.role, "yes" if r.totp_enabled else "", "yes" if r.disabled else "",
                  r.locked_until.isoformat(timespec="seconds") if r.locked_until else "", r.id)
    return t


@user_app.command("list")
def user_list(data_dir: DataDir) -> None:
    """List users."""
    from safehold.services import users

    async def go(rt: Runtime) -> list[Any]:
        rows, _ = await users.list_users(rt, limit=10_000)
        return rows

    out.print(_user_table(with_runtime(data_dir, go)))


@user_app.command("add")
def user_add(
    data_dir: DataDir,
    username: Annotated[str, typer.Argument()],
    role: Annotated[UserRole, typer.Option(help="Role of the new user.")] = UserRole.USER,
    password_file: Annotated[Path | None, typer.Option(help="Read the password from this file "
                                                       "(else one is generated and shown once).")] = None,
    full_name: Annotated[str, typer.Option()] = "",
    email: Annotated[str, typer.Option()] = "",
) -> None:
    """Add a user."""
    from safehold.services import users
    from safehold.services.passwords import PasswordPolicy, generate

    password = _read_secret_file(password_file, "password") if password_file else None
    shown = password is None
    password = password or generate(PasswordPolicy(length=20, symbols=False, exclude_ambiguous=True))

    async def go(rt: Runtime) -> str:
        return await users.create_user(rt, users.Actor(cli_actor()), username=username, password=password,
                                       role=role, full_name=full_name, email=email)

    user_id = with_runtime(data_dir, go)
    out.print(f"[green]✓[/] user [bold]{username}[/] ({role.value}) created, id {user_id}", highlight=False)
    if shown:
        out.print(f"  password (shown once): [bold]{password}[/]", highlight=False)


def _user_action(data_dir: Path, username: str, action: str, **kw: Any) -> None:
    from safehold.services import auth, users

    async def go(rt: Runtime) -> None:
        user = await users.find_user(rt, username)
        actor = users.Actor(cli_actor())
        if action == "update":
            await users.update_user(rt, actor, user.id, **kw)
        elif action == "unlock":
            await users.unlock(rt, actor, user.id)
        elif action == "password":
            await users.set_password(rt, actor, user.id, kw["password"])
        elif action == "reset-totp":
            await auth.totp_disable(rt, actor.name, user.id)
        elif action == "delete":
            await users.delete_user(rt, actor, user.id)

    with_runtime(data_dir, go)
    out.print(f"[green]✓[/] {username}: {action} done")


@user_app.command("set-role")
def user_set_role(data_dir: DataDir, username: str, role: UserRole) -> None:
    """Change a user's role."""
    _user_action(data_dir, username, "update", role=role)


@user_app.command("disable")
def user_disable(data_dir: DataDir, username: str) -> None:
    """Disable a user (and end their sessions)."""
    _user_action(data_dir, username, "update", disabled=True)


@user_app.command("enable")
def user_enable(data_dir: DataDir, username: str) -> None:
    """Enable a disabled user."""
    _user_action(data_dir, username, "update", disabled=False)


@user_app.command("unlock")
def user_unlock(data_dir: DataDir, username: str) -> None:
    """Lift a lockout after failed logins."""
    _user_action(data_dir, username, "unlock")


@user_app.command("reset-totp")
def user_reset_totp(data_dir: DataDir, username: str) -> None:
    """Remove a user's TOTP (they can enrol again)."""
    _user_action(data_dir, username, "reset-totp")


@user_app.command("delete")
def user_delete(data_dir: DataDir, username: str) -> None:
    """Delete a user."""
    _user_action(data_dir, username, "delete")


@user_app.command("reset-password")
def user_reset_password(
    data_dir: DataDir, username: str,
    password_file: Annotated[Path | None, typer.Option(help="Read the new password from this file "
                                                       "(else one is generated and shown once).")] = None,
) -> None:
    """Set a new password for a user (ends their sessions)."""
    from safehold.services.passwords import PasswordPolicy, generate

    password = _read_secret_file(password_file, "password") if password_file else None
    shown = password is None
    password = password or generate(PasswordPolicy(length=20, symbols=False, exclude_ambiguous=True))
    _user_action(data_dir, username, "password", password=password)
    if shown:
        out.print(f"  new password (shown once): [bold]{password}[/]", highlight=False)


# --- tokens -----------------------------------------------------------------------

@token_app.command("create")
def token_create(
    data_dir: DataDir,
    user: Annotated[str, typer.Option("--user", "-u", help="Whose token.")],
    name: Annotated[str, typer.Option(help="What the token is for.")] = "cli",
    days: Annotated[int | None, typer.Option(help="Expires after this many days (default: never).",
                                             min=1, max=3650)] = None,
) -> None:
    """Create a personal API token for a user; it is printed once (to stdout, alone)."""
    from safehold.services import auth, users

    async def go(rt: Runtime) -> str:
        u = await users.find_user(rt, user)
        _, token = await auth.create_api_token(rt, u.id, name, days=days, actor=cli_actor())
        return token

    token = with_runtime(data_dir, go)
    err.print(f"token '{name}' for {user} created; it is shown once:")
    print(token)


# --- audit ------------------------------------------------------------------------

@audit_app.command("verify")
def audit_verify(data_dir: DataDir) -> None:
    """Check every server's audit chain; exit 1 and name each altered or missing record."""
    from safehold.services import audit

    report = with_runtime(data_dir, audit.verify)
    t = Table("server", "records")
    for sid, n in sorted(report.servers.items()):
        t.add_row(sid, str(n))
    out.print(t)
    if report.ok:
        out.print("[green]✓[/] audit chain intact")
        return
    for p in report.problems:
        err.print(f"[red]✗[/] {p}", highlight=False)
    fail(f"audit chain broken: {len(report.problems)} problem(s)")


@audit_app.command("export")
def audit_export(
    data_dir: DataDir,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "csv",
    server: Annotated[str | None, typer.Option(help="Only records of this server id.")] = None,
    since: Annotated[dt.datetime | None, typer.Option(help="From this time.")] = None,
) -> None:
    """Export audit records."""
    from safehold.services import audit

    if fmt not in ("csv", "jsonl"):
        fail("--format must be csv or jsonl")

    async def go(rt: Runtime) -> list[Any]:
        return await audit.export(rt, audit.RecordFilter(server=server, since=since))

    rows = with_runtime(data_dir, go)
    text = audit.records_csv(rows) if fmt == "csv" else audit.records_jsonl(rows)
    if output:
        output.write_text(text)
        err.print(f"{len(rows)} record(s) written to {output}")
    else:
        sys.stdout.write(text)


# --- key --------------------------------------------------------------------------

@key_app.command("rotate")
def key_rotate(
    data_dir: DataDir,
    reencrypt: Annotated[bool, typer.Option("--reencrypt", help="Also make a new data key and re-encrypt every "
                                            "secret under it (the server must be stopped).")] = False,
) -> None:
    """Make a new master key file and re-wrap the data keys under it.  The old key file is kept beside it
    (NAME.old-<time>): backups made before the rotation need it ('safehold restore --key-file')."""
    from safehold.runtime import database
    from safehold.services import keys

    settings, old = load(data_dir)
    if reencrypt:
        refuse_if_serving(settings, "re-encrypting")
    new_path, new = keys.new_key_file_beside(settings.key_file)
    with database.database_running(settings):
        async def go() -> int:
            async with runtime(settings, old) as rt:
                await keys.rewrap(rt, old, new)
                if not reencrypt:
                    return 0
                with Progress(TextColumn("re-encrypting"), BarColumn(), MofNCompleteColumn(),
                              TimeRemainingColumn(), console=out) as progress:
                    task = progress.add_task("secrets", total=None)
                    done, version = await keys.reencrypt(
                        rt, new, lambda d, t: progress.update(task, completed=d, total=t))
                out.print(f"re-encrypted {done} secret(s) under data key version {version}")
                return done

        try:
            asyncio.run(go())
        except BaseException:
            new_path.unlink(missing_ok=True)
            raise
    old_copy = keys.install_new_key_file(settings.key_file, new_path)
    out.print(f"[green]✓[/] new master key {new.key_id} in {escape(str(settings.key_file))}; the old one is kept as "
              f"{escape(str(old_copy))}", highlight=False)
    for line in keys.rotation_notes(old_copy, settings.data_dir):
        out.print(f"  {line}", markup=False, highlight=False)


# --- backup / restore --------------------------------------------------------------

@app.command()
def backup(
    data_dir: DataDir,
    output: Annotated[Path, typer.Option("--out", "-o", help="Backup file to write.")],
) -> None:
    """Back up the vault database (ciphertext only; the key file is never included)."""
    from safehold.runtime import database
    from safehold.services.backup import make_backup

    settings, master = load(data_dir)
    with database.database_running(settings):
        async def go() -> Any:
            async with runtime(settings, master) as rt:
                return await make_backup(rt, output, actor=cli_actor())

        with out.status("dumping the database…"):
            manifest = asyncio.run(go())
    out.print(f"[green]✓[/] backup written to {escape(str(output))} ({manifest.dump_size:,} bytes of ciphertext-only "
              "dump)", highlight=False)
    out.print(f"  restoring it needs master key {manifest.key_id}, the key in {settings.key_file} today; after 'safehold "
              "key rotate' that is the old key file kept beside it (restore --key-file)", markup=False, highlight=False)


@app.command()
def restore(
    backup_file: Annotated[Path, typer.Argument(help="A file made by 'safehold backup'.")],
    data_dir: DataDir,
    key_file: Annotated[Path | None, typer.Option(
        "--key-file", help="The master key file the backup was made with (default: this server's own). After "
        "'safehold key rotate', older backups need the old key file, kept beside the key file as "
        "safehold.key.old-<time>.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Replace this server's vault database with a backup.  It needs the key file the backup was made with
    (--key-file when that is not this server's own); the restored data keys are then wrapped by this server's
    own key file again, so the server starts with it as before."""
    from safehold.config import load_settings
    from safehold.runtime import database
    from safehold.services import backup as backups
    from safehold.services import keys

    settings = load_settings(data_dir)
    refuse_if_serving(settings, "restoring")
    plan = backups.plan_restore(settings, backup_file, key_file, key_from_env=keys.key_file_from_env(),
                                find=keys.find_key_file)
    if not yes and not typer.confirm(f"Replace ALL data of this server with the backup of "
                                     f"{backups.made_on(plan.manifest)}?"):
        raise typer.Exit(1)
    with database.database_running(settings) as pg:
        with out.status("restoring…"):
            backups.restore_backup(settings, pg, plan.backup_key, backup_file, key_file=plan.backup_key_file)
            database.migrate(settings)

        async def settle() -> None:
            async with runtime(settings, plan.backup_key) as rt:
                await backups.settle_restore(rt, plan, actor=cli_actor())

        asyncio.run(settle())
    first, *rest = backups.restored_notes(plan)
    out.print(f"[green]✓[/] {escape(first)}", highlight=False)
    for line in rest:
        out.print(f"  {line}", markup=False, highlight=False)


def main() -> None:
    from safehold import logs, systemd

    systemd.claim()  # NOTIFY_SOCKET & co are this process's: PostgreSQL and scripts it starts never see them
    logs.setup_from(os.environ)  # the [log] section's overrides; 'serve' applies the whole section once read
    try:
        app()
    except SafeholdError as exc:
        err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        if exc.hint:
            err.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
