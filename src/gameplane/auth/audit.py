"""The audit log of security events, readable by admins (``GET /api/admin/audit``).

Kinds: ``register``, ``login``, ``login_failed``, ``logout``, ``logout_all``,
``token_reuse``, ``password_changed``, ``password_reset_requested``,
``password_reset``, ``api_key_created``, ``api_key_revoked``.

Events are added to the caller's transaction, so an event is recorded exactly
when what it describes is committed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gameplane.db.models import AuditEvent
from gameplane.instances.service import iso

MAX_PAGE = 500


def record(db: AsyncSession, kind: str, user_id: str | None, address: str | None,
           **data: Any) -> None:
    db.add(AuditEvent(kind=kind, user_id=user_id, address=address, data=data))


async def page(db: AsyncSession, *, before: int | None, limit: int, user_id: str | None = None,
               kind: str | None = None) -> list[AuditEvent]:
    """Newest first; ``before`` is the smallest id of the previous page."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
    if before is not None:
        query = query.where(AuditEvent.id < before)
    if user_id is not None:
        query = query.where(AuditEvent.user_id == user_id)
    if kind is not None:
        query = query.where(AuditEvent.kind == kind)
    return list((await db.execute(query)).scalars())


def to_json(event: AuditEvent) -> dict[str, Any]:
    return {"id": event.id, "kind": event.kind, "userId": event.user_id, "address": event.address,
            "data": event.data, "createdAt": iso(event.created_at)}
