"""Apply the shipped Alembic migrations, and check that they agree with the models.

The Alembic configuration is built in code (:func:`alembic_config`): no
``alembic.ini`` is needed at run time; the scripts live in
``gameplane/db/migrations`` inside the installed package.

Upgrading is idempotent and safe when several processes start at once: the
upgrade runs under a migration lock — a PostgreSQL session advisory lock, or
an ``flock`` on ``<database file>.migrate-lock`` for SQLite — and whoever comes
second finds the database at head and does nothing.

A new revision is written against a scratch database brought to head, e.g.::

    from alembic import command
    from gameplane.db.migrate import alembic_config, upgrade_sync
    upgrade_sync("sqlite:////tmp/scratch.db")
    command.revision(alembic_config("sqlite:////tmp/scratch.db"), "what changed",
                     autogenerate=True, rev_id="0002")

then read and adjust it; ``tests/db/test_migrations.py`` checks the result on
both backends.

Exception tree::

    GameplaneError
    └── MigrationError   the database could not be reached, locked or migrated,
                         or is not at head when compared (wraps the cause)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import os
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import NullPool

from gameplane.db.engine import create_engine
from gameplane.db.models import Base
from gameplane.errors import GameplaneError
from gameplane.settings import Settings, normalize_database_url

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
#: pg_advisory_lock key shared by every Gameplane process migrating one database
MIGRATION_LOCK_ID = int.from_bytes(b"gp:migr", "big")
#: how long a second migrator waits for the first one on PostgreSQL
MIGRATION_LOCK_WAIT = "10min"
#: PostgreSQL limits for each migration statement: waiting for a lock, running
LOCK_TIMEOUT = "4s"
STATEMENT_TIMEOUT = "60s"
_DURATION = re.compile(r"^\d+(ms|s|min)$")

T = TypeVar("T")


class MigrationError(GameplaneError):
    code = "migration_failed"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` pointing at the shipped scripts (and at ``url`` if given,
    for the ``alembic`` command line's own engine)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", normalize_database_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migration scripts"
    return head


async def upgrade(settings: Settings) -> None:
    """Bring ``settings.database_url`` to the newest revision."""
    await upgrade_url(settings.database_url)


def upgrade_sync(url: str) -> None:
    """Blocking :func:`upgrade_url`, for the command line. From inside a running event
    loop it runs on a helper thread (the calling thread still blocks)."""
    _run_blocking(upgrade_url(url))


async def upgrade_url(url: str, revision: str = "head", *, lock_timeout: str | None = None,
                      statement_timeout: str | None = None) -> None:
    """Upgrade the database at ``url`` to ``revision`` under the migration lock.
    On PostgreSQL each statement waits at most ``lock_timeout`` for a lock and runs
    at most ``statement_timeout`` (``"4s"``, ``"500ms"``, ``"2min"``; defaults in
    :data:`LOCK_TIMEOUT` and :data:`STATEMENT_TIMEOUT`)."""
    timeouts = _timeouts(lock_timeout, statement_timeout)
    await _with_migration_connection(url, lambda conn: _alembic(conn, "upgrade", revision, timeouts))


async def downgrade_url(url: str, revision: str, *, lock_timeout: str | None = None,
                        statement_timeout: str | None = None) -> None:
    """Downgrade to ``revision`` (``"base"`` empties the database). For tests and
    operators undoing a release; the application never downgrades by itself."""
    timeouts = _timeouts(lock_timeout, statement_timeout)
    await _with_migration_connection(url, lambda conn: _alembic(conn, "downgrade", revision, timeouts))


async def current_revision(url: str) -> str | None:
    """The database's revision, ``None`` when it was never migrated."""
    return await _with_connection(url, lambda conn: MigrationContext.configure(conn).get_current_revision())


def check_models_match_migrations(url: str) -> list[Any]:
    """Alembic's autogenerate diff between the models and the database at ``url``,
    which must be at head (migrate a scratch database first): an empty list means
    the migrations create exactly what the models describe. Blocking."""
    return _run_blocking(compare_models(url))


async def compare_models(url: str) -> list[Any]:
    """Async :func:`check_models_match_migrations`."""
    head = head_revision()

    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "compare_server_default": True,
                                                         "target_metadata": Base.metadata})
        current = context.get_current_revision()
        if current != head:
            raise MigrationError(details=f"the database is at revision {current}, the migrations' head is "
                                         f"{head}: upgrade it before comparing")
        return list(compare_metadata(context, Base.metadata))

    return await _with_connection(url, diff)


def check_duration(name: str, value: str) -> str:
    """A PostgreSQL duration safe to interpolate into ``SET``: ``4s``, ``500ms``, ``2min``."""
    if not _DURATION.match(value):
        raise ValueError(f"{name} must look like 4s, 500ms or 2min, got {value!r}")
    return value


def _timeouts(lock_timeout: str | None, statement_timeout: str | None) -> dict[str, str]:
    given = {"lock_timeout": lock_timeout, "statement_timeout": statement_timeout}
    return {name: check_duration(name, value) for name, value in given.items() if value is not None}


def _alembic(conn: Connection, action: str, revision: str, attributes: dict[str, str]) -> None:
    config = alembic_config()
    config.attributes.update(attributes)
    config.attributes["connection"] = conn
    if action == "upgrade":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)


async def _with_connection(url: str, work: Callable[[Connection], T]) -> T:
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(work)
    except (SQLAlchemyError, OSError, CommandError) as exc:
        raise MigrationError(details=f"{_safe(url)}: {exc}") from exc
    finally:
        await engine.dispose()


async def _with_migration_connection(url: str, work: Callable[[Connection], None]) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with _migration_lock(engine) as conn:
            await conn.run_sync(work)
    except (SQLAlchemyError, OSError, CommandError) as exc:
        raise MigrationError(details=f"{_safe(url)}: {exc}") from exc
    finally:
        await engine.dispose()


@asynccontextmanager
async def _migration_lock(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection holding the migration lock, idle (no open transaction)."""
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execute(text(f"SET lock_timeout = '{MIGRATION_LOCK_WAIT}'"))
            await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            await conn.execute(text("RESET lock_timeout"))
            await conn.commit()
            try:
                yield conn
            finally:
                if not conn.closed and not conn.invalidated:
                    await conn.rollback()
                    await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
                    await conn.commit()
        return
    database = engine.url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        async with engine.connect() as conn:
            yield conn
        return
    fd = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        async with engine.connect() as conn:
            yield conn
    finally:
        os.close(fd)  # releases the flock


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<database>"


def _run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
