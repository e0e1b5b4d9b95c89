"""The account and access lifecycle: one method per route, each one transaction
that records its audit event with it; mail goes out after commit, in the
background.

Errors (``gameplane.errors``): ``Unauthorized`` ``invalid_credentials`` /
``invalid_token`` / ``token_expired`` / ``session_ended`` / ``token_reused`` /
``login_required``; ``BadRequest`` ``invalid_reset_token``; ``Unprocessable``
``wrong_password`` and those of ``gameplane.db.users``; ``Forbidden``
``admin_only``; ``RateLimited``; ``NotFound`` for another user's API key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gameplane.auth import apikeys, audit, reset, sessions
from gameplane.auth.mail import Mail, Mailer
from gameplane.auth.principal import Principal
from gameplane.auth.ratelimit import RateLimiter
from gameplane.auth.tokens import AccessTokens, new_secret
from gameplane.db.engine import transaction
from gameplane.db.models import ApiKey, AuditEvent, User, utcnow
from gameplane.db.users import (
    check_password,
    create_user,
    get_user_by_email,
    hash_password,
    password_needs_rehash,
    verify_password,
)
from gameplane.errors import BadRequest, Forbidden, Unauthorized, Unprocessable
from gameplane.settings import Settings

log = logging.getLogger(__name__)


class AuthService:
    def __init__(self, settings: Settings, db: async_sessionmaker[AsyncSession], mailer: Mailer,
                 *, clock: Callable[[], datetime] = utcnow, limiter: RateLimiter | None = None):
        self.settings = settings
        self.db = db
        self.mailer = mailer
        self.clock = clock
        self.limiter = limiter or RateLimiter(settings.rate_limit_window)
        self.tokens = AccessTokens(settings.secret_key.get_secret_value(), settings.public_url,
                                   settings.access_token_ttl)
        # Verified against when the account does not exist, so a failed login costs
        # one argon2 either way and its timing does not tell whether the email is known.
        self._decoy_hash = hash_password(new_secret())
        self._tasks: set[asyncio.Task[None]] = set()

    # -- rate limits ---------------------------------------------------------------------------
    def _limit(self, action: str, address: str, account: str | None = None) -> None:
        keys = [(f"{action}:address:{address}", self.settings.rate_limit_per_address)]
        if account is not None:
            keys.append((f"{action}:account:{account}", self.settings.rate_limit_per_account))
        self.limiter.hit(*keys)

    # -- tokens --------------------------------------------------------------------------------
    def _pair(self, user_id: str, rotated: sessions.Rotated, now: datetime) -> dict[str, Any]:
        return {"accessToken": self.tokens.issue(user_id, rotated.session.id, now),
                "refreshToken": rotated.refresh_token, "tokenType": "bearer",
                "expiresIn": self.settings.access_token_ttl}

    async def authenticate(self, token: str) -> Principal:
        if token.startswith(apikeys.PREFIX):
            async with self.db() as db:
                owner = await apikeys.owner_of(db, token)
            if owner is None:
                raise Unauthorized("invalid_token")
            return Principal(owner[0], "user", via="api_key", api_key_id=owner[1])
        claims = self.tokens.decode(token)
        async with self.db() as db:
            role = await sessions.role_if_alive(db, claims.user_id, claims.session_id, self.clock(),
                                                self.settings.session_idle_ttl)
        if role is None:
            raise Unauthorized("session_ended")
        return Principal(claims.user_id, role, session_id=claims.session_id, expires_at=claims.expires_at)

    @staticmethod
    def _require_login(principal: Principal) -> str:
        """Credentials are managed from a login session, never with an API key."""
        if principal.session_id is None:
            raise Unauthorized("login_required", {"reason": "API keys cannot manage credentials"})
        return principal.session_id

    # -- accounts ------------------------------------------------------------------------------
    async def register(self, email: str, password: str, address: str) -> User:
        self._limit("register", address)
        async with transaction(self.db) as db:
            user = await create_user(db, email, password, "user")
            audit.record(db, "register", user.id, address)
        return user

    async def me(self, principal: Principal) -> User:
        async with self.db() as db:
            user = await db.get(User, principal.user_id)
        if user is None:
            raise Unauthorized("invalid_token")
        return user

    async def login(self, email: str, password: str, address: str) -> dict[str, Any]:
        account = email.strip().lower()
        self._limit("login", address, account)
        async with transaction(self.db) as db:
            user = await get_user_by_email(db, account)
            ok = await asyncio.to_thread(verify_password, user.password_hash if user else self._decoy_hash,
                                         password)
            if user is None or not ok:
                audit.record(db, "login_failed", user.id if user else None, address, email=account)
            else:
                if password_needs_rehash(user.password_hash):
                    user.password_hash = await asyncio.to_thread(hash_password, password)
                now = self.clock()
                rotated = await sessions.open_session(db, user.id, now, self.settings.session_max_ttl)
                audit.record(db, "login", user.id, address, session=rotated.session.id)
                return self._pair(user.id, rotated, now)
        # Raised after the commit: the failed attempt stays in the audit log.
        raise Unauthorized("invalid_credentials")

    async def refresh(self, token: str, address: str) -> dict[str, Any]:
        self._limit("refresh", address)  # per address: the token names no account until looked up
        now = self.clock()
        async with transaction(self.db) as db:
            outcome = await sessions.rotate(db, token, now, self.settings.session_idle_ttl)
            if isinstance(outcome, sessions.Reused):
                audit.record(db, "token_reuse", outcome.session.user_id, address,
                             session=outcome.session.id)
            elif outcome is not None:
                return self._pair(outcome.session.user_id, outcome, now)
        # After the commit: a reuse must revoke the family even though this request fails.
        if isinstance(outcome, sessions.Reused):
            raise Unauthorized("token_reused", {"reason": "this session was revoked: log in again"})
        raise Unauthorized("invalid_token")

    async def logout(self, token: str, address: str) -> None:
        """Idempotent: an unknown or already revoked token is not an error."""
        async with transaction(self.db) as db:
            family = await sessions.find_by_token(db, token)
            if family is not None and family.revoked_at is None:
                await sessions.revoke(db, family, "logout", self.clock())
                audit.record(db, "logout", family.user_id, address, session=family.id)

    async def logout_all(self, principal: Principal, address: str) -> int:
        self._require_login(principal)
        async with transaction(self.db) as db:
            count = await sessions.revoke_all(db, principal.user_id, "logout_all", self.clock())
            audit.record(db, "logout_all", principal.user_id, address, sessions=count)
        return count

    # -- passwords -----------------------------------------------------------------------------
    async def _set_password(self, db: AsyncSession, user: User, new_hash: str, reason: str,
                            address: str) -> None:
        """New hash; every session and reset token of the user dies with the old password."""
        now = self.clock()
        user.password_hash = new_hash
        await sessions.revoke_all(db, user.id, reason, now)
        await reset.void_all(db, user.id, now)
        audit.record(db, reason, user.id, address)

    def _notify_password_changed(self, user: User) -> None:
        self._background(self.mailer.send(Mail(
            user.email, "Your Gameplane password was changed",
            f"The password of your Gameplane account {user.email} was just changed, and every "
            "session was logged out.\n\nIf this was not you, reset your password now at "
            f"{self.settings.public_url} and contact your provider.\n")))

    async def change_password(self, principal: Principal, current: str, new: str, address: str) -> None:
        self._require_login(principal)
        check_password(new)
        self._limit("password", address, principal.user_id)
        async with transaction(self.db) as db:
            user = await db.get_one(User, principal.user_id)
            if not await asyncio.to_thread(verify_password, user.password_hash, current):
                raise Unprocessable("wrong_password")
            await self._set_password(db, user, await asyncio.to_thread(hash_password, new),
                                     "password_changed", address)
        self._notify_password_changed(user)

    async def forgot(self, email: str, address: str) -> None:
        """Answers the same whether or not the account exists: the lookup, the token
        and the mail all happen in the background, after the response."""
        account = email.strip().lower()
        self._limit("forgot", address, account)
        self._background(self._send_reset(account, address))

    async def _send_reset(self, account: str, address: str) -> None:
        async with transaction(self.db) as db:
            user = await get_user_by_email(db, account)
            audit.record(db, "password_reset_requested", user.id if user else None, address,
                         email=account, known=user is not None)
            if user is None:
                return
            token = await reset.issue(db, user.id, self.clock(), self.settings.reset_token_ttl)
        minutes = self.settings.reset_token_ttl // 60
        await self.mailer.send(Mail(
            user.email, "Reset your Gameplane password",
            f"Someone asked to reset the password of your Gameplane account {user.email}.\n\n"
            f"Choose a new password here (the link works once, for {minutes} minutes):\n"
            f"{reset.link(self.settings.public_url, token)}\n\n"
            "If this was not you, ignore this mail: your password stays as it is.\n"))

    async def reset(self, token: str, password: str, address: str) -> None:
        # Per address only: the account is unknown until the token is (a per-token
        # key would not slow down guessing, which tries a new token every time).
        self._limit("reset", address)
        check_password(password)
        new_hash = await asyncio.to_thread(hash_password, password)
        async with transaction(self.db) as db:
            user_id = await reset.consume(db, token, self.clock())
            if user_id is None:
                raise BadRequest("invalid_reset_token", {"reason": "unknown, used, superseded or expired"})
            user = await db.get_one(User, user_id)
            await self._set_password(db, user, new_hash, "password_reset", address)
        self._notify_password_changed(user)

    # -- API keys ------------------------------------------------------------------------------
    async def create_api_key(self, principal: Principal, name: str, address: str) -> tuple[ApiKey, str]:
        self._require_login(principal)
        async with transaction(self.db) as db:
            row, key = await apikeys.create(db, principal.user_id, name, self.clock())
            audit.record(db, "api_key_created", principal.user_id, address, key=row.id, name=row.name)
        return row, key

    async def list_api_keys(self, principal: Principal) -> list[ApiKey]:
        async with self.db() as db:
            return await apikeys.list_for(db, principal.user_id)

    async def revoke_api_key(self, principal: Principal, key_id: str, address: str) -> None:
        self._require_login(principal)
        async with transaction(self.db) as db:
            await apikeys.revoke(db, principal.user_id, key_id, self.clock())
            audit.record(db, "api_key_revoked", principal.user_id, address, key=key_id)

    # -- audit ---------------------------------------------------------------------------------
    async def audit_page(self, principal: Principal, *, before: int | None, limit: int,
                         user_id: str | None, kind: str | None) -> list[AuditEvent]:
        if not principal.is_admin:
            raise Forbidden("admin_only")
        async with self.db() as db:
            return await audit.page(db, before=before, limit=limit, user_id=user_id, kind=kind)

    # -- background work -----------------------------------------------------------------------
    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("auth background work failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for the mail in flight (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def shutdown(self, timeout: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self.drain(), timeout)
        except TimeoutError:
            for task in self._tasks:
                task.cancel()
