"""API keys for automation: ``gpk_`` + 256 random bits, shown once, stored hashed.

A key acts for its owner with the ``user`` role whatever the owner's role, so it
reaches only the owner's own objects (an admin's key cannot act on everyone's),
and it cannot manage credentials (keys, passwords, sessions): those routes
require a login. Functions work inside the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gameplane.auth.tokens import hash_secret, new_secret
from gameplane.db.models import ApiKey
from gameplane.errors import NotFound, Unprocessable

PREFIX = "gpk_"
SHOWN_PREFIX_LENGTH = 10
MAX_NAME_LENGTH = 64


async def create(db: AsyncSession, user_id: str, name: str, now: datetime) -> tuple[ApiKey, str]:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise Unprocessable("invalid_name", {"maxLength": MAX_NAME_LENGTH})
    key = new_secret(PREFIX)
    row = ApiKey(user_id=user_id, name=name, prefix=key[:SHOWN_PREFIX_LENGTH], key_hash=hash_secret(key),
                 created_at=now)
    db.add(row)
    await db.flush()
    return row, key


async def list_for(db: AsyncSession, user_id: str) -> list[ApiKey]:
    query = (select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
             .order_by(ApiKey.created_at))
    return list((await db.execute(query)).scalars())


async def revoke(db: AsyncSession, user_id: str, key_id: str, now: datetime) -> ApiKey:
    """Another user's key, like an unknown one, is ``NotFound``: ids do not leak."""
    row = await db.get(ApiKey, key_id)
    if row is None or row.user_id != user_id or row.revoked_at is not None:
        raise NotFound("not_found", {"id": key_id})
    row.revoked_at = now
    return row


async def owner_of(db: AsyncSession, key: str) -> tuple[str, str] | None:
    """The owner and id of a live key."""
    query = select(ApiKey.user_id, ApiKey.id).where(ApiKey.key_hash == hash_secret(key),
                                                    ApiKey.revoked_at.is_(None))
    row = (await db.execute(query)).first()
    return (row[0], row[1]) if row is not None else None


async def is_live(db: AsyncSession, key_id: str, user_id: str) -> bool:
    """Whether the key with this id is still ``user_id``'s and not revoked."""
    query = select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.user_id == user_id,
                                    ApiKey.revoked_at.is_(None))
    return (await db.execute(query)).first() is not None
