"""Alembic migrations for the SQL schema; run them with `tollgate migrate`."""
