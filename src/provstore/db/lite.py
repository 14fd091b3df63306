"""SQLite on its own connection, without SQLAlchemy: open, a hit's reads, the run record.

Importing SQLAlchemy costs a process ~0.17 s, and tearing its modules down at
exit ~0.06 s more: most of the wall time of a script that opens a store and
gets one cached result. On SQLite that script needs few statements: the
schema version, the finished call, its outputs and artifacts, and at exit
the run's record and the calls' reuse times. This module runs exactly those
on per-thread ``sqlite3`` connections, configured as the engine's are (WAL,
busy timeout, foreign keys, synchronous), with the statements of
:mod:`provstore.db.lite_sql`: the Core statements of
:mod:`provstore.db.queries` compiled for SQLite once, ahead of time
(``tests/test_lite.py`` compiles them again and compares).

Anything SQLite reports here is not turned into provstore's errors: a read
returns None and a write raises :class:`LiteFailed` after rolling back, and
the caller runs the same statement through SQLAlchemy
(:mod:`provstore.db.engine`), which gives every error its provstore form or
retries. SQLite statements and transactions are atomic, so a failed attempt
left nothing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import os
import random
import sqlite3
import threading
import time
import weakref
from collections import namedtuple
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from .. import faults
from ..objects import storage_error

__all__ = [
    "BUSY_TIMEOUT_MS", "SCHEMA_HEAD", "SCHEMA_REVISIONS", "Lite", "LiteFailed", "RowShape",
    "Rows", "Statement", "configure", "immediate", "readonly_reason", "readonly_uri",
    "timestamp_text",
]

BUSY_TIMEOUT_MS = 60_000
# Alembic revisions in order; the last is what this code writes. Keeping them
# here lets `open()` compare versions without importing Alembic (~100 ms) or
# SQLAlchemy.
SCHEMA_REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005")
SCHEMA_HEAD = SCHEMA_REVISIONS[-1]
T = TypeVar("T")


def configure(conn: sqlite3.Connection, synchronous: str, readonly: bool) -> Any:
    """Apply provstore's settings to a new connection; return the journal mode row."""
    cur = conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if readonly:
        # query_only: even a bug cannot write through this connection.
        cur.execute("PRAGMA query_only=ON")
        mode = None
    else:
        cur.execute("PRAGMA foreign_keys=ON")
        mode = _set_wal(cur)
        cur.execute(f"PRAGMA synchronous={synchronous}")
    cur.close()
    return mode


def _set_wal(cur: sqlite3.Cursor) -> Any:
    # Two processes turning one new file to WAL at once both hold a shared
    # lock and want an exclusive one; SQLite answers one "database is locked"
    # at once instead of waiting its busy timeout (28 of 400 connections in
    # tests/test_db.py). Once the other's switch is done, WAL is a no-op.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            return cur.execute("PRAGMA journal_mode=WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.1)


def readonly_uri(path: Path) -> str:
    """The ``file:`` URI that opens *path* without writing anything next to it."""
    # While a writer is connected (or one was killed) its -wal file holds
    # commits not yet in the main file: mode=ro reads them through the -shm
    # index that SQLite left. Without a -wal everything is in the main file,
    # and immutable=1 reads it with no -shm file and no locks, which is the
    # only way into a WAL database in a directory this user cannot write.
    # (A writer that starts later is not seen by such a reader.)
    wal = Path(f"{path}-wal")
    mode = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    return f"file:{quote(str(path))}?{mode}"


def readonly_reason(path: Path) -> str | None:
    """Why this process cannot write the SQLite file *path*, or None when it can.

    A missing file is writable when its directory is (it is being created).
    """
    directory = path.parent
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is not writable by this user"
    if directory.exists() and not os.access(directory, os.W_OK):
        # SQLite creates its -wal and -shm files there.
        return f"its directory {directory} is not writable by this user"
    return None


class RowShape(Protocol):
    """How a statement's raw rows become rows: the conversion of each column."""

    @property
    def results(self) -> Sequence[Callable[[Any], Any] | None]:
        """Each column's conversion, or None."""

    def row(self, raw: Sequence[Any]) -> Any:
        """*raw* converted, with its columns by attribute."""


