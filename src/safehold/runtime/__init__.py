"""A running server's context, below the HA layer and the services (docs/ARCHITECTURE.md): its settings,
database engine, keys, identity, write lease, audit writer or spool, and its mode changes."""

from safehold.runtime.context import (
    DATA,
    Fence,
    FencedMode,
    Keys,
    ReadOnlyMode,
    Runtime,
    ServerIdentity,
    StartupFencing,
    WriterUnconfirmed,
    bootstrap_cluster,
    check_key,
    engine_managed,
    in_cluster,
    open_runtime,
    public_url,
    ship_leftover_spool,
    system_event,
    unwrap_keys,
    wrap_label,
)

__all__ = [
    "DATA", "Fence", "FencedMode", "Keys", "ReadOnlyMode", "Runtime", "ServerIdentity", "StartupFencing",
    "WriterUnconfirmed", "bootstrap_cluster", "check_key", "engine_managed", "in_cluster", "open_runtime", "public_url",
    "ship_leftover_spool", "system_event", "unwrap_keys", "wrap_label",
]
