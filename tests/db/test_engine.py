"""Engines, sessions and transactions on both backends."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from gameplane.db.engine import (
    create_engine,
    create_engine_from_settings,
    create_session_factory,
    transaction,
)
from gameplane.db.models import Event
from gameplane.settings import load_settings


async def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(db_engine: AsyncEngine,
                                                                           backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite pragmas")
    async with db_engine.connect() as conn:
        pragmas = {name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                   for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")}
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000, "synchronous": 1}


async def test_postgres_engine_uses_asyncpg(db_engine: AsyncEngine, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL driver")
    assert db_engine.dialect.driver == "asyncpg"
    async with db_engine.connect() as conn:
        assert (await conn.execute(text("SHOW TimeZone"))).scalar() is not None


async def test_engine_from_default_settings_creates_the_sqlite_file_in_data_dir(tmp_path: Path) -> None:
    settings = load_settings({"GAMEPLANE_DATA_DIR": str(tmp_path / "data")})
    engine = create_engine_from_settings(settings)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
    assert (tmp_path / "data" / "gameplane.db").is_file()
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700


async def test_transaction_commits_on_success_and_rolls_back_on_error(fresh_database_url: str) -> None:
    engine = create_engine(fresh_database_url)
    sessions = create_session_factory(engine)

    async def add_then_fail() -> None:
        async with transaction(sessions) as session:
            session.add(Event(kind="dropped", data={}))
            await session.flush()
            raise RuntimeError("boom")

    try:
        async with transaction(sessions) as session:
            session.add(Event(kind="kept", data={}))
        with pytest.raises(RuntimeError, match="boom"):
            await add_then_fail()
        async with sessions() as session:
            kinds = (await session.execute(select(Event.kind))).scalars().all()
    finally:
        await engine.dispose()
    assert kinds == ["kept"]


async def test_concurrent_read_then_write_transactions_both_commit(fresh_database_url: str) -> None:
    """Two write transactions each read, pause, then write. On SQLite a deferred
    BEGIN would let the second fail with "database is locked"; transaction()
    begins IMMEDIATE so the second waits its turn instead."""
    engine = create_engine(fresh_database_url)
    sessions = create_session_factory(engine)

    async def read_then_write(kind: str) -> None:
        async with transaction(sessions) as session:
            await session.scalar(select(func.count()).select_from(Event))
            await asyncio.sleep(0.2)
            session.add(Event(kind=kind, data={}))

    try:
        await asyncio.gather(read_then_write("a"), read_then_write("b"))
        async with sessions() as session:
            kinds = sorted((await session.execute(select(Event.kind))).scalars().all())
    finally:
        await engine.dispose()
    assert kinds == ["a", "b"]


async def test_a_rolled_back_savepoint_keeps_the_outer_work(db_session: AsyncSession) -> None:
    db_session.add(Event(kind="outer", data={}))
    await db_session.flush()
    nested = await db_session.begin_nested()
    db_session.add(Event(kind="inner", data={}))
    await db_session.flush()
    await nested.rollback()
    kinds = (await db_session.execute(select(Event.kind))).scalars().all()
    assert kinds == ["outer"]