class Rows:
    """The fetched result of one statement: its rows and the count of rows it changed.

    Rows are converted (timestamps parsed, columns named) only when asked
    for: most statements are asked for one value, or none.
    """

    __slots__ = ("_raw", "_shape", "rowcount")

    def __init__(self, rows: Sequence[Any], rowcount: int, shape: RowShape | None = None) -> None:
        self._raw = rows
        self.rowcount = rowcount
        self._shape = shape

    @property
    def rows(self) -> list[Any]:
        """Every row (columns by attribute)."""
        if self._shape is None:
            return list(self._raw)
        return [self._shape.row(r) for r in self._raw]

    def first(self) -> Any:
        """The first row (columns by attribute), or None."""
        if not self._raw:
            return None
        row = self._raw[0]
        return row if self._shape is None else self._shape.row(row)

    def scalar(self) -> Any:
        """The first column of the first row, or None."""
        return self._value() if self._raw else None

    def scalar_one(self) -> Any:
        """The first column of the only row."""
        if len(self._raw) != 1:
            raise ValueError(f"expected one row, got {len(self._raw)}")
        return self._value()

    def _value(self) -> Any:
        value = self._raw[0][0]
        if self._shape is None or value is None:
            return value
        convert = self._shape.results[0]
        return value if convert is None else convert(value)


def _to_datetime(value: Any) -> Any:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def timestamp_text(value: dt.datetime) -> str:
    """*value* as SQLAlchemy stores an SQLite DateTime: always with microseconds, no zone.

    Stored times then sort as text; a naive datetime (provstore's, in UTC)
    takes the fast path.
    """
    if value.tzinfo is not None:
        value = value.replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def _from_datetime(value: Any) -> Any:
    return timestamp_text(value) if isinstance(value, dt.datetime) else value


def _to_bool(value: Any) -> Any:
    return value if value is None else bool(value)


def _from_bool(value: Any) -> Any:
    return value if value is None else int(value)


Convert = Callable[[Any], Any]
_RESULT: dict[str, Convert] = {"datetime": _to_datetime, "bool": _to_bool}
_BIND: dict[str, Convert] = {"datetime": _from_datetime, "bool": _from_bool}


