"""The tables of a provstore database, as SQLAlchemy Core ``Table`` objects.

The schema itself is created and changed only by the Alembic migrations in
``migrations/``; these tables describe it for queries. A test checks that the
migrated schema and these tables agree.

They are Core tables, not ORM models: provstore runs prebuilt Core
statements only, and importing ``sqlalchemy.orm`` cost every process ~60 ms
of start-up (of ~0.5 s for a process that opens a store and gets one hit).
The classes below keep the names the ORM models had, each holding its table
as ``__table__``, and :class:`Base` holds the :data:`metadata` that Alembic
compares against.

``leases``, ``call_inputs`` and ``call_outputs`` are ``WITHOUT ROWID`` on
SQLite: their primary keys are natural, so the rows live in the primary key's
b-tree and a tracked call's commit writes one b-tree less per table (in WAL
mode each page it changes is written whole). PostgreSQL ignores the option
(whose import of SQLAlchemy's SQLite dialect, ~6 ms, SQLite stores pay anyway).
"""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "Artifact",
    "Base",
    "Binding",
    "Call",
    "CallInput",
    "CallOutput",
    "CodeVersionRow",
    "FileRecord",
    "Lease",
    "Pin",
    "Run",
    "Scope",
    "metadata",
]

# Named constraints: SQLite batch migrations can only drop what has a name.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _id() -> Column[int]:
    return Column("id", Integer, primary_key=True)


