"""Console tickets: how a browser authenticates the console websocket without
putting its long-lived credentials in a URL.

``POST /api/game/servers/:id/console/ticket`` (an ordinary authenticated JSON
call) issues a ticket: 256 random bits, stored as their SHA-256 (like refresh
tokens), valid for ``console_ticket_ttl`` seconds (30), bound to the user, the
server, and the credential that asked — the login session (``sid``) of the
access token, or the API key. The websocket presents it in ``?ticket=``.

A ticket is used once: :func:`consume` marks it with one conditional
``UPDATE … SET used_at = now WHERE token_hash = :h AND instance_id = :server
AND used_at IS NULL AND expires_at > now``; the database serializes concurrent
updates of the row, so of two connections with one ticket exactly one gets
it, on any number of API replicas. A ticket for another server is not
consumed by being shown at the wrong URL.

The connection it opens stays authorized while the credential does: the
session is alive (not revoked, not idle or past its end) or the key is not
revoked, and — for a session — until the access token behind the ticket
expires (``auth_expires_at``); :func:`principal_of` re-checks the first part.
Functions here work inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gameplane.auth import apikeys, sessions
from gameplane.auth.principal import Principal
from gameplane.auth.tokens import hash_secret, new_secret
from gameplane.db.models import ConsoleTicket
from gameplane.errors import Unauthorized

#: used or expired tickets are deleted this long after they expired (kept a while
#: so a reused ticket is told ``ticket_used`` rather than ``invalid_ticket``)
_KEEP = timedelta(hours=1)


@dataclass(frozen=True)
class Grant:
    """What a consumed ticket allows: this user on this server, through this credential."""

    user_id: str
    instance_id: str
    session_id: str | None
    api_key_id: str | None
    #: the access token's expiry (``None`` for an API key)
    expires_at: datetime | None


async def issue(db: AsyncSession, caller: Principal, instance_id: str, now: datetime,
                ttl: int) -> tuple[str, datetime]:
    """A new ticket for ``caller`` on ``instance_id`` (the caller checked access), and its expiry."""
    await db.execute(delete(ConsoleTicket).where(ConsoleTicket.expires_at < now - _KEEP))
    ticket = new_secret()
    expires = now + timedelta(seconds=ttl)
    db.add(ConsoleTicket(token_hash=hash_secret(ticket), user_id=caller.user_id, instance_id=instance_id,
                         session_id=caller.session_id, api_key_id=caller.api_key_id, created_at=now,
                         expires_at=expires, auth_expires_at=caller.expires_at))
    await db.flush()
    return ticket, expires


async def consume(db: AsyncSession, ticket: str, instance_id: str, now: datetime) -> Grant:
    """Use ``ticket`` for ``instance_id`` once. ``Unauthorized`` with ``invalid_ticket``
    (unknown, forged, or another server's), ``ticket_expired`` or ``ticket_used``."""
    token_hash = hash_secret(ticket)
    row = (await db.execute(
        update(ConsoleTicket)
        .where(ConsoleTicket.token_hash == token_hash, ConsoleTicket.instance_id == instance_id,
               ConsoleTicket.used_at.is_(None), ConsoleTicket.expires_at > now)
        .values(used_at=now)
        .returning(ConsoleTicket.user_id, ConsoleTicket.session_id, ConsoleTicket.api_key_id,
                   ConsoleTicket.auth_expires_at))).first()
    if row is not None:
        return Grant(row.user_id, instance_id, row.session_id, row.api_key_id, row.auth_expires_at)
    found = (await db.execute(select(ConsoleTicket.used_at, ConsoleTicket.expires_at).where(
        ConsoleTicket.token_hash == token_hash, ConsoleTicket.instance_id == instance_id))).first()
    if found is None:
        raise Unauthorized("invalid_ticket", {"reason": "unknown ticket, or one for another server"})
    if found.used_at is not None:
        raise Unauthorized("ticket_used", {"reason": "a ticket opens one connection: ask for a new one"})
    raise Unauthorized("ticket_expired", {"reason": "ask for a new ticket"})


async def principal_of(db: AsyncSession, grant: Grant, now: datetime, idle_ttl: int) -> Principal:
    """The caller a grant stands for, as of now: ``Unauthorized("session_ended")`` when
    its session was revoked or ended, ``("api_key_revoked")`` for a revoked key."""
    if grant.api_key_id is not None:
        if not await apikeys.is_live(db, grant.api_key_id, grant.user_id):
            raise Unauthorized("api_key_revoked")
        return Principal(grant.user_id, "user", via="api_key", api_key_id=grant.api_key_id)
    assert grant.session_id is not None
    role = await sessions.role_if_alive(db, grant.user_id, grant.session_id, now, idle_ttl)
    if role is None:
        raise Unauthorized("session_ended")
    return Principal(grant.user_id, role, session_id=grant.session_id, expires_at=grant.expires_at)