class Statement:
    """One statement compiled for SQLite: its text, parameters and result columns.

    *params* and *columns* are ``(name, kind)`` pairs, *kind* naming a
    conversion (``"datetime"``, ``"bool"``) or None; *constants* are the
    values of parameters the statement fixes itself (``LIMIT 1``).
    """

    __slots__ = ("_binds", "_row", "columns", "constants", "params", "results", "sql")

    def __init__(self, sql: str, params: tuple[tuple[str, str | None], ...],
                 columns: tuple[tuple[str, str | None], ...],
                 constants: dict[str, Any] | None = None) -> None:
        self.sql, self.params, self.columns = sql, params, columns
        self.constants = constants or {}
        self._binds = [(name, _BIND.get(kind or "")) for name, kind in params]
        self.results = [_RESULT.get(kind or "") for _, kind in columns]
        self._row: Any = None  # made on first use: a namedtuple class costs ~0.5 ms

    def bound(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """The positional parameters for *values* (every parameter must be given)."""
        if self.constants:
            values = {**self.constants, **values}
        return tuple(values[name] if convert is None else convert(values[name])
                     for name, convert in self._binds)

    def row(self, raw: Sequence[Any]) -> Any:
        """*raw* converted, with its columns by attribute."""
        if self._row is None:
            self._row = namedtuple("Row", [c for c, _ in self.columns], rename=True)  # type: ignore[misc]
        return self._row._make(v if c is None or v is None else c(v)
                               for c, v in zip(self.results, raw))


def immediate(conn: sqlite3.Connection, body: Callable[[sqlite3.Cursor], T]) -> T:
    """Run *body* on a cursor of *conn* in one ``BEGIN IMMEDIATE`` transaction; return its result.

    Any error rolls the transaction back and propagates. The fault points are
    those of every provstore write (``txn.before_commit``, ``txn.after_commit``).
    """
    cursor = conn.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE")
        result = body(cursor)
        faults.hit("txn.before_commit")
        cursor.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    finally:
        cursor.close()
    faults.hit("txn.after_commit")
    return result


class LiteFailed(Exception):
    """SQLite reported an error on the lite connection; the transaction was rolled back."""


class Tx:
    """An open write transaction on a lite connection."""

    __slots__ = ("cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.cursor = cursor

    def execute(self, stmt: Statement, params: dict[str, Any] | list[dict[str, Any]]) -> Rows:
        """Run *stmt* with *params* (a list of dicts: once per dict, no rows back)."""
        if isinstance(params, list):
            self.cursor.executemany(stmt.sql, [stmt.bound(p) for p in params])
            return Rows((), self.cursor.rowcount)
        self.cursor.execute(stmt.sql, stmt.bound(params))
        return Rows(self.cursor.fetchall(), self.cursor.rowcount, stmt)


class Lite:
    """One ``sqlite3`` connection per thread (and per process after fork) to one file."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL", readonly: bool = False) -> None:
        self.path = path
        self.synchronous = synchronous
        self.readonly = readonly
        self._local = threading.local()
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        _LITES.add(self)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened and configured on first use."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            if self.readonly:
                conn = _Connection(readonly_uri(self.path), uri=True, isolation_level=None,
                                   check_same_thread=False)
            else:
                conn = _Connection(str(self.path), isolation_level=None, check_same_thread=False)
            try:
                mode = configure(conn, self.synchronous, self.readonly)
            except BaseException:
                conn.close()
                raise
            if mode is not None and str(mode[0]).lower() != "wal":
                conn.close()
                raise sqlite3.OperationalError(f"SQLite refused WAL mode (got {mode[0]!r})")
            local.conn, local.pid = conn, os.getpid()
            self._all.add(conn)
        found: sqlite3.Connection = local.conn
        return found

    def read(self, stmt: Statement, params: dict[str, Any]) -> Rows | None:
        """Run the read *stmt*; None when SQLite reported an error (read it through SQLAlchemy)."""
        try:
            cursor = self.connection().cursor()
            try:
                cursor.execute(stmt.sql, stmt.bound(params))
                raw = cursor.fetchall()
            finally:
                cursor.close()
        except (sqlite3.Error, UnicodeDecodeError):
            self.discard()
            return None
        return Rows(raw, -1, stmt)

    def revision(self) -> str | None:
        """The schema revision recorded in the file; None when it cannot be told this way.

        None also for an empty or foreign file: the caller's full check
        (:func:`provstore.db.schema.check_schema`) says what it is.
        """
        try:
            row = self.connection().execute("SELECT version_num FROM alembic_version").fetchone()
        except (sqlite3.Error, UnicodeDecodeError):
            self.discard()
            return None
        return None if row is None else str(row[0])

    def write(self, body: Callable[[Tx], T]) -> T:
        """Run *body* in one ``BEGIN IMMEDIATE`` transaction.

        Raises :class:`LiteFailed` when SQLite reports an error: nothing was
        written, and the caller runs the transaction through SQLAlchemy.
        """
        try:
            result = immediate(self.connection(), lambda cursor: body(Tx(cursor)))
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            self.discard()
            raise LiteFailed(str(exc)) from exc
        except OSError as exc:  # as the engine's writes: an injected fault, a disk error
            raise storage_error(exc, "write the database", str(self.path)) from exc
        return result

    def discard(self) -> None:
        """Drop this thread's connection (after an error it may be unusable)."""
        conn = getattr(self._local, "conn", None)
        self._local.__dict__.clear()
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close_all(self) -> None:
        """Close every thread's connection (each reconnects on next use)."""
        for conn in list(self._all):
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._all = weakref.WeakSet()
        self._local = threading.local()

    def forget(self) -> None:
        """Drop every connection without closing it (a forked child's inherited ones)."""
        # Never closed in the child: closing the last SQLite connection of a
        # process checkpoints and deletes the WAL under the parent.
        _INHERITED.extend(self._all)
        self._all = weakref.WeakSet()
        self._local = threading.local()


class _Connection(sqlite3.Connection):
    """A ``sqlite3.Connection`` that a :class:`weakref.WeakSet` can hold, closed when dropped.

    A thread's connection goes with the thread; closing it explicitly spares
    Python 3.13's ResourceWarning. Never in a forked child, which must not
    close what its parent opened (see :meth:`Lite.forget`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.opened_by = os.getpid()  # first: __del__ runs even when opening fails
        super().__init__(*args, **kwargs)

    def __del__(self) -> None:
        if getattr(self, "opened_by", None) == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                self.close()


_LITES: weakref.WeakSet[Lite] = weakref.WeakSet()
_INHERITED: list[_Connection] = []


def _forget_inherited() -> None:
    for lite in list(_LITES):
        lite.forget()


def _close_at_exit() -> None:
    # As the engine's connections: SQLite checkpoints its WAL on the last
    # close. Registered at import, it runs after the run records are written.
    for lite in list(_LITES):
        lite.close_all()


os.register_at_fork(after_in_child=_forget_inherited)
atexit.register(_close_at_exit)
