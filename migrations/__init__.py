"""Alembic migrations of the fusionq schema (run with `fusionq db upgrade` or `alembic upgrade head`)."""
