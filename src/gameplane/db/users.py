"""Users: password hashing and the few operations ``gameplane up`` needs.

Passwords are hashed with argon2id (argon2-cffi's RFC 9106 low-memory profile).
Hashing takes tens of milliseconds of CPU, so the async functions run it on a
worker thread. Emails are stored stripped and lowercased, which makes the
unique constraint case-insensitive.

The service functions work inside the caller's transaction (they flush, never
commit), e.g. ``async with transaction(sessions) as session: await create_user(...)``.

Errors (``gameplane.errors``): ``Unprocessable`` ``invalid_email`` /
``password_too_short`` / ``password_too_long`` / ``invalid_role``;
``Conflict`` ``email_taken``.
"""

from __future__ import annotations

import asyncio
import re

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gameplane.db.models import ROLES, Role, User
from gameplane.errors import Conflict, Unprocessable

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
MAX_EMAIL_LENGTH = 254
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_hasher = PasswordHasher(type=Type.ID)


def hash_password(password: str) -> str:
    """An argon2id PHC string (``$argon2id$v=19$m=...``)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches; ``False`` for a malformed hash as well."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with other parameters than today's (rehash at login)."""
    return _hasher.check_needs_rehash(password_hash)


def normalize_email(email: str) -> str:
    """Stripped and lowercased; raises ``Unprocessable("invalid_email")`` if it is not
    shaped like ``name@host.tld``."""
    value = email.strip().lower()
    if len(value) > MAX_EMAIL_LENGTH or not _EMAIL.match(value):
        raise Unprocessable("invalid_email", {"email": email})
    return value


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Unprocessable("password_too_short", {"minLength": MIN_PASSWORD_LENGTH})
    if len(password) > MAX_PASSWORD_LENGTH:
        raise Unprocessable("password_too_long", {"maxLength": MAX_PASSWORD_LENGTH})


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    value = email.strip().lower()
    return (await session.execute(select(User).where(User.email == value))).scalar_one_or_none()


async def create_user(session: AsyncSession, email: str, password: str, role: Role = "user") -> User:
    """Add a user and flush it (its ``id`` is set); the caller commits.
    Raises ``Conflict("email_taken")`` when the email exists in any letter case."""
    address = normalize_email(email)
    check_password(password)
    if role not in ROLES:
        raise Unprocessable("invalid_role", {"role": role, "expected": list(ROLES)})
    if await get_user_by_email(session, address) is not None:
        raise Conflict("email_taken", {"email": address})
    user = User(email=address, password_hash=await asyncio.to_thread(hash_password, password), role=role)
    try:
        # A savepoint, so that losing a race with a concurrent insert leaves the
        # caller's transaction usable.
        async with session.begin_nested():
            session.add(user)
    except IntegrityError as exc:
        if await get_user_by_email(session, address) is not None:
            raise Conflict("email_taken", {"email": address}) from exc
        raise
    return user
