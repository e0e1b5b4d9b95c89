"""Alembic environment and revisions (run through :mod:`gameplane.db.migrate`)."""
