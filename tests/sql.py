"""Plain SQL on a store's database, whichever it is (SQLite file or PostgreSQL).

Tests inspect and tamper with rows through their own connection, as a user
with ``sqlite3`` or ``psql`` would, not through provstore's caches.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from provstore.api import database_url


def sql(location: str | os.PathLike[str], statement: str, params: dict[str, Any] | None = None,
        *, write: bool = False) -> list[dict[str, Any]]:
    """Run *statement* on the database of the store at *location*; return its rows.

    Parameters use SQLAlchemy's ``:name`` style. ``write=True`` commits.
    """
    engine = create_engine(database_url(Path(location).absolute(), None, create=False),
                           poolclass=NullPool)
    try:
        with engine.connect() as conn:
            result = conn.execute(text(statement), params or {})
            rows = [dict(r._mapping) for r in result] if result.returns_rows else []
            if write:
                conn.commit()
            return rows
    finally:
        engine.dispose()


def scalar(location: str | os.PathLike[str], statement: str,
           params: dict[str, Any] | None = None) -> Any:
    """Return the first column of the first row of *statement*."""
    rows = sql(location, statement, params)
    return next(iter(rows[0].values())) if rows else None


def timestamp(value: str | dt.datetime) -> dt.datetime:
    """A timestamp column's value: SQLite returns text, PostgreSQL a datetime."""
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
