"""Database fixtures: every test that takes one runs twice, on SQLite and on a
real PostgreSQL.

- ``database_url``: a database migrated with the shipped migrations, one per
  backend per test session (PostgreSQL: ``gameplane_test_<random>``, created at
  the start and dropped at the end). Tests must not commit into it directly:
- ``db_session``: an ``AsyncSession`` inside an outer transaction that is rolled
  back after the test; ``session.commit()`` only releases a savepoint, so tests
  never see each other's rows;
- ``fresh_database_url``: a migrated database of the test's own, for code that
  opens its own engine and commits (slower on PostgreSQL: one CREATE DATABASE);
- ``empty_database_url``: an unmigrated database of the test's own.

PostgreSQL is reached through ``GAMEPLANE_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``, a user that may create
databases); when it cannot be reached the PostgreSQL cases are skipped with the
reason (and fail under CI). ``tests/conftest.py`` registers this module for
the whole suite (``pytest_plugins``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from gameplane.db.engine import create_engine
from gameplane.db.migrate import upgrade_sync
from gameplane.settings import normalize_database_url

BACKENDS = ["sqlite", "postgresql"]
POSTGRES_ADMIN_URL = os.environ.get("GAMEPLANE_TEST_POSTGRES_URL",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")


class Postgres:
    """Creates and drops scratch databases next to the admin database."""

    def __init__(self, admin_url: str):
        self.admin_url = make_url(normalize_database_url(admin_url))

    async def _admin(self, sql: str) -> None:
        engine = create_async_engine(self.admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    def url_of(self, name: str) -> str:
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def create(self, prefix: str = "gameplane_test") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        asyncio.run(self._admin(f'CREATE DATABASE "{name}"'))
        return name

    def drop(self, name: str) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    server = Postgres(POSTGRES_ADMIN_URL)
    try:
        asyncio.run(server._admin("SELECT 1"))
    except Exception as exc:  # any failure means "not available here"
        reason = (f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} "
                  f"(set GAMEPLANE_TEST_POSTGRES_URL): {exc}")
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI must test both backends, never skip one silently
        pytest.skip(reason)
    return server


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'gameplane.db'}"
    upgrade_sync(url)
    return url


@pytest.fixture(scope="session")
def postgresql_database_url(postgres: Postgres) -> Iterator[str]:
    name = postgres.create()
    try:
        url = postgres.url_of(name)
        upgrade_sync(url)
        yield url
    finally:
        postgres.drop(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The session's migrated database for this backend (share it: see db_session)."""
    return str(request.getfixturevalue(f"{backend}_database_url"))


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own, with no tables."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    postgres: Postgres = request.getfixturevalue("postgres")
    name = postgres.create("gameplane_test_empty")
    try:
        yield postgres.url_of(name)
    finally:
        postgres.drop(name)


@pytest.fixture
def fresh_database_url(empty_database_url: str) -> str:
    """A migrated database of this test's own: commit into it freely."""
    upgrade_sync(empty_database_url)
    return empty_database_url


@pytest.fixture
async def db_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def db_connection(db_engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction rolled back after the test."""
    async with db_engine.connect() as conn:
        outer = await conn.begin()
        try:
            yield conn
        finally:
            await outer.rollback()


@pytest.fixture
async def db_session(db_connection: AsyncConnection) -> AsyncIterator[AsyncSession]:
    """A session whose commits are savepoints of the rolled-back outer transaction."""
    session = AsyncSession(bind=db_connection, join_transaction_mode="create_savepoint",
                           expire_on_commit=False)
    try:
        yield session
    finally:
        await session.close()
