"""The shipped migrations: applied to empty databases, repeated, raced, undone,
and compared with the models."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from gameplane.db.engine import create_engine
from gameplane.db.migrate import (
    MigrationError,
    check_models_match_migrations,
    current_revision,
    downgrade_url,
    head_revision,
    upgrade,
    upgrade_sync,
    upgrade_url,
)
from gameplane.settings import load_settings

TABLES = {"users", "instances", "events", "auth_sessions", "refresh_tokens", "password_resets", "api_keys",
          "audit_events", "console_tickets", "alembic_version"}


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_migrations_create_every_table_on_an_empty_database(empty_database_url: str) -> None:
    assert await current_revision(empty_database_url) is None
    await upgrade_url(empty_database_url)
    assert await current_revision(empty_database_url) == head_revision()
    assert await _tables(empty_database_url) == TABLES


async def test_upgrading_again_changes_nothing_and_keeps_rows(empty_database_url: str) -> None:
    upgrade_sync(empty_database_url)  # blocking form, from inside a running loop
    engine = create_engine(empty_database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO events (kind, data) VALUES ('marker', '{}')"))
        await upgrade_url(empty_database_url)
        upgrade_sync(empty_database_url)
        async with engine.connect() as conn:
            kinds = (await conn.execute(text("SELECT kind FROM events"))).scalars().all()
    finally:
        await engine.dispose()
    assert kinds == ["marker"]
    assert await current_revision(empty_database_url) == head_revision()


async def test_upgrade_from_settings_uses_the_database_url(empty_database_url: str, tmp_path: Path) -> None:
    settings = load_settings({"GAMEPLANE_DATA_DIR": str(tmp_path),
                              "GAMEPLANE_DATABASE_URL": empty_database_url})
    await upgrade(settings)
    assert await current_revision(empty_database_url) == head_revision()


async def test_concurrent_upgrades_all_succeed_once(empty_database_url: str) -> None:
    """Three migrators start at once (as three API replicas would): the migration
    lock lets one create the tables; the others find the database at head."""
    await asyncio.gather(*(upgrade_url(empty_database_url) for _ in range(3)))
    assert await current_revision(empty_database_url) == head_revision()
    assert await _tables(empty_database_url) == TABLES


async def test_downgrade_to_base_removes_everything_and_upgrade_restores_it(empty_database_url: str) -> None:
    await upgrade_url(empty_database_url)
    await downgrade_url(empty_database_url, "base")
    assert await _tables(empty_database_url) == {"alembic_version"}
    assert await current_revision(empty_database_url) is None
    await upgrade_url(empty_database_url)
    assert await _tables(empty_database_url) == TABLES


def test_models_and_migrations_agree(database_url: str) -> None:
    assert check_models_match_migrations(database_url) == []


async def test_comparison_reports_a_database_that_drifted_from_the_models(fresh_database_url: str) -> None:
    engine = create_engine(fresh_database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP INDEX ix_events_instance_id_id"))
    finally:
        await engine.dispose()
    diff = check_models_match_migrations(fresh_database_url)
    assert [d[0] for d in diff] == ["add_index"] and diff[0][1].name == "ix_events_instance_id_id"


async def test_comparison_refuses_a_database_that_is_not_at_head(empty_database_url: str) -> None:
    with pytest.raises(MigrationError, match="upgrade it before comparing"):
        check_models_match_migrations(empty_database_url)


async def test_unknown_revision_is_a_migration_error(empty_database_url: str) -> None:
    with pytest.raises(MigrationError, match="nonexistent"):
        await upgrade_url(empty_database_url, "nonexistent")


async def test_unreachable_database_is_a_migration_error() -> None:
    with pytest.raises(MigrationError) as info:
        await upgrade_url("postgresql://nobody:secret@127.0.0.1:1/nothing")
    assert info.value.code == "migration_failed" and "secret" not in str(info.value.details)


async def test_postgres_migration_gives_up_on_a_held_lock(backend: str, fresh_database_url: str) -> None:
    """A migration must not queue forever behind live traffic:
    1. a reader holds a lock on every table in an open transaction (so the newest
       migration's downgrade, whichever tables it drops, is the one that waits);
    2. downgrading (DROP TABLE needs an exclusive lock) fails after the lock timeout;
    3. the failed migration's transaction is rolled back: still at head, tables intact."""
    if backend != "postgresql":
        pytest.skip("lock_timeout is a PostgreSQL setting (SQLite waits its busy timeout)")
    engine = create_engine(fresh_database_url)
    try:
        async with engine.connect() as reader:
            for table in sorted(TABLES):  # each SELECT holds ACCESS SHARE until rollback
                await reader.execute(text(f"SELECT count(*) FROM {table}"))  # noqa: S608 - fixed names
            started = time.monotonic()
            with pytest.raises(MigrationError, match="lock timeout"):
                await downgrade_url(fresh_database_url, "base", lock_timeout="300ms")
            assert time.monotonic() - started < 3
            await reader.rollback()
    finally:
        await engine.dispose()
    assert await current_revision(fresh_database_url) == head_revision()
    assert await _tables(fresh_database_url) == TABLES

