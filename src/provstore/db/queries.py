"""Prebuilt Core statements for the hot path.

Statements are built once at import with bound parameters: an ORM query built
per call costs ~150 µs here, a prebuilt Core statement ~30 µs.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, func, insert, select

from .engine import SCHEMA_HEAD
from .models import Artifact, Binding, FileRecord, Run, Scope

__all__ = ["SCHEMA_HEAD"]

scopes = cast(Table, Scope.__table__)
artifacts = cast(Table, Artifact.__table__)
bindings = cast(Table, Binding.__table__)
files = cast(Table, FileRecord.__table__)
runs = cast(Table, Run.__table__)

_b2 = bindings.alias("b2")

SCOPE_BY_PATH = select(scopes.c.id).where(scopes.c.path == bindparam("path"))

INSERT_SCOPE = insert(scopes).returning(scopes.c.id)

ARTIFACT_BY_ID = select(artifacts).where(artifacts.c.id == bindparam("id"))

ARTIFACT_BY_DIGEST = select(artifacts.c.id, artifacts.c.suffix, artifacts.c.inline).where(
    artifacts.c.algorithm == bindparam("algorithm"),
    artifacts.c.digest == bindparam("digest"),
    artifacts.c.format == bindparam("format"),
)

INSERT_ARTIFACT = insert(artifacts).returning(artifacts.c.id)

# The next version number is computed inside the INSERT, under the write lock
# of the enclosing BEGIN IMMEDIATE transaction, so two writers never collide.
INSERT_BINDING = (
    insert(bindings)
    .values(
        scope_id=bindparam("p_scope_id"),
        name=bindparam("p_name"),
        version=select(func.coalesce(func.max(_b2.c.version), 0) + 1)
        .where(_b2.c.scope_id == bindparam("p_scope_id"), _b2.c.name == bindparam("p_name"))
        .scalar_subquery(),
        artifact_id=bindparam("p_artifact_id"),
        created=bindparam("p_created"),
        run_id=bindparam("p_run_id"),
        origin=bindparam("p_origin"),
    )
    .returning(bindings.c.version)
)

_latest = (
    select(func.max(_b2.c.version))
    .where(_b2.c.scope_id == bindings.c.scope_id, _b2.c.name == bindings.c.name)
    .scalar_subquery()
)

HEADS_FOR_NAME = select(bindings.c.scope_id, bindings.c.artifact_id).where(
    bindings.c.name == bindparam("name"),
    bindings.c.scope_id.in_(bindparam("chain", expanding=True)),
    bindings.c.version == _latest,
)

HEADS_IN_SCOPES = select(bindings.c.scope_id, bindings.c.name, bindings.c.artifact_id).where(
    bindings.c.scope_id.in_(bindparam("chain", expanding=True)),
    bindings.c.version == _latest,
)

SCOPES_WITH_NAME = (
    select(bindings.c.scope_id)
    .where(
        bindings.c.name == bindparam("name"),
        bindings.c.scope_id.in_(bindparam("chain", expanding=True)),
    )
    .distinct()
)

VERSIONS = (
    select(
        bindings.c.version,
        bindings.c.artifact_id,
        bindings.c.created,
        bindings.c.origin,
        artifacts.c.digest,
        artifacts.c.format,
        artifacts.c.suffix,
        artifacts.c.size,
        artifacts.c.summary,
        runs.c.id.label("run_id"),
        runs.c.host,
        runs.c.pid,
        runs.c.user,
        runs.c.status.label("run_status"),
        runs.c.heartbeat.label("run_heartbeat"),
        runs.c.started.label("run_started"),
    )
    .select_from(
        bindings.outerjoin(artifacts, artifacts.c.id == bindings.c.artifact_id).outerjoin(
            runs, runs.c.id == bindings.c.run_id
        )
    )
    .where(bindings.c.scope_id == bindparam("scope_id"), bindings.c.name == bindparam("name"))
    .order_by(bindings.c.version)
)

FILE_BY_STAT = (
    select(files.c.digest, files.c.artifact_id)
    .where(
        files.c.path == bindparam("path"),
        files.c.size == bindparam("size"),
        files.c.mtime_ns == bindparam("mtime_ns"),
        files.c.inode == bindparam("inode"),
    )
    .order_by(files.c.id.desc())
    .limit(1)
)
