"""Database layer: SQLAlchemy 2 tables, engines, and keyword-only data-access functions."""
