"""Who is calling. Every route takes the caller from :func:`current_principal`:
the bearer is an access token (a JWT whose session must still be alive) or an
API key (``gpk_…``). Missing or invalid → 401 ``unauthorized`` (or a more
precise code) with ``WWW-Authenticate: Bearer``.

``GET /api/events`` uses :func:`stream_principal`, which also takes the access
token from ``?access_token=``: a browser ``EventSource`` cannot send headers.
Only that route accepts it, because a token in a URL can end up in proxy logs
and browser history — a short-lived access token, never an API key, is the
least bad thing to put there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from starlette.requests import HTTPConnection

from gameplane.auth.apikeys import PREFIX as API_KEY_PREFIX
from gameplane.errors import Unauthorized

Via = Literal["session", "api_key"]


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: str
    #: the session (refresh family) of the access token; ``None`` for an API key
    session_id: str | None = None
    via: Via = "session"
    #: when the access token expires (``None`` for an API key): bounds a console connection
    expires_at: datetime | None = None
    #: the API key's id, when the caller is one
    api_key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_access(self, owner_id: str | None) -> bool:
        return self.is_admin or owner_id == self.user_id


def bearer_token(conn: HTTPConnection) -> str | None:
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _authenticate(conn: HTTPConnection, token: str | None) -> Principal:
    if token is None:
        raise Unauthorized("unauthorized", {"reason": "send Authorization: Bearer <access token or API key>"})
    principal: Principal = await conn.app.state.auth.authenticate(token)
    return principal


async def current_principal(conn: HTTPConnection) -> Principal:
    return await _authenticate(conn, bearer_token(conn))


async def stream_principal(conn: HTTPConnection, access_token: str | None = None) -> Principal:
    """Like :func:`current_principal`, or an access token (not an API key) in ``?access_token=``."""
    token = bearer_token(conn)
    if token is None and access_token is not None:
        if access_token.startswith(API_KEY_PREFIX):
            raise Unauthorized("invalid_token", {"reason": "API keys go in the Authorization header"})
        token = access_token
    return await _authenticate(conn, token)
