"""Write transactions for a tracked call's claim and commit, on SQLite's own connection.

Through SQLAlchemy a prebuilt statement costs ~32 µs here and an empty write
transaction ~65 µs; on the ``sqlite3`` connection the same statement costs
~2 µs and the transaction ~11 µs. A miss of a tiny tracked call runs two write
transactions of about ten statements each, so on SQLite :func:`transaction`
runs them on the driver connection that the engine's pool hands out (set up
by the engine's connect hook: WAL, busy timeout, foreign keys, synchronous),
with the same ``BEGIN IMMEDIATE`` and ``COMMIT`` and the same fault points as
:func:`provstore.db.engine.write`. Statements are the prebuilt Core
statements of :mod:`provstore.db.queries`, compiled once.

Anything the driver reports (a busy lock, a full disk, a broken constraint,
a damaged file) rolls the transaction back and runs it again through
SQLAlchemy and :func:`~provstore.db.engine.write`, which gives the error its
provstore form or retries. SQLite statements and transactions are atomic, so
the failed attempt left nothing behind. On PostgreSQL, where a statement's
round trip to the server costs more than SQLAlchemy does, every transaction
goes through SQLAlchemy.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import Connection, Engine, Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from ..errors import ProvstoreError
from ..objects import storage_error
from .engine import Readers, db_now, is_readonly, lock_for_write, retrying, write
from .lite import Rows, immediate, timestamp_text

__all__ = ["Rows", "Tx", "as_tx", "transaction"]

T = TypeVar("T")
Params = dict[str, Any] | list[dict[str, Any]]


class Tx(Protocol):
    """An open write transaction."""

    def execute(self, stmt: Executable, params: Params) -> Rows:
        """Run *stmt* with *params* (a list of dicts: once per dict, no rows back)."""

    def now(self) -> dt.datetime:
        """The database's clock (see :func:`provstore.db.engine.db_now`)."""

    def lock(self, subject: str) -> None:
        """Hold *subject* until the transaction ends (:func:`~.engine.lock_for_write`)."""

    @property
    def server(self) -> bool:
        """Whether writers may run at once (PostgreSQL), rather than one at a time (SQLite)."""


