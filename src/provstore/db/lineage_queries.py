"""Prebuilt statements of the lineage reader (:mod:`provstore.lineage.reader`).

Split from :mod:`provstore.db.queries`, whose tables and conventions they
share: statements taking ``ids`` use an expanding IN list, and callers
chunk long lists.
"""

from __future__ import annotations

from sqlalchemy import Integer, bindparam, case, func, literal, select

from .queries import (
    artifacts,
    bindings,
    call_inputs,
    call_outputs,
    calls,
    code_versions,
    files,
    runs,
    scopes,
)

# ----------------------------------------------------------------- lineage
# Batched reads for history and lineage (provstore.lineage.reader). Statements
# taking ``ids`` use an expanding IN list; callers chunk long lists.
_lineage_runs = runs.alias("call_runs")

CALLS_BY_IDS = (
    select(
        calls,
        code_versions.c.source,
        code_versions.c.deps,
        code_versions.c.pinned,
        code_versions.c.identity.label("code_identity"),
        _lineage_runs.c.argv.label("run_argv"),
        _lineage_runs.c.cwd.label("run_cwd"),
        _lineage_runs.c.host.label("run_host"),
        _lineage_runs.c.pid.label("run_pid"),
        _lineage_runs.c.user.label("run_user"),
        _lineage_runs.c.started.label("run_started"),
        _lineage_runs.c.status.label("run_status"),
        _lineage_runs.c.heartbeat.label("run_heartbeat"),
    )
    .select_from(
        calls.outerjoin(code_versions, code_versions.c.digest == calls.c.code_digest).outerjoin(
            _lineage_runs, _lineage_runs.c.id == calls.c.run_id
        )
    )
    .where(calls.c.id.in_(bindparam("ids", expanding=True)))
)

# The stored normalized source of code versions and their parts (helpers,
# classes, constants), by digest: what explain and diff show as a unified diff.
CODE_SOURCES_BY_DIGESTS = select(code_versions.c.digest, code_versions.c.source).where(
    code_versions.c.digest.in_(bindparam("ids", expanding=True))
)

CALL_INPUTS_BY_CALLS = select(call_inputs).where(
    call_inputs.c.call_id.in_(bindparam("ids", expanding=True))
)

CALL_OUTPUTS_BY_CALLS = (
    select(call_outputs)
    .where(call_outputs.c.call_id.in_(bindparam("ids", expanding=True)))
    .order_by(call_outputs.c.call_id, call_outputs.c.position)
)

# Every finished call that returned one of the artifacts: links a value bound
# without its call (another process, a copy) to the call that made it.
PRODUCERS_OF_ARTIFACTS = (
    select(call_outputs.c.artifact_id, calls.c.id.label("call_id"), calls.c.finished)
    .join(calls, calls.c.id == call_outputs.c.call_id)
    .where(
        call_outputs.c.artifact_id.in_(bindparam("ids", expanding=True)),
        calls.c.status == "done",
    )
)

_nb = bindings.alias("nb")
_nb_latest = bindings.alias("nb_latest")
_nb_current = (
    select(func.max(_nb_latest.c.version))
    .where(_nb_latest.c.scope_id == _nb.c.scope_id, _nb_latest.c.name == _nb.c.name)
    .scalar_subquery()
)
_names = (
    select(
        _nb.c.artifact_id,
        scopes.c.path,
        _nb.c.name,
        func.max(_nb.c.id).label("last_id"),
        func.max(case((_nb.c.version == _nb_current, 1), else_=0)).label("current"),
    )
    .join(scopes, scopes.c.id == _nb.c.scope_id)
    .where(_nb.c.artifact_id.in_(bindparam("ids", expanding=True)))
    .group_by(_nb.c.artifact_id, _nb.c.scope_id, scopes.c.path, _nb.c.name)
    .subquery("names")
)
_ranked_names = select(
    _names,
    func.row_number()
    .over(partition_by=_names.c.artifact_id,
          order_by=(_names.c.current.desc(), _names.c.last_id.desc()))
    .label("rank"),
    func.count().over(partition_by=_names.c.artifact_id).label("total"),
).subquery("ranked_names")
# The (scope, name) pairs bound to each artifact, current bindings first, at
# most ``limit`` per artifact (a value bound in 10,000 scopes lists a few).
NAMES_OF_ARTIFACTS = (
    select(_ranked_names)
    .where(_ranked_names.c.rank <= bindparam("limit", type_=Integer))
    .order_by(_ranked_names.c.artifact_id, _ranked_names.c.rank)
)

