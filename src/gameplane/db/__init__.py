"""The control plane's database: SQLAlchemy 2 async models, engines and the
Alembic migrations that ship inside this package.

- :mod:`gameplane.db.engine`: engines (SQLite WAL or PostgreSQL/asyncpg),
  session factories and :func:`~gameplane.db.engine.transaction`;
- :mod:`gameplane.db.models`: the tables;
- :mod:`gameplane.db.migrate`: ``upgrade`` to head and the models/migrations check;
- :mod:`gameplane.db.users`: password hashing and the first user service.
"""
