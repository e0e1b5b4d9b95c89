"""Engines and sessions.

SQLite (the embedded default) is opened through aiosqlite with, on every new
connection: ``journal_mode=WAL``, ``foreign_keys=ON``, ``synchronous=NORMAL``
and a ``busy_timeout``. SQLAlchemy, not the sqlite3 driver, emits ``BEGIN``,
so transactions, SAVEPOINTs and DDL behave as on PostgreSQL (the driver's
legacy mode would skip BEGIN before SELECT, DDL and SAVEPOINT). Write
transactions opened with :func:`transaction` begin ``IMMEDIATE``: they take
SQLite's write lock up front and wait for it (busy timeout) instead of failing
with "database is locked" when a read-then-write transaction loses a race.

PostgreSQL goes through asyncpg with a pre-ping on checkout.

Typical use::

    engine = create_engine_from_settings(settings)
    sessions = create_session_factory(engine)
    async with transaction(sessions) as session:
        session.add(...)
    # committed here; rolled back if the block raised
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from gameplane.settings import Settings, normalize_database_url

SQLITE_BUSY_TIMEOUT_MS = 5000
#: connection execution option read by the SQLite ``begin`` hook: DEFERRED | IMMEDIATE | EXCLUSIVE
SQLITE_BEGIN = "gameplane_sqlite_begin"
_BEGIN_MODES = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})


def create_engine_from_settings(settings: Settings, **kwargs: Any) -> AsyncEngine:
    """The engine for ``settings.database_url``; ``kwargs`` go to ``create_async_engine``."""
    return create_engine(settings.database_url, **kwargs)


def create_engine(url: str, *, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, **kwargs: Any
                  ) -> AsyncEngine:
    """An async engine for a SQLite or PostgreSQL URL (any spelling
    :func:`gameplane.settings.normalize_database_url` accepts). For a SQLite file,
    its folder is created if missing."""
    parsed = make_url(normalize_database_url(url))
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed, **kwargs)
        _configure_sqlite(engine.sync_engine, sqlite_busy_timeout_ms)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(parsed, **kwargs)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Take BEGIN away from the driver (see the module docstring); COMMIT and
        # ROLLBACK still go through it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = str(conn.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")).upper()
        if mode not in _BEGIN_MODES:
            raise ValueError(f"{SQLITE_BEGIN} must be one of {sorted(_BEGIN_MODES)}, got {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit (no implicit IO on access)."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session inside one write transaction: committed when the block exits,
    rolled back if it raises. On SQLite the transaction begins IMMEDIATE."""
    async with sessions() as session, session.begin():
        bind = session.bind
        if bind is not None and bind.dialect.name == "sqlite":
            await session.connection(execution_options={SQLITE_BEGIN: "IMMEDIATE"})
        yield session
