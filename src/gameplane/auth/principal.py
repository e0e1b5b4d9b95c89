"""Who is calling. Every route takes the caller from ``current_principal``,
the one dependency the accounts issue replaces with real authentication.

Until then the control plane is single-tenant: every caller acts as the
first admin (created by ``gameplane up``), so the API must only listen where
the operator alone can reach it (the default is 127.0.0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gameplane.errors import Unavailable


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_access(self, owner_id: str | None) -> bool:
        return self.is_admin or owner_id == self.user_id


async def current_principal(conn: HTTPConnection) -> Principal:
    principal: Principal | None = getattr(conn.app.state, "operator", None)
    if principal is None:
        raise Unavailable("no_admin", {"reason": "no admin account yet: run `gameplane admin create`"})
    return principal