# The upstream walk: from one call, through the artifacts it read, to the
# calls that made them, recursively. The producer of an input is the newest
# finished call that returned it and was opened before its consumer (call ids
# grow with time, so the walk strictly descends and always terminates; the
# depth bound is a guard for huge graphs). UNION, not UNION ALL: a call
# reached twice at one depth (a diamond) is expanded once.
_w_ci = call_inputs.alias("w_ci")
_w_co = call_outputs.alias("w_co")
_w_pco = call_outputs.alias("w_pco")
_w_pc = calls.alias("w_pc")
_walk = select(
    bindparam("root", type_=Integer).label("call_id"), literal(0, Integer).label("depth")
).cte("walk", recursive=True)
_walk_producer = (
    select(func.max(_w_pco.c.call_id))
    .join(_w_pc, _w_pc.c.id == _w_pco.c.call_id)
    .where(
        _w_pco.c.artifact_id == _w_ci.c.artifact_id,
        _w_pc.c.status == "done",
        _w_pco.c.call_id < _walk.c.call_id,
    )
    .scalar_subquery()
)
_walk = _walk.union(
    select(_w_co.c.call_id, _walk.c.depth + 1)
    .select_from(
        _walk.join(_w_ci, _w_ci.c.call_id == _walk.c.call_id).join(
            _w_co,
            (_w_co.c.artifact_id == _w_ci.c.artifact_id) & (_w_co.c.call_id == _walk_producer),
        )
    )
    .where(_walk.c.depth < bindparam("max_depth", type_=Integer))
)
UPSTREAM_CALLS = (
    select(_walk.c.call_id, func.min(_walk.c.depth).label("depth"))
    .group_by(_walk.c.call_id)
    .order_by(_walk.c.call_id)
)

FILES_OF_ARTIFACTS = (
    select(files.c.artifact_id, files.c.path)
    .where(files.c.artifact_id.in_(bindparam("ids", expanding=True)))
    .distinct()
    .order_by(files.c.artifact_id, files.c.path)
)

# The first untracked assignment of each artifact: where the value came from.
_first_assignment = (
    select(func.min(bindings.c.id))
    .where(
        bindings.c.artifact_id.in_(bindparam("ids", expanding=True)),
        bindings.c.call_id.is_(None),
        bindings.c.origin.is_not(None),
    )
    .group_by(bindings.c.artifact_id)
)
ASSIGNMENTS_OF_ARTIFACTS = select(bindings.c.artifact_id, bindings.c.origin).where(
    bindings.c.id.in_(_first_assignment)
)

ARTIFACTS_BY_IDS = select(
    artifacts.c.id, artifacts.c.digest, artifacts.c.format, artifacts.c.size, artifacts.c.summary
).where(artifacts.c.id.in_(bindparam("ids", expanding=True)))

# With the algorithm, the (algorithm, digest, format) index answers it.
ARTIFACTS_BY_DIGESTS = (
    select(artifacts.c.digest, func.min(artifacts.c.id).label("id"))
    .where(
        artifacts.c.algorithm == bindparam("algorithm"),
        artifacts.c.digest.in_(bindparam("digests", expanding=True)),
    )
    .group_by(artifacts.c.digest)
)

LATEST_DONE_CALL_OF = select(func.max(calls.c.id)).where(
    calls.c.function == bindparam("function"), calls.c.status == "done"
)


# ----------------------------------------------------------------- impact
# Reads for provstore.lineage.impact: dependents, stale results and run packages.
_im_b = bindings.alias("im_b")
_im_latest = bindings.alias("im_latest")
_im_current = (
    select(func.max(_im_latest.c.version))
    .where(_im_latest.c.scope_id == _im_b.c.scope_id, _im_latest.c.name == _im_b.c.name)
    .scalar_subquery()
)

