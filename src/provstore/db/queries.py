"""Prebuilt Core statements for the hot path.

Statements are built once at import with bound parameters: an ORM query built
per call costs ~150 µs here, a prebuilt Core statement ~30 µs.
"""

from __future__ import annotations

import functools

from sqlalchemy import (
    DateTime,
    Executable,
    Integer,
    String,
    Text,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sql_cast

from .models import (
    artifacts,
    bindings,
    call_inputs,
    call_outputs,
    calls,
    code_versions,
    files,
    leases,
    pins,
    runs,
    scopes,
)
from .schema import SCHEMA_HEAD

# The tables are re-exported: the store, maintenance and lineage modules build
# their statements on them as ``q.calls`` and the like.
__all__ = [
    "SCHEMA_HEAD",
    "artifacts",
    "bindings",
    "call_inputs",
    "call_outputs",
    "calls",
    "code_versions",
    "files",
    "insert_artifact_unless_found",
    "leases",
    "pins",
    "runs",
    "scopes",
]

_b2 = bindings.alias("b2")

SCOPE_BY_PATH = select(scopes.c.id).where(scopes.c.path == bindparam("path"))

INSERT_SCOPE = insert(scopes).returning(scopes.c.id)

ARTIFACT_BY_ID = select(artifacts).where(artifacts.c.id == bindparam("id"))

ARTIFACT_BY_DIGEST = select(artifacts.c.id, artifacts.c.suffix, artifacts.c.inline).where(
    artifacts.c.algorithm == bindparam("algorithm"),
    artifacts.c.digest == bindparam("digest"),
    artifacts.c.format == bindparam("format"),
)

INSERT_FILE = insert(files)


@functools.cache
def insert_artifact_unless_found(server: bool = True) -> Executable:
    """Insert an artifact row, or return no row when one holds the same content already.

    Then the caller reads that row's id. On PostgreSQL (*server*) the insert
    waits for a concurrent writer that inserted the same content first; on
    SQLite, one writer at a time, it saves a lookup before every new
    artifact. Built on first use: the PostgreSQL dialect costs ~30 ms of
    start-up that an SQLite store never needs.
    """
    # Imported here: each dialect's own insert, and only the one the store uses.
    if server:
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return (pg_insert(artifacts)
                .on_conflict_do_nothing(index_elements=_ARTIFACT_KEY)
                .returning(artifacts.c.id))
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return (sqlite_insert(artifacts)
            .on_conflict_do_nothing(index_elements=_ARTIFACT_KEY)
            .returning(artifacts.c.id))


_ARTIFACT_KEY = ["algorithm", "digest", "format"]  # the unique constraint a conflict is on

# A new version of (scope, name), unless its current version already holds
# the artifact (binding an equal value again adds nothing): no row back then.
# One statement instead of reading the head first saves a round trip per bind.
# The next version number is computed inside the INSERT, under the write lock
# of the enclosing BEGIN IMMEDIATE transaction (SQLite) or the name's advisory
# lock (PostgreSQL, READ COMMITTED), so two writers never collide.
_p_scope = bindparam("p_scope_id", type_=Integer)
_p_name = bindparam("p_name", type_=String)
_p_artifact = bindparam("p_artifact_id", type_=Integer)
_b3 = bindings.alias("b3")
_head_version = (
    select(func.max(_b2.c.version))
    .where(_b2.c.scope_id == _p_scope, _b2.c.name == _p_name)
    .scalar_subquery()
)
_unchanged = exists().where(
    _b3.c.scope_id == _p_scope, _b3.c.name == _p_name, _b3.c.version == _head_version,
    _b3.c.artifact_id == _p_artifact)
INSERT_BINDING = insert(bindings).from_select(
    ["scope_id", "name", "version", "artifact_id", "created", "run_id", "origin", "call_id"],
    select(
        _p_scope, _p_name, func.coalesce(_head_version, 0) + 1, _p_artifact,
        bindparam("p_created", type_=DateTime), bindparam("p_run_id", type_=Integer),
        bindparam("p_origin", type_=Text), bindparam("p_call_id", type_=Integer),
    ).where(~_unchanged),
).returning(bindings.c.version)

HEAD = (
    select(bindings.c.version, bindings.c.artifact_id)
    .where(bindings.c.scope_id == bindparam("scope_id"), bindings.c.name == bindparam("name"))
    .order_by(bindings.c.version.desc())
    .limit(1)
)

_latest = (
    select(func.max(_b2.c.version))
    .where(_b2.c.scope_id == bindings.c.scope_id, _b2.c.name == bindings.c.name)
    .scalar_subquery()
)

# The newest binding of a name in each scope of a chain: one index probe per
# scope, whatever the number of versions (comparing every version with its
# max() made a load on PostgreSQL cost 12.7 ms at 1,400 versions).
_head_id = (
    select(_b2.c.id)
    .where(_b2.c.scope_id == scopes.c.id, _b2.c.name == bindparam("name"))
    .order_by(_b2.c.version.desc())
    .limit(1)
    .scalar_subquery()
)
_chain_heads = (
    select(_head_id.label("binding_id"))
    .where(scopes.c.id.in_(bindparam("chain", expanding=True)))
    .subquery()
)
HEADS_FOR_NAME = select(bindings.c.scope_id, bindings.c.artifact_id).join_from(
    _chain_heads, bindings, bindings.c.id == _chain_heads.c.binding_id
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
        bindings.c.call_id,
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

FINISHED_CALL = (
    select(calls.c.id)
    .where(calls.c.key == bindparam("key"), calls.c.status == "done")
    .order_by(calls.c.id.desc())
    .limit(1)
)

CALL_OUTPUTS = (
    select(calls.c.output_kind, call_outputs.c.position, call_outputs.c.artifact_id)
    .join(call_outputs, call_outputs.c.call_id == calls.c.id)
    .where(calls.c.id == bindparam("call_id"))
    .order_by(call_outputs.c.position)
)

# ----------------------------------------------------------------- tracking
INSERT_CALL = insert(calls).returning(calls.c.id)
EXPIRE_CALL = (
    update(calls)
    .where(calls.c.id == bindparam("p_id"), calls.c.status == "running")
    .values(status="expired", finished=bindparam("p_finished"))
)
FINISH_CALL = (
    update(calls)
    .where(calls.c.id == bindparam("p_id"))
    .values(status=bindparam("p_status"), finished=bindparam("p_finished"),
            duration=bindparam("p_duration"), output_kind=bindparam("p_kind"),
            error=bindparam("p_error"))
)
INSERT_CALL_OUTPUT = insert(call_outputs)
INSERT_CALL_INPUT = insert(call_inputs)
CODE_BY_DIGEST = select(code_versions.c.id).where(code_versions.c.digest == bindparam("digest"))
INSERT_CODE = insert(code_versions)
# algorithm first: the (algorithm, digest, format) unique index answers this.
ANY_ARTIFACT_BY_DIGEST = (
    select(artifacts.c.id)
    .where(artifacts.c.algorithm == bindparam("algorithm"),
           artifacts.c.digest == bindparam("digest"),
           artifacts.c.inline.is_(None))
    .limit(1)
)
LEASE_BY_KEY = select(leases).where(leases.c.key == bindparam("key"))
# What a claim reads, in one statement: the finished call of the key (if
# any), whether the code version is recorded, and the key's lease (its
# columns NULL when there is none: the one-row anchor keeps the row).
_one_row = select(literal_column("1").label("one")).subquery("one_row")
CLAIM_STATE = select(
    FINISHED_CALL.scalar_subquery().label("done"),
    exists().where(code_versions.c.digest == bindparam("code_digest")).label("code_known"),
    *leases.c,
).select_from(_one_row.outerjoin(leases, leases.c.key == bindparam("key")))
INSERT_LEASE = insert(leases)
UPDATE_LEASE = (
    update(leases)
    # Conditional on the fence read: of two processes taking over one
    # expired lease, only the first changes it.
    .where(leases.c.key == bindparam("p_key"), leases.c.fence == bindparam("p_old_fence"))
    .values(owner=bindparam("p_owner"), fence=bindparam("p_fence"),
            expires=bindparam("p_expires"), host=bindparam("p_host"), pid=bindparam("p_pid"),
            call_id=bindparam("p_call_id"))
)
_held = (
    (leases.c.key == bindparam("p_key"))
    & (leases.c.owner == bindparam("p_owner"))
    & (leases.c.fence == bindparam("p_fence"))
)
RENEW_LEASE = update(leases).where(_held).values(expires=bindparam("p_expires"))
DELETE_LEASE = delete(leases).where(_held)

# ----------------------------------------------------------------- sweeps
# The current (non-deleted) bindings at and below one scope, for ctx.table and
# ctx.find (provstore.sweeps). One statement serves every variant: a NULL
# ``pattern`` drops the descendants (then ``parent_id`` adds the children),
# a NULL ``name`` or ``function`` drops that filter. The pattern is a LIKE
# prefix escaped by the caller with ``\`` (paths may hold ``_`` and ``%``).
_sw_latest = bindings.alias("sw_latest")
_sw_current = (
    select(func.max(_sw_latest.c.version))
    .where(_sw_latest.c.scope_id == bindings.c.scope_id, _sw_latest.c.name == bindings.c.name)
    .scalar_subquery()
)
_sw_pattern = bindparam("pattern", type_=String)
_sw_name = bindparam("name", type_=String)
_sw_function = bindparam("function", type_=String)
CURRENT_BELOW = (
    select(
        scopes.c.path,
        bindings.c.name,
        bindings.c.version,
        bindings.c.artifact_id,
        calls.c.function,
    )
    .select_from(
        bindings.join(scopes, scopes.c.id == bindings.c.scope_id).outerjoin(
            calls, calls.c.id == bindings.c.call_id
        )
    )
    .where(
        or_(
            scopes.c.id == bindparam("scope_id", type_=Integer),
            scopes.c.parent_id == bindparam("parent_id", type_=Integer),
            scopes.c.path.like(_sw_pattern, escape="\\"),
        ),
        # CAST: PostgreSQL must know a parameter's type to test it for NULL.
        or_(sql_cast(_sw_name, String).is_(None), bindings.c.name == _sw_name),
        or_(sql_cast(_sw_function, String).is_(None), calls.c.function == _sw_function),
        bindings.c.version == _sw_current,
        bindings.c.artifact_id.is_not(None),
    )
    .order_by(scopes.c.path, bindings.c.name)
)

# ------------------------------------------------------------------ memory
# joblib's MemorizedFunc.clear(): a function's finished calls stop being hits.
FORGET_CALLS = (
    update(calls)
    .where(calls.c.function == bindparam("p_function"), calls.c.status == "done")
    .values(status="forgotten")
)

# ---------------------------------------------------------------- retention
# What gc reads to plan (provstore.maintenance.retention): the whole
# reference graph, in one transaction, as narrow rows.
GC_CALLS = select(
    calls.c.id, calls.c.function, calls.c.status, calls.c.code_digest, calls.c.started,
    calls.c.finished, calls.c.last_hit,
)
GC_CALL_OUTPUTS = select(call_outputs.c.call_id, call_outputs.c.artifact_id)
GC_CALL_INPUTS = select(call_inputs.c.call_id, call_inputs.c.artifact_id)
GC_BINDINGS = select(
    bindings.c.id, bindings.c.scope_id, bindings.c.name, bindings.c.version,
    bindings.c.artifact_id, bindings.c.call_id, bindings.c.created,
)
GC_PINS = select(pins.c.scope_id, pins.c.name)
GC_FILED = select(files.c.artifact_id).where(files.c.artifact_id.is_not(None)).distinct()
GC_ARTIFACTS = select(
    artifacts.c.id, artifacts.c.digest, artifacts.c.suffix, artifacts.c.size,
    artifacts.c.inline.is_not(None).label("is_inline"),
)
GC_CODE_VERSIONS = select(code_versions.c.id, code_versions.c.digest)
GC_LIVE_PARAMS = (
    select(calls.c.params)
    .join(leases, leases.c.call_id == calls.c.id)
    .where(calls.c.status == "running", leases.c.expires > bindparam("now"))
)

# ---------------------------------------------------------------------- pins
PIN_BY_NAME = select(pins.c.id).where(
    pins.c.scope_id == bindparam("scope_id"), pins.c.name == bindparam("name"))
INSERT_PIN = insert(pins)
DELETE_PIN = delete(pins).where(
    pins.c.scope_id == bindparam("scope_id"), pins.c.name == bindparam("name"))
PINS = (
    select(scopes.c.path, pins.c.name, pins.c.created)
    .join(scopes, scopes.c.id == pins.c.scope_id)
    .order_by(scopes.c.path, pins.c.name)
)

# ------------------------------------------------------------ hits, run counts
# The newest reuse of each call, written for a batch of calls at once.
TOUCH_CALLS = (
    update(calls)
    .where(calls.c.id.in_(bindparam("ids", expanding=True)))
    .values(last_hit=bindparam("now"))
)
CALL_DURATIONS = select(calls.c.id, calls.c.duration).where(
    calls.c.id.in_(bindparam("ids", expanding=True)))
# One call at a time, for the run record written without SQLAlchemy (db/lite.py).
TOUCH_CALL = update(calls).where(calls.c.id == bindparam("p_id")).values(last_hit=bindparam("now"))
CALL_DURATION = select(calls.c.duration).where(calls.c.id == bindparam("id"))
INSERT_RUN = insert(runs).returning(runs.c.id)
CLOSE_RUN = (
    update(runs)
    .where(runs.c.id == bindparam("run_id"))
    .values(status=bindparam("p_status"), ended=bindparam("p_ended"),
            heartbeat=bindparam("p_heartbeat"), hits=bindparam("hits"),
            misses=bindparam("misses"), saved_seconds=bindparam("saved_seconds"))
)
BEAT_RUN = (
    update(runs)
    .where(runs.c.id == bindparam("run_id"))
    .values(heartbeat=bindparam("p_heartbeat"), hits=bindparam("hits"),
            misses=bindparam("misses"), saved_seconds=bindparam("saved_seconds"))
)
RUN_COUNTS = (
    update(runs)
    .where(runs.c.id == bindparam("run_id"))
    .values(hits=bindparam("hits"), misses=bindparam("misses"),
            saved_seconds=bindparam("saved_seconds"))
)

# --------------------------------------------------------------------- calls
# `provstore calls`: each call with the scope of a binding made from it and
# the owner of its lease, newest first; filters are NULL when not given
# (CAST as above). The caller adds a LIMIT.
_cl_function = bindparam("function", type_=String)
_cl_status = bindparam("status", type_=String)
_cl_run = bindparam("run_id", type_=Integer)
_cl_scope = (
    select(scopes.c.path)
    .join(_b2, _b2.c.scope_id == scopes.c.id)
    .where(_b2.c.call_id == calls.c.id)
    .order_by(_b2.c.id)
    .limit(1)
    .scalar_subquery()
)
CALLS_LISTING = (
    select(
        calls.c.id, calls.c.function, calls.c.status, calls.c.started, calls.c.finished,
        calls.c.duration, calls.c.run_id, calls.c.host, calls.c.pid, calls.c.error,
        calls.c.last_hit, calls.c.params, _cl_scope.label("scope"),
        leases.c.host.label("lease_host"), leases.c.pid.label("lease_pid"),
        leases.c.expires.label("lease_expires"),
    )
    .select_from(calls.outerjoin(leases, leases.c.call_id == calls.c.id))
    .where(
        # The exact module:qualname, or LIKE patterns given by the caller
        # ("%:name" and "%.name": a qualname, or its last part).
        or_(sql_cast(_cl_function, String).is_(None), calls.c.function == _cl_function,
            calls.c.function.like(bindparam("pattern", type_=String), escape="\\"),
            calls.c.function.like(bindparam("dotted", type_=String), escape="\\")),
        or_(sql_cast(_cl_status, String).is_(None), calls.c.status == _cl_status),
        or_(sql_cast(_cl_run, Integer).is_(None), calls.c.run_id == _cl_run),
    )
    .order_by(calls.c.id.desc())
)