runs = Table(
    "runs", metadata,  # one process that wrote to the store
    _id(),
    Column("uuid", String(32), nullable=False, unique=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("user", String(255)),
    Column("argv", Text),  # JSON list
    Column("cwd", Text),
    Column("git_commit", String(64)),
    Column("git_dirty", Boolean),
    Column("python", String(64)),
    Column("packages", Text),  # JSON {name: version}
    Column("started", DateTime, nullable=False),
    Column("heartbeat", DateTime, nullable=False),
    Column("ended", DateTime),
    Column("status", String(16), nullable=False),  # running / finished / failed
    # Tracked calls this run found cached / computed, and the recorded compute
    # time of the cached ones (NULL before schema 0004).
    Column("hits", Integer),
    Column("misses", Integer),
    Column("saved_seconds", Float),
)

scopes = Table(
    "scopes", metadata,  # a node in the tree of namespaces; the root has path ""
    _id(),
    Column("parent_id", Integer, ForeignKey("scopes.id")),
    Column("segment", String(512), nullable=False),
    Column("key", String(255)),
    Column("value", Text),  # JSON scalar of a key=value segment
    Column("path", Text, nullable=False, unique=True),
    Column("depth", Integer, nullable=False),
    UniqueConstraint("parent_id", "segment"),
)

artifacts = Table(
    "artifacts", metadata,  # an immutable stored value, named by its content digest
    _id(),
    Column("algorithm", String(32), nullable=False),
    Column("digest", String(128), nullable=False),
    Column("format", String(64), nullable=False),
    Column("suffix", String(32), nullable=False),  # "" for inline values
    Column("size", BigInteger, nullable=False),
    Column("file_digest", String(128)),  # bytes on disk
    Column("inline", LargeBinary),
    Column("meta", Text, nullable=False),  # JSON from the backend
    Column("summary", Text, nullable=False),  # JSON: type, dtype, shape
    Column("created", DateTime, nullable=False),
    Column("run_id", Integer, ForeignKey("runs.id")),
    UniqueConstraint("algorithm", "digest", "format"),
)

bindings = Table(
    "bindings", metadata,  # one version of (scope, name); artifact_id NULL: a deletion
    _id(),
    Column("scope_id", Integer, ForeignKey("scopes.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("artifact_id", Integer, ForeignKey("artifacts.id")),
    Column("created", DateTime, nullable=False),
    Column("run_id", Integer, ForeignKey("runs.id")),
    Column("origin", Text),  # file:line of an untracked assignment
    Column("call_id", Integer, ForeignKey("calls.id")),  # the producing call
    UniqueConstraint("scope_id", "name", "version"),
    Index(None, "name"),
    Index(None, "artifact_id"),
)

files = Table(
    "files", metadata,  # an external file seen by provstore.File: path, stat, digest
    _id(),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("inode", BigInteger, nullable=False),
    Column("algorithm", String(32), nullable=False),
    Column("digest", String(128), nullable=False),
    Column("artifact_id", Integer, ForeignKey("artifacts.id")),
    Column("seen", DateTime, nullable=False),
    Index(None, "path", "size", "mtime_ns", "inode"),
    Index(None, "digest"),
    Index(None, "artifact_id"),
)

code_versions = Table(
    "code_versions", metadata,  # the normalized source and dependencies of a version
    _id(),
    Column("digest", String(128), nullable=False, unique=True),
    Column("identity", Text, nullable=False),  # module:qualname
    Column("source", Text, nullable=False),
    Column("deps", Text, nullable=False),  # JSON {dependency: digest or version}
    Column("pinned", String(255)),
    Column("created", DateTime, nullable=False),
)

calls = Table(
    "calls", metadata,  # one execution (or attempt) of a tracked function
    _id(),
    Column("key", String(128), nullable=False),
    Column("function", Text, nullable=False),  # module:qualname
    Column("code_digest", String(128), nullable=False),
    Column("params", Text, nullable=False),  # JSON {argument: short repr}
    Column("status", String(16), nullable=False),  # running / done / failed / orphaned
    Column("output_kind", String(16)),  # single / tuple
    Column("run_id", Integer, ForeignKey("runs.id")),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("fence", Integer, nullable=False),
    Column("takeover_of", String(64)),  # owner whose lease expired
    Column("started", DateTime, nullable=False),
    Column("finished", DateTime),
    Column("duration", Float),
    Column("error", Text),
    Column("defined_at", Text),  # module:qualname where it lived
    Column("last_hit", DateTime),  # newest reuse, batched
    # On key alone: a finished call's status update then touches no index
    # (key = ? ORDER BY id DESC finds the newest from the index, ids included).
    Index(None, "key"),
    Index(None, "function"),
)

call_inputs = Table(
    "call_inputs", metadata,  # an argument of a call: digest, and artifact when stored
    Column("call_id", Integer, ForeignKey("calls.id"), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("digest", String(128), nullable=False),
    Column("artifact_id", Integer, ForeignKey("artifacts.id")),
    Column("file_path", Text),  # for provstore.File arguments
    Column("summary", Text, nullable=False),  # JSON: type, dtype, shape, or the value
    sqlite_with_rowid=False,
)

call_outputs = Table(
    "call_outputs", metadata,  # element *position* of a call's value (0: a single value)
    Column("call_id", Integer, ForeignKey("calls.id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), nullable=False),
    Index(None, "artifact_id"),
    sqlite_with_rowid=False,
)

pins = Table(
    "pins", metadata,  # a (scope, name) whose versions, and their sources, gc keeps
    _id(),
    Column("scope_id", Integer, ForeignKey("scopes.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("created", DateTime, nullable=False),
    UniqueConstraint("scope_id", "name"),
)

leases = Table(
    "leases", metadata,  # who computes a call key now, until when, under which fence
    Column("key", String(128), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("fence", Integer, nullable=False),
    Column("expires", DateTime, nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("call_id", Integer, ForeignKey("calls.id")),
    sqlite_with_rowid=False,
)


def _partial_index(column: Column[str] | Column[int]) -> Index:
    # Only rows that have a value: inline values (no file_digest) and scalar
    # arguments (no artifact_id) are most rows, and then touch no index page.
    # ``column = ?`` and ``column IN (...)`` imply IS NOT NULL, so both SQLite
    # and PostgreSQL still answer them from the index. Migration 0005 makes
    # PostgreSQL's partial too; a ``postgresql_where`` here would import that
    # dialect (~25 ms) into every SQLite process that imports these tables.
    present = column.is_not(None)
    return Index(None, column, sqlite_where=present)


_partial_index(artifacts.c.file_digest)
_partial_index(call_inputs.c.artifact_id)


class Base:
    """Holds :data:`metadata`, every provstore table (what Alembic and the tests compare)."""

    metadata: ClassVar[MetaData] = metadata


class Run:
    """One process that wrote to the store."""

    __table__: ClassVar[Table] = runs


class Scope:
    """A node in the tree of namespaces; the root has ``path == ""``."""

    __table__: ClassVar[Table] = scopes


class Artifact:
    """An immutable stored value, identified by its canonical content digest."""

    __table__: ClassVar[Table] = artifacts


class Binding:
    """One version of (scope, name) → artifact; ``artifact_id`` is NULL for a deletion."""

    __table__: ClassVar[Table] = bindings


class FileRecord:
    """An external file seen by :class:`provstore.File`: path, stat and byte digest."""

    __table__: ClassVar[Table] = files


class CodeVersionRow:
    """The normalized source and dependencies of one code version of a function."""

    __table__: ClassVar[Table] = code_versions


class Call:
    """One execution (or attempt) of a tracked function."""

    __table__: ClassVar[Table] = calls


class CallInput:
    """An argument of a call: its digest, and the artifact it was, when stored."""

    __table__: ClassVar[Table] = call_inputs


class CallOutput:
    """Element *position* of a call's return value (0 for a single value)."""

    __table__: ClassVar[Table] = call_outputs


class Pin:
    """A (scope, name) whose every version, and all it was made from, gc keeps."""

    __table__: ClassVar[Table] = pins


class Lease:
    """Who computes a call key right now, until when, under which fence number."""

    __table__: ClassVar[Table] = leases