# The downstream walk: from one artifact, through the finished calls that read
# it, to the artifacts they returned, recursively (UNION; ``max_depth`` bounds
# it, call ids grow with time so real lineage is acyclic). Then the current
# bindings of every artifact reached, with the call that made it.
_dn_ci = call_inputs.alias("dn_ci")
_dn_c = calls.alias("dn_c")
_dn_co = call_outputs.alias("dn_co")
_down = select(
    bindparam("root", type_=Integer).label("artifact_id"), literal(0, Integer).label("depth")
).cte("down", recursive=True)
_down = _down.union(
    select(_dn_co.c.artifact_id, _down.c.depth + 1)
    .select_from(
        _down.join(_dn_ci, _dn_ci.c.artifact_id == _down.c.artifact_id)
        .join(_dn_c, (_dn_c.c.id == _dn_ci.c.call_id) & (_dn_c.c.status == "done"))
        .join(_dn_co, _dn_co.c.call_id == _dn_c.c.id)
    )
    .where(_down.c.depth < bindparam("max_depth", type_=Integer))
)
DOWNSTREAM_BINDINGS = (
    select(
        scopes.c.path,
        _im_b.c.name,
        _im_b.c.version,
        _im_b.c.artifact_id,
        _dn_c.c.function,
        _dn_c.c.id.label("call_id"),
        (_down.c.depth + 1).label("depth"),
    )
    .select_from(
        _down.join(_dn_ci, _dn_ci.c.artifact_id == _down.c.artifact_id)
        .join(_dn_c, (_dn_c.c.id == _dn_ci.c.call_id) & (_dn_c.c.status == "done"))
        .join(_dn_co, _dn_co.c.call_id == _dn_c.c.id)
        .join(_im_b, _im_b.c.artifact_id == _dn_co.c.artifact_id)
        .join(scopes, scopes.c.id == _im_b.c.scope_id)
    )
    .where(_down.c.depth < bindparam("max_depth", type_=Integer),
           _im_b.c.version == _im_current)
    .distinct()
)

# Current, non-deleted bindings with a recorded call at ``path`` and below it
# (``pattern``: the escaped ``path/`` prefix followed by ``%``).
CALLED_BINDINGS_BELOW = (
    select(scopes.c.path, _im_b.c.name, _im_b.c.version, _im_b.c.artifact_id, _im_b.c.call_id)
    .join(scopes, scopes.c.id == _im_b.c.scope_id)
    .where(
        (scopes.c.path == bindparam("path")) | scopes.c.path.like(bindparam("pattern"),
                                                                   escape="\\"),
        _im_b.c.version == _im_current,
        _im_b.c.artifact_id.is_not(None),
        _im_b.c.call_id.is_not(None),
    )
    .order_by(scopes.c.path, _im_b.c.name)
)

# Every (scope, name) that ever bound one of the artifacts: the last version
# that did, and the name's current version and artifact (NULL when deleted).
_im_head = bindings.alias("im_head")
BINDINGS_OF_ARTIFACTS = (
    select(
        _im_b.c.artifact_id,
        scopes.c.path,
        _im_b.c.name,
        func.max(_im_b.c.version).label("version"),
        _im_head.c.version.label("head_version"),
        _im_head.c.artifact_id.label("head_artifact_id"),
    )
    .join(scopes, scopes.c.id == _im_b.c.scope_id)
    .join(_im_head, (_im_head.c.scope_id == _im_b.c.scope_id)
          & (_im_head.c.name == _im_b.c.name) & (_im_head.c.version == _im_current))
    .where(_im_b.c.artifact_id.in_(bindparam("ids", expanding=True)))
    .group_by(_im_b.c.artifact_id, _im_b.c.scope_id, scopes.c.path, _im_b.c.name,
              _im_head.c.version, _im_head.c.artifact_id)
)

RUN_PACKAGES = select(runs.c.id, runs.c.packages).where(
    runs.c.id.in_(bindparam("ids", expanding=True))
)
