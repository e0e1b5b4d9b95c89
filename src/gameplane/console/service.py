"""The console's control-plane side: issuing tickets, turning one into a grant,
and re-checking a grant while its connection lives. One per API process
(``app.state.console``); it also owns the HTTP client session the proxies
open the agents' console websockets with."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gameplane.agents.client import AgentEndpoint
from gameplane.auth.principal import Principal
from gameplane.auth.ratelimit import RateLimiter
from gameplane.console import tickets
from gameplane.console.tickets import Grant
from gameplane.db.engine import transaction
from gameplane.db.models import utcnow
from gameplane.instances.service import InstanceService, iso
from gameplane.settings import Settings

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` as a browser sends it in ``Origin``
    (lowercase, default port left out)."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{scheme}://{host}:{port}"


class ConsoleService:
    def __init__(self, settings: Settings, db: async_sessionmaker[AsyncSession], instances: InstanceService,
                 *, clock: Callable[[], datetime] = utcnow):
        self.settings = settings
        self.db = db
        self.instances = instances
        self.clock = clock
        self.origin = origin_of(settings.public_url)
        self.limiter = RateLimiter(settings.rate_limit_window)
        self._ws_base = "ws" + settings.public_url.removeprefix("http")
        # One connection per console: no pool limit. Reads never time out (a quiet
        # console is normal); the websocket's heartbeat finds a dead agent.
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                          timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))

    async def aclose(self) -> None:
        await self.http.close()

    def url(self, server_id: str, ticket: str) -> str:
        return f"{self._ws_base}/api/game/servers/{quote(server_id, safe='')}/console?ticket={ticket}"

    async def issue_ticket(self, caller: Principal, server_id: str) -> dict[str, Any]:
        """``{"ticket", "expiresAt", "url"}`` for an active server the caller may
        reach (else the instance routes' 404 / 409); rate-limited per user."""
        self.limiter.hit((f"console_ticket:user:{caller.user_id}", self.settings.console_tickets_per_window))
        await self.instances.active_endpoint(caller, server_id, "game")
        async with transaction(self.db) as db:
            ticket, expires = await tickets.issue(db, caller, server_id, self.clock(),
                                                  self.settings.console_ticket_ttl)
        return {"ticket": ticket, "expiresAt": iso(expires), "url": self.url(server_id, ticket)}

    async def redeem(self, server_id: str, ticket: str) -> Grant:
        async with transaction(self.db) as db:
            return await tickets.consume(db, ticket, server_id, self.clock())

    async def authorize(self, grant: Grant) -> AgentEndpoint:
        """The server's agent, if the grant still holds: its credential is alive and
        the server exists, is the user's (or they are an admin) and is active.
        Raises what the instance routes would (401, 404, 409)."""
        async with self.db() as db:
            principal = await tickets.principal_of(db, grant, self.clock(), self.settings.session_idle_ttl)
        _, endpoint = await self.instances.active_endpoint(principal, grant.instance_id, "game")
        return endpoint
