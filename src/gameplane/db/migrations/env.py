"""Alembic environment. Normally entered through :mod:`gameplane.db.migrate`, which
hands over an open connection in ``config.attributes["connection"]`` (and holds
the migration lock on it). Without one — the ``alembic`` command line with
``sqlalchemy.url`` set, e.g. to write a new revision with ``--autogenerate`` —
it opens its own async engine.

Each migration runs in its own transaction. On PostgreSQL the connection gets a
``lock_timeout`` and a ``statement_timeout`` first, so a migration that would
queue behind (and block) live traffic or run away fails instead; SQLite's
busy timeout is set by the engine.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from gameplane.db.engine import create_engine
from gameplane.db.migrate import LOCK_TIMEOUT, STATEMENT_TIMEOUT, check_duration
from gameplane.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        for setting, default in (("lock_timeout", LOCK_TIMEOUT), ("statement_timeout", STATEMENT_TIMEOUT)):
            value = check_duration(setting, str(config.attributes.get(setting, default)))
            connection.exec_driver_sql(f"SET {setting} = '{value}'")
        # Commit the autobegun transaction: alembic must find the connection idle to
        # run one transaction per migration.
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        transaction_per_migration=True,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    try:
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if postgres and not connection.closed and not connection.invalidated:
            connection.rollback()
            connection.exec_driver_sql("RESET lock_timeout")
            connection.exec_driver_sql("RESET statement_timeout")
            connection.commit()


async def run_with_own_engine(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


def main() -> None:
    connection = config.attributes.get("connection")
    if context.is_offline_mode():
        context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                          literal_binds=True, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    elif connection is not None:
        run_migrations(connection)
    else:
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise RuntimeError("set sqlalchemy.url, or run migrations through gameplane.db.migrate")
        asyncio.run(run_with_own_engine(url))


main()