class _Alchemy:
    """A transaction run through SQLAlchemy (PostgreSQL, and any retry)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def lock(self, subject: str) -> None:
        lock_for_write(self.conn, subject)

    @property
    def server(self) -> bool:
        return self.conn.dialect.name != "sqlite"

    def execute(self, stmt: Executable, params: Params) -> Rows:
        result = self.conn.execute(stmt, params)
        return Rows(result.all() if result.returns_rows else [], result.rowcount)

    def now(self) -> dt.datetime:
        return db_now(self.conn)


def as_tx(conn: Connection) -> Tx:
    """The open SQLAlchemy write transaction *conn*, seen as a :class:`Tx`."""
    return _Alchemy(conn)


class _Compiled:
    """One statement compiled for SQLite with named parameters, and its conversions.

    Named parameters let ``sqlite3`` take each value from the caller's dict
    itself: only the values that need converting (timestamps) and the
    statement's own constants (``status = 'done'``, ``LIMIT 1``) are handled
    here, once per execution rather than once per parameter.
    """

    def __init__(self, stmt: Executable, keys: tuple[str, ...], dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, cast(ClauseElement, stmt).compile(
            dialect=_named(dialect), column_keys=list(keys)))
        if compiled.escaped_bind_names:  # the SQL would name them otherwise than the caller
            raise TypeError(f"parameter names {sorted(compiled.escaped_bind_names)} need "
                            "escaping, which is not supported here")
        self.stmt = stmt  # held, so that the id in the cache key stays its own
        self.sql = compiled.string
        self.constants: dict[str, Any] = {}
        processors: dict[str, Callable[[Any], Any]] = {}
        for bind, name in compiled.bind_names.items():
            if bind.expanding:
                raise TypeError(f"expanding parameter {name!r} is not supported here")
            processor = _bind_processor(bind.type, dialect)
            if name not in keys:
                if bind.required:
                    raise KeyError(f"statement parameter {name!r} was not given")
                value = bind.effective_value
                self.constants[name] = (value if processor is None or value is None
                                        else processor(value))
            elif processor is not None:
                processors[name] = processor
        self.processors = tuple(processors.items())
        self.plain = not self.constants and not self.processors  # bound: the caller's dict
        columns = list(getattr(stmt, "selected_columns", None) or
                       getattr(stmt, "exported_columns", None) or [])
        self.returns = bool(columns)
        row: Any = namedtuple("Row", [c.key for c in columns], rename=True)  # type: ignore[misc]
        self.make: Callable[[Any], Any] = row._make
        self.results = [c.type.dialect_impl(dialect).result_processor(dialect, None)
                        for c in columns]
        # Only the columns that need it (timestamps, booleans) are converted.
        self.converts = [(i, p) for i, p in enumerate(self.results) if p is not None]

    def bound(self, values: dict[str, Any]) -> dict[str, Any]:
        if self.plain:
            return values
        out = {**self.constants, **values}
        for name, processor in self.processors:
            value = out[name]
            if value is not None:
                out[name] = processor(value)
        return out

    def row(self, raw: Sequence[Any]) -> Any:
        if self.converts:
            raw = list(raw)
            for i, convert in self.converts:
                if raw[i] is not None:
                    raw[i] = convert(raw[i])
        return self.make(raw)


# SQLAlchemy's own text for an SQLite DateTime: what isoformat() writes too.
_SQLITE_DATETIME = ("%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d"
                    ".%(microsecond)06d")


def _bind_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    impl = type_.dialect_impl(dialect)
    processor: Callable[[Any], Any] | None = impl.bind_processor(dialect)
    if processor is None or getattr(impl, "_storage_format", None) != _SQLITE_DATETIME:
        return processor
    general = processor

    def timestamp(value: Any) -> Any:
        # The same text, at half the cost: a miss writes four timestamps.
        return timestamp_text(value) if type(value) is dt.datetime else general(value)

    return timestamp


_COMPILED: dict[tuple[int, tuple[str, ...]], _Compiled] = {}
_NAMED: dict[int, tuple[Dialect, Dialect]] = {}


def _named(dialect: Dialect) -> Dialect:
    """*dialect*, rendering parameters by name (``:key``) rather than by position (``?``)."""
    found = _NAMED.get(id(dialect))
    if found is None or found[0] is not dialect:
        # A shallow copy (the module's imports stay as they are): the same
        # initialized dialect, SQLite version and type caches, another style.
        named = type(dialect).__new__(type(dialect))
        named.__dict__.update(vars(dialect))
        named.paramstyle, named.positional = "named", False
        found = _NAMED[id(dialect)] = (dialect, named)
    return found[1]


class _Driver:
    """A transaction run on the ``sqlite3`` connection itself."""

    def __init__(self, cursor: sqlite3.Cursor, dialect: Dialect) -> None:
        self.cursor = cursor
        self.dialect = dialect

    def _compiled(self, stmt: Executable, keys: tuple[str, ...]) -> _Compiled:
        # Keyed by the parameters' names in the caller's order: each call site
        # passes them in one order, and sorting them cost more than a lookup.
        found = _COMPILED.get((id(stmt), keys))
        if found is None or found.stmt is not stmt:
            found = _COMPILED[(id(stmt), keys)] = _Compiled(stmt, keys, self.dialect)
        return found

    def execute(self, stmt: Executable, params: Params) -> Rows:
        cur = self.cursor
        if isinstance(params, list):
            if not params:
                return Rows((), 0)
            many = self._compiled(stmt, tuple(params[0]))
            cur.executemany(many.sql, params if many.plain else [many.bound(p) for p in params])
            return Rows((), cur.rowcount)
        c = _COMPILED.get((id(stmt), tuple(params)))  # _compiled(), inline: once per statement
        if c is None or c.stmt is not stmt:
            c = self._compiled(stmt, tuple(params))
        cur.execute(c.sql, params if c.plain else c.bound(params))
        if c.returns:
            return Rows(cur.fetchall(), cur.rowcount, c)
        return Rows((), cur.rowcount)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

    def lock(self, subject: str) -> None:
        pass  # BEGIN IMMEDIATE already runs one writer at a time

    @property
    def server(self) -> bool:
        return False


class _DriverFailed(Exception):
    """The driver reported an error; the transaction was rolled back."""


def transaction(engine: Engine, body: Callable[[Tx], T], readers: Readers | None = None) -> T:
    """Run *body* in one write transaction, again while the database asks; return its result.

    The equivalent of ``retrying(lambda: body(conn))`` inside
    ``with write(engine) as conn``; on SQLite, on the driver connection
    first (see the module's docstring), and on this thread's reader
    connection of *readers* when given: a pool checkout and return cost as
    much as two statements. *body* may run more than once.
    """

    def through_alchemy() -> T:
        with write(engine) as conn:
            return body(_Alchemy(conn))

    if engine.dialect.name == "sqlite" and not is_readonly(engine):
        try:
            return _on_driver(engine, body, readers)
        except _DriverFailed:
            pass  # the same transaction again, where errors get their provstore form
    return retrying(through_alchemy)


def _on_driver(engine: Engine, body: Callable[[Tx], T], readers: Readers | None) -> T:
    # Both are configured by make_engine's connect hook; the reader stays open.
    pooled = engine.raw_connection() if readers is None else None
    try:
        held = readers.get().connection if readers is not None else pooled
        assert held is not None
        conn = held.dbapi_connection  # pysqlite's is the driver's: one attribute, no properties
        assert isinstance(conn, sqlite3.Connection)
        return immediate(conn, lambda cursor: body(_Driver(cursor, engine.dialect)))
    except sqlite3.Error as exc:
        raise _DriverFailed from exc
    except ProvstoreError:
        raise
    except OSError as exc:  # as write() does: an injected fault, a disk error
        raise storage_error(exc, "write the database", str(engine.url.database)) from exc
    finally:
        if pooled is not None:
            pooled.close()
