"""Database layer tests: each runs on SQLite and PostgreSQL (see conftest.py)."""
