"""Password hashing and the user service."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gameplane.db import users
from gameplane.db.models import User
from gameplane.db.users import create_user, get_user_by_email, hash_password, verify_password
from gameplane.errors import Conflict, Unprocessable


def test_password_hashes_are_argon2id_and_verify() -> None:
    digest = hash_password("correct horse")
    assert digest.startswith("$argon2id$v=19$")
    assert verify_password(digest, "correct horse")
    assert not verify_password(digest, "Correct horse")
    assert hash_password("correct horse") != digest, "salted"
    assert not users.password_needs_rehash(digest)


def test_verify_is_false_for_a_malformed_hash() -> None:
    assert not verify_password("not-a-hash", "whatever")
    assert not verify_password("", "whatever")


async def test_create_user_stores_a_lowercased_email_and_a_hash(db_session: AsyncSession) -> None:
    user = await create_user(db_session, "  Alice@Example.COM ", "s3cret-pass", "admin")
    await db_session.commit()
    assert user.id and user.email == "alice@example.com" and user.role == "admin"
    assert user.password_hash.startswith("$argon2id$") and verify_password(user.password_hash, "s3cret-pass")
    assert await get_user_by_email(db_session, "ALICE@example.com") == user


async def test_email_is_taken_whatever_its_letter_case(db_session: AsyncSession) -> None:
    await create_user(db_session, "bob@example.com", "password1")
    with pytest.raises(Conflict) as info:
        await create_user(db_session, "BOB@Example.com", "password2")
    assert info.value.status == 409
    assert info.value.envelope() == {"error": "email_taken", "details": {"email": "bob@example.com"}}


async def test_losing_an_insert_race_is_email_taken_and_keeps_the_transaction(
        db_session: AsyncSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-check misses a row a concurrent request just inserted: the unique
    constraint fires inside a savepoint, and the caller's transaction stays usable."""
    await create_user(db_session, "carol@example.com", "password1")
    real = users.get_user_by_email
    calls = 0

    async def misses_once(session: AsyncSession, email: str) -> User | None:
        nonlocal calls
        calls += 1
        return None if calls == 1 else await real(session, email)

    monkeypatch.setattr(users, "get_user_by_email", misses_once)
    with pytest.raises(Conflict, match="email_taken"):
        await create_user(db_session, "Carol@example.com", "password2")
    assert await db_session.scalar(select(func.count()).select_from(User)) == 1


@pytest.mark.parametrize(("email", "password", "role", "code"), [
    ("not-an-email", "password1", "user", "invalid_email"),
    ("a@b", "password1", "user", "invalid_email"),
    ("a b@example.com", "password1", "user", "invalid_email"),
    ("dave@example.com", "short", "user", "password_too_short"),
    ("dave@example.com", "x" * 2000, "user", "password_too_long"),
    ("dave@example.com", "password1", "root", "invalid_role"),
])
async def test_create_user_refuses_bad_input(db_session: AsyncSession, email: str, password: str, role: str,
                                             code: str) -> None:
    with pytest.raises(Unprocessable) as info:
        await create_user(db_session, email, password, role)  # type: ignore[arg-type]
    assert info.value.code == code and info.value.status == 422
    assert await db_session.scalar(select(func.count()).select_from(User)) == 0


async def test_unknown_email_is_none(db_session: AsyncSession) -> None:
    assert await get_user_by_email(db_session, "nobody@example.com") is None
