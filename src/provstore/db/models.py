"""SQLAlchemy 2.0 models of a provstore database.

The schema itself is created and changed only by the Alembic migrations in
``migrations/``; these models describe it for queries. A test checks that the
migrated schema and these models agree.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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
]


class Base(DeclarativeBase):
    """Declarative base of every provstore table."""

    # Named constraints: SQLite batch migrations can only drop what has a name.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Run(Base):
    """One process that wrote to the store."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(32), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    user: Mapped[str | None] = mapped_column(String(255))
    argv: Mapped[str | None] = mapped_column(Text)  # JSON list
    cwd: Mapped[str | None] = mapped_column(Text)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    git_dirty: Mapped[bool | None] = mapped_column(Boolean)
    python: Mapped[str | None] = mapped_column(String(64))
    packages: Mapped[str | None] = mapped_column(Text)  # JSON {name: version}
    started: Mapped[datetime] = mapped_column(DateTime)
    heartbeat: Mapped[datetime] = mapped_column(DateTime)
    ended: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16))  # running / finished / failed
    # Tracked calls this run found cached / computed, and the recorded compute
    # time of the cached ones (NULL before schema 0004).
    hits: Mapped[int | None] = mapped_column(Integer)
    misses: Mapped[int | None] = mapped_column(Integer)
    saved_seconds: Mapped[float | None] = mapped_column(Float)


class Scope(Base):
    """A node in the tree of namespaces; the root has ``path == ""``."""

    __tablename__ = "scopes"
    __table_args__ = (UniqueConstraint("parent_id", "segment"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("scopes.id"))
    segment: Mapped[str] = mapped_column(String(512))
    key: Mapped[str | None] = mapped_column(String(255))
    value: Mapped[str | None] = mapped_column(Text)  # JSON scalar of a key=value segment
    path: Mapped[str] = mapped_column(Text, unique=True)
    depth: Mapped[int] = mapped_column(Integer)


class Artifact(Base):
    """An immutable stored value, identified by its canonical content digest."""

    __tablename__ = "artifacts"
    __table_args__ = (
        UniqueConstraint("algorithm", "digest", "format"),
        Index(None, "file_digest"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(128))
    format: Mapped[str] = mapped_column(String(64))
    suffix: Mapped[str] = mapped_column(String(32))  # "" for inline values
    size: Mapped[int] = mapped_column(BigInteger)
    file_digest: Mapped[str | None] = mapped_column(String(128))  # bytes on disk
    inline: Mapped[bytes | None] = mapped_column(LargeBinary)
    meta: Mapped[str] = mapped_column(Text)  # JSON from the backend
    summary: Mapped[str] = mapped_column(Text)  # JSON: type, dtype, shape
    created: Mapped[datetime] = mapped_column(DateTime)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))


class Binding(Base):
    """One version of (scope, name) → artifact; ``artifact_id`` is NULL for a deletion."""

    __tablename__ = "bindings"
    __table_args__ = (
        UniqueConstraint("scope_id", "name", "version"),
        Index(None, "name"),
        Index(None, "artifact_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope_id: Mapped[int] = mapped_column(ForeignKey("scopes.id"))
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"))
    created: Mapped[datetime] = mapped_column(DateTime)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    origin: Mapped[str | None] = mapped_column(Text)  # file:line of an untracked assignment
    call_id: Mapped[int | None] = mapped_column(ForeignKey("calls.id"))  # the producing call


class FileRecord(Base):
    """An external file seen by :class:`provstore.File`: path, stat and byte digest."""

    __tablename__ = "files"
    __table_args__ = (
        Index(None, "path", "size", "mtime_ns", "inode"),
        Index(None, "digest"),
        Index(None, "artifact_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    inode: Mapped[int] = mapped_column(BigInteger)
    algorithm: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(128))
    artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"))
    seen: Mapped[datetime] = mapped_column(DateTime)



class CodeVersionRow(Base):
    """The normalized source and dependencies of one code version of a function."""

    __tablename__ = "code_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(128), unique=True)
    identity: Mapped[str] = mapped_column(Text)  # module:qualname
    source: Mapped[str] = mapped_column(Text)
    deps: Mapped[str] = mapped_column(Text)  # JSON {dependency: digest or version}
    pinned: Mapped[str | None] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(DateTime)


class Call(Base):
    """One execution (or attempt) of a tracked function."""

    __tablename__ = "calls"
    __table_args__ = (Index(None, "key", "status"), Index(None, "function"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128))
    function: Mapped[str] = mapped_column(Text)  # module:qualname
    code_digest: Mapped[str] = mapped_column(String(128))
    params: Mapped[str] = mapped_column(Text)  # JSON {argument: short repr}
    status: Mapped[str] = mapped_column(String(16))  # running / done / failed / orphaned
    output_kind: Mapped[str | None] = mapped_column(String(16))  # single / tuple
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    fence: Mapped[int] = mapped_column(Integer)
    takeover_of: Mapped[str | None] = mapped_column(String(64))  # owner whose lease expired
    started: Mapped[datetime] = mapped_column(DateTime)
    finished: Mapped[datetime | None] = mapped_column(DateTime)
    duration: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    defined_at: Mapped[str | None] = mapped_column(Text)  # module:qualname where it lived
    last_hit: Mapped[datetime | None] = mapped_column(DateTime)  # newest reuse, batched


class CallInput(Base):
    """An argument of a call: its digest, and the artifact it was, when stored."""

    __tablename__ = "call_inputs"
    __table_args__ = (Index(None, "artifact_id"),)

    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    digest: Mapped[str] = mapped_column(String(128))
    artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"))
    file_path: Mapped[str | None] = mapped_column(Text)  # for provstore.File arguments
    summary: Mapped[str] = mapped_column(Text)  # JSON: type, dtype, shape, or the value


class CallOutput(Base):
    """Element *position* of a call's return value (0 for a single value)."""

    __tablename__ = "call_outputs"
    __table_args__ = (Index(None, "artifact_id"),)

    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id"))


class Pin(Base):
    """A (scope, name) whose every version, and all it was made from, gc keeps."""

    __tablename__ = "pins"
    __table_args__ = (UniqueConstraint("scope_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope_id: Mapped[int] = mapped_column(ForeignKey("scopes.id"))
    name: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(DateTime)


class Lease(Base):
    """Who computes a call key right now, until when, under which fence number."""

    __tablename__ = "leases"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    fence: Mapped[int] = mapped_column(Integer)
    expires: Mapped[datetime] = mapped_column(DateTime)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    call_id: Mapped[int | None] = mapped_column(ForeignKey("calls.id"))
