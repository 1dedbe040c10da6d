"""The server registry as the API, the pages and the peers change it: renaming a server, registering a server
that (re)joins the cluster (each change audited in the same transaction where it is a user's)."""

from __future__ import annotations

from safehold import __version__
from safehold.audit.chain import AuditEvent
from safehold.domain import AuditAction, AuditResult, Principal, ServerRole
from safehold.errors import NotFound
from safehold.runtime import Runtime
from safehold.services import access
from safehold.services.views import ServerNameView
from safehold.storage import servers as server_store


async def rename_server(rt: Runtime, p: Principal, server_id: str, name: str) -> ServerNameView:
    """Give a server another display name (administrators only)."""
    access.require(p.is_admin, "only administrators can rename servers")
    name = name.strip()
    async with rt.write() as conn:
        if await server_store.rename(conn, server_id, name) == 0:
            raise NotFound("server not found")
        await rt.append_audit(conn, AuditEvent(actor=p.username, action=AuditAction.SERVER_RENAMED,
                                               result=AuditResult.SUCCESS, source_ip=p.source_ip,
                                               target_type="server", target_id=server_id, target_name=name))
    return ServerNameView(server_id, name)


async def register_server(rt: Runtime, *, server_id: str, name: str, role: ServerRole, host: str, url: str,
                          port: int) -> None:
    """List a server that (re)joins the cluster in the registry (a signed peer request of the acting primary)."""
    async with rt.write() as conn:
        await server_store.register(conn, id=server_id, name=name, role=role.value, hostname=host, url=url,
                                    port=port, version=__version__)
