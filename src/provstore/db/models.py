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

__all__ = ["Artifact", "Base", "Binding", "FileRecord", "Run", "Scope"]


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


class FileRecord(Base):
    """An external file seen by :class:`provstore.File`: path, stat and byte digest."""

    __tablename__ = "files"
    __table_args__ = (
        Index(None, "path", "size", "mtime_ns", "inode"),
        Index(None, "digest"),
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

