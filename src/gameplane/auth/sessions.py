"""Sessions: one per login, each a family of refresh tokens.

A refresh token is used once: :func:`rotate` consumes it with one conditional
``UPDATE … SET used_at = now WHERE token_hash = :h AND used_at IS NULL``. The
database serializes concurrent updates of the row (PostgreSQL re-checks the
``WHERE`` after the first writer commits; SQLite transactions here begin
IMMEDIATE), so of N parallel refreshes with one token exactly one sees its row
updated. A token presented again after that is a reuse — someone holds a copy —
and revokes the whole family, which also ends the access tokens naming it.

A session also dies ``idle_ttl`` after its last refresh and ``max_ttl`` after
login. Functions here work inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gameplane.auth.tokens import hash_secret, new_secret
from gameplane.db.models import AuthSession, RefreshToken, Role, User


@dataclass(frozen=True)
class Rotated:
    session: AuthSession
    refresh_token: str


@dataclass(frozen=True)
class Reused:
    """The token was already used: its family is now revoked."""

    session: AuthSession


def is_alive(family: AuthSession, now: datetime, idle_ttl: int) -> bool:
    return (family.revoked_at is None and family.expires_at > now
            and family.last_used_at + timedelta(seconds=idle_ttl) > now)


async def _add_token(db: AsyncSession, family_id: str, now: datetime) -> str:
    token = new_secret()
    db.add(RefreshToken(token_hash=hash_secret(token), session_id=family_id, created_at=now))
    await db.flush()
    return token


async def open_session(db: AsyncSession, user_id: str, now: datetime, max_ttl: int) -> Rotated:
    family = AuthSession(user_id=user_id, created_at=now, last_used_at=now,
                         expires_at=now + timedelta(seconds=max_ttl))
    db.add(family)
    await db.flush()
    return Rotated(family, await _add_token(db, family.id, now))


async def rotate(db: AsyncSession, token: str, now: datetime, idle_ttl: int) -> Rotated | Reused | None:
    """Consume ``token`` and issue its successor. ``None`` when the token is unknown
    or its session is revoked or expired; :class:`Reused` when it was used before."""
    token_hash = hash_secret(token)
    consumed = (await db.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == token_hash, RefreshToken.used_at.is_(None))
        .values(used_at=now)
        .returning(RefreshToken.session_id))).first()
    if consumed is None:
        family_id = (await db.execute(select(RefreshToken.session_id)
                                      .where(RefreshToken.token_hash == token_hash))).scalar_one_or_none()
        if family_id is None:
            return None
        family = await db.get_one(AuthSession, family_id)
        await revoke(db, family, "token_reuse", now)
        return Reused(family)
    family = await db.get_one(AuthSession, consumed.session_id)
    if not is_alive(family, now, idle_ttl):
        return None
    family.last_used_at = now
    return Rotated(family, await _add_token(db, family.id, now))


async def find_by_token(db: AsyncSession, token: str) -> AuthSession | None:
    """The session a refresh token (used or not) belongs to."""
    query = (select(AuthSession).join(RefreshToken, RefreshToken.session_id == AuthSession.id)
             .where(RefreshToken.token_hash == hash_secret(token)))
    return (await db.execute(query)).scalar_one_or_none()


async def revoke(db: AsyncSession, family: AuthSession, reason: str, now: datetime) -> None:
    if family.revoked_at is None:
        family.revoked_at = now
        family.revoked_reason = reason
        await db.flush()


async def revoke_all(db: AsyncSession, user_id: str, reason: str, now: datetime) -> int:
    result = await db.execute(update(AuthSession)
                              .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
                              .values(revoked_at=now, revoked_reason=reason))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def role_if_alive(db: AsyncSession, user_id: str, family_id: str, now: datetime,
                        idle_ttl: int) -> Role | None:
    """The user's current role if the session is theirs and alive: the one query an
    access token costs per request (primary-key lookups on both tables)."""
    row = (await db.execute(
        select(AuthSession, User.role).join(User, User.id == AuthSession.user_id)
        .where(AuthSession.id == family_id, AuthSession.user_id == user_id))).first()
    if row is None or not is_alive(row[0], now, idle_ttl):
        return None
    role: Role = row[1]
    return role
