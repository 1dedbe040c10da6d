"""This app's HA agent as the API routes and the pages see it (a server may run without one)."""

from __future__ import annotations

from fastapi import Request


def live_peers(request: Request) -> dict[str, bool] | None:
    """Which peers the agent last found healthy, by server id (None without an agent or peers)."""
    agent = getattr(request.app.state, "agent", None)
    if agent is None or not agent.peers:
        return None
    return {p.server_id: p.healthy for p in agent.peers}
