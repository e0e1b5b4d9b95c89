"""Password-reset tokens: 32 random bytes, stored hashed, single use, expiring
within the hour. Issuing one voids the user's older ones; a password change
voids them all (:func:`void_all`). Functions work inside the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import quote

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from gameplane.auth.tokens import hash_secret, new_secret
from gameplane.db.models import PasswordReset

#: the portal page that takes the token from the fragment (never sent to servers or in Referer)
RESET_PATH = "/reset-password#token="


async def issue(db: AsyncSession, user_id: str, now: datetime, ttl: int) -> str:
    await void_all(db, user_id, now)
    token = new_secret()
    db.add(PasswordReset(token_hash=hash_secret(token), user_id=user_id, created_at=now,
                         expires_at=now + timedelta(seconds=ttl)))
    await db.flush()
    return token


async def consume(db: AsyncSession, token: str, now: datetime) -> str | None:
    """The user id of a live token, which is used up by this call; ``None`` otherwise.
    One conditional UPDATE, so two concurrent resets with one token cannot both win."""
    row = (await db.execute(
        update(PasswordReset)
        .where(PasswordReset.token_hash == hash_secret(token), PasswordReset.used_at.is_(None),
               PasswordReset.expires_at > now)
        .values(used_at=now)
        .returning(PasswordReset.user_id))).first()
    return None if row is None else str(row.user_id)


async def void_all(db: AsyncSession, user_id: str, now: datetime) -> None:
    await db.execute(update(PasswordReset)
                     .where(PasswordReset.user_id == user_id, PasswordReset.used_at.is_(None))
                     .values(used_at=now))


def link(public_url: str, token: str) -> str:
    """Built from the configured public URL only, never from the request's Host header."""
    return f"{public_url}{RESET_PATH}{quote(token)}"
