"""The store's schema: its version, the check on open, and upgrades through Alembic.

Opening a store reads one row (``alembic_version``) and compares it with
:data:`SCHEMA_HEAD`, without importing Alembic; creating or upgrading a
schema runs the migrations in ``migrations/`` in one transaction on SQLite,
serialised between processes (a lock file, or an advisory lock on
PostgreSQL).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event, inspect, text
from sqlalchemy.exc import DatabaseError

from .. import faults
from ..errors import DatabaseDamagedError, StoreError, StoreVersionError
from ..fstype import sqlite_file
from .engine import WRITE_OPTION, damaged, integrity_check
from .lite import SCHEMA_HEAD, SCHEMA_REVISIONS

__all__ = [
    "SCHEMA_HEAD",
    "SCHEMA_REVISIONS",
    "check_schema",
    "migrations_dir",
    "upgrade",
]



def migrations_dir() -> Path:
    """Return the directory of the Alembic environment.

    Installed wheels carry it as ``provstore/_migrations``; an editable
    checkout finds the repository's top-level ``migrations/``.
    """
    shipped = resources.files("provstore") / "_migrations"
    if shipped.is_dir():
        return Path(str(shipped))
    source = Path(__file__).resolve().parents[3] / "migrations"
    if source.is_dir():
        return source
    raise StoreError("provstore's migrations are missing from this installation; reinstall it")


def _current_revision(conn: Connection) -> str | None:
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" not in tables:
        if tables:
            raise StoreError(
                "this database holds tables but no provstore schema version "
                f"({', '.join(sorted(tables)[:5])}); it is not a provstore store"
            )
        return None
    rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if rows else None


def check_schema(engine: Engine) -> str | None:
    """Return the store's revision, or None for an empty database.

    Raises
    ------
    StoreVersionError
        The store was written by a newer provstore.
    DatabaseDamagedError
        The SQLite file is damaged (with ``PRAGMA integrity_check``'s findings).
    StoreError
        The file is not an SQLite database, or not a provstore one.
    """
    try:
        with engine.connect() as conn:
            return _checked_revision(conn, engine)
    except DatabaseDamagedError as exc:
        path = sqlite_file(str(engine.url))
        if path is None:
            raise
        cause = exc.__cause__ if exc.__cause__ is not None else str(exc)
        raise damaged(path, cause, integrity_check(path)) from exc
    except DatabaseError as exc:
        raise _not_a_store(engine, exc) from exc


def _not_a_store(engine: Engine, exc: DatabaseError) -> StoreError:
    return StoreError(
        f"{engine.url.database or engine.url} is not a provstore database "
        f"({exc.orig}); point provstore.open() at a store directory"
    )


def _checked_revision(conn: Connection, engine: Engine) -> str | None:
    try:
        revision = _current_revision(conn)
    except DatabaseError as exc:
        raise _not_a_store(engine, exc) from exc
    if revision is not None and revision not in SCHEMA_REVISIONS:
        raise StoreVersionError(
            f"the store's schema version is {revision}, newer than {SCHEMA_HEAD}, the "
            "newest this provstore knows; upgrade provstore (pip install -U provstore)"
        )
    return revision


def upgrade(engine: Engine, *, lock_path: Path | None = None) -> None:
    """Bring the schema to :data:`SCHEMA_HEAD` through Alembic (upgrade only).

    Concurrent callers are serialised, by the lock file *lock_path* next to
    an SQLite store or by a PostgreSQL advisory lock, and all but the first
    find the work done.
    """
    from alembic import command
    from alembic.config import Config

    server = engine.dialect.name != "sqlite"
    with _file_lock(None if server else lock_path), engine.connect() as conn:
        if server:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _UPGRADE_LOCK})
            conn.commit()
        try:
            if _checked_revision(conn, engine) == SCHEMA_HEAD:
                return  # another process upgraded while we waited for the lock
            conn.rollback()
            cfg = Config()
            cfg.set_main_option("script_location", str(migrations_dir()))
            cfg.attributes["connection"] = conn
            event.listen(conn, "after_cursor_execute", _schema_statement_ran)
            if not server:
                # One transaction for the whole upgrade: the driver is in
                # autocommit mode (we issue BEGIN ourselves), so without it a
                # process killed mid-migration leaves half a schema behind.
                conn.execution_options(**{WRITE_OPTION: True}).begin()
            command.upgrade(cfg, SCHEMA_HEAD)
            conn.commit()
        finally:
            if server:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _UPGRADE_LOCK})
                conn.commit()


def _schema_statement_ran(*_: Any) -> None:
    faults.hit("schema.statement")


# An arbitrary constant naming provstore's schema lock among advisory locks.
_UPGRADE_LOCK = 0x70726F76


@contextlib.contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    # Serialises first-time creation between processes opening a new SQLite
    # store at once; server databases use an advisory lock instead.
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
