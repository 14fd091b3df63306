"""Retention: which calls, binding versions and artifacts ``gc`` may delete.

The plan is computed in memory from a snapshot of the reference graph (calls,
their inputs and outputs, bindings, pins, file records, artifacts), read in
the transaction that then deletes, so no writer commits between the two.

What is always kept:

- every binding version a rule keeps (all of them without ``keep_versions``),
  every version of a pinned name, its artifact and its producing call;
- the lineage of current and pinned versions: the producing call, its
  inputs, the calls that made those inputs (the producer of an input is the
  newest finished call that returned it before its consumer, the rule the
  lineage walk uses), and so on upstream;
- running calls and the stored arguments they were called with;
- everything a kept call reads or returns (a kept call still hits);
- the newest call row and the newest artifact row: SQLite would give their
  ids to the next rows, while other processes still cache the old ones.

The call rules name what else to keep; calls outside every rule given are
dropped. ``max_bytes`` then drops the least recently used calls left until
the values still referenced fit.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from ..backends.container import FORMAT as CONTAINER
from ..backends.container import element_files
from ..db import queries as q
from ..errors import CorruptObjectError

__all__ = ["CONTAINER_MANIFESTS", "Graph", "Plan", "Rules", "plan", "read_elements",
           "read_graph"]


@dataclass(frozen=True)
class Rules:
    """What :func:`provstore.maintenance.gc` was asked to keep."""

    keep_versions: int | None = None
    keep_calls: int | None = None
    newer_than: dt.datetime | None = None
    max_bytes: int | None = None

    @property
    def call_rules(self) -> bool:
        """Whether any rule may drop calls."""
        return (self.keep_calls is not None or self.newer_than is not None
                or self.max_bytes is not None)

    @property
    def any(self) -> bool:
        """Whether any retention rule was given (else gc removes only what nothing names)."""
        return self.keep_versions is not None or self.call_rules


@dataclass
class Graph:
    """The reference graph of a store, as :func:`read_graph` found it."""

    calls: dict[int, Any]
    outputs: dict[int, list[int]]
    inputs: dict[int, list[int]]  # stored arguments only
    input_rows: Counter[int]  # every argument row, per call
    bindings: list[Any]
    pinned: set[tuple[int, str]]
    filed: set[int]
    artifacts: dict[int, Any]
    code_versions: dict[str, int]
    live: set[int]
    producers: dict[int, list[int]] = field(default_factory=dict)  # artifact → done calls
    # container artifact → its element files (digest, suffix, size), from its manifest
    elements: dict[int, list[tuple[str, str, int]]] = field(default_factory=dict)

    def size(self, artifact_id: int) -> int:
        """Bytes an artifact takes: its row's size plus its element files (containers)."""
        own: int = self.artifacts[artifact_id].size  # artifacts.size, an Integer column
        return own + sum(n for _, _, n in self.elements.get(artifact_id, ()))

    def __post_init__(self) -> None:
        # A dry run reads without a write lock: rows of calls committed or
        # deleted between its statements are left out, never looked up.
        for call_id in sorted(self.outputs):
            row = self.calls.get(call_id)
            if row is not None and row.status == "done":
                for a in self.outputs[call_id]:
                    self.producers.setdefault(a, []).append(call_id)


@dataclass
class Plan:
    """What the rules drop; ``files`` are (digest, suffix, size) no kept row names."""

    bindings: list[int] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    artifacts: list[int] = field(default_factory=list)
    code_versions: list[int] = field(default_factory=list)
    files: list[tuple[str, str, int]] = field(default_factory=list)
    # element files of dropped containers that no kept artifact names: removed
    # only once older than gc's grace period, as a writer republishes the
    # elements of a container it is about to commit
    element_files: list[tuple[str, str, int]] = field(default_factory=list)
    protected: int = 0  # artifacts kept only because a running call uses them
    kept_bytes: int = 0  # values still referenced afterwards


def read_graph(conn: Connection, now: dt.datetime) -> Graph:
    """Read the reference graph in the open transaction *conn*."""
    outputs: dict[int, list[int]] = {}
    for r in conn.execute(q.GC_CALL_OUTPUTS):
        outputs.setdefault(r.call_id, []).append(r.artifact_id)
    inputs: dict[int, list[int]] = {}
    input_rows: Counter[int] = Counter()
    for r in conn.execute(q.GC_CALL_INPUTS):
        input_rows[r.call_id] += 1
        if r.artifact_id is not None:  # an argument that was no stored value
            inputs.setdefault(r.call_id, []).append(r.artifact_id)
    return Graph(
        calls={r.id: r for r in conn.execute(q.GC_CALLS)},
        outputs=outputs, inputs=inputs, input_rows=input_rows,
        bindings=list(conn.execute(q.GC_BINDINGS)),
        pinned={(r.scope_id, r.name) for r in conn.execute(q.GC_PINS)},
        filed=set(conn.execute(q.GC_FILED).scalars()),
        artifacts={r.id: r for r in conn.execute(q.GC_ARTIFACTS)},
        code_versions={r.digest: r.id for r in conn.execute(q.GC_CODE_VERSIONS)},
        live=_live_artifacts(conn.execute(q.GC_LIVE_PARAMS, {"now": now}).scalars()),
        elements=read_elements(conn.execute(CONTAINER_MANIFESTS)),
    )


CONTAINER_MANIFESTS = select(q.artifacts.c.id, q.artifacts.c.meta).where(
    q.artifacts.c.format == CONTAINER)
"""The manifests of stored containers, which name their element files."""


def read_elements(rows: Iterable[Any]) -> dict[int, list[tuple[str, str, int]]]:
    """Container artifact → the element files its manifest names (digest, suffix, size).

    *rows* are the results of :data:`CONTAINER_MANIFESTS`.
    """
    found: dict[int, list[tuple[str, str, int]]] = {}
    for r in rows:
        try:
            found[r.id] = [(f.digest, f.suffix, f.size)
                           for f in element_files(json.loads(r.meta))]
        except (CorruptObjectError, ValueError):
            continue  # a damaged manifest, which verify reports
    return found


def _live_artifacts(params: Iterable[str | None]) -> set[int]:
    # A running call records its inputs only when it commits; until then its
    # params name the stored artifacts it was called with.
    found: set[int] = set()
    for text in params:
        for value in json.loads(text or "{}").values():
            if isinstance(value, dict) and isinstance(value.get("artifact"), int):
                found.add(value["artifact"])
    return found


def plan(g: Graph, rules: Rules) -> Plan:
    """Decide what *rules* drop from the store *g*."""
    out = Plan()
    kept_bindings = _kept_bindings(g, rules.keep_versions)
    out.bindings = sorted(b.id for b in g.bindings if b.id not in kept_bindings)
    needed = _needed_calls(g, [b for b in g.bindings if b.id in kept_bindings])
    doomed = _doomed_calls(g, needed, rules) if rules.call_rules else set()
    refs = _references(g, kept_bindings, doomed, files_count=not rules.any)
    if rules.max_bytes is not None:
        doomed |= _evict(g, needed | doomed, refs, rules.max_bytes)
    out.calls = sorted(doomed)
    newest = max(g.artifacts, default=None)
    unreferenced = [a for a in g.artifacts if refs[a] == 0 and a != newest]
    out.protected = sum(a in g.live for a in unreferenced)
    out.artifacts = sorted(a for a in unreferenced if a not in g.live)
    out.kept_bytes = sum(g.size(a) for a in g.artifacts if refs[a] > 0)
    used = {g.calls[c].code_digest for c in g.calls if c not in doomed}
    out.code_versions = sorted(i for d, i in g.code_versions.items() if d not in used)
    out.files = _unshared_files(g, set(out.artifacts))
    out.element_files = _unshared_elements(g, set(out.artifacts))
    return out


def _kept_bindings(g: Graph, keep: int | None) -> set[int]:
    latest: dict[tuple[int, str], int] = {}
    for b in g.bindings:
        key = (b.scope_id, b.name)
        latest[key] = max(latest.get(key, 0), b.version)
    return {b.id for b in g.bindings
            if keep is None or b.version > latest[(b.scope_id, b.name)] - keep
            or (b.scope_id, b.name) in g.pinned}


def _needed_calls(g: Graph, kept: list[Any]) -> set[int]:
    """Calls kept whatever the rules: producers of kept versions, lineage of current and
    pinned ones, and running calls."""
    latest: dict[tuple[int, str], int] = {}
    for b in kept:
        key = (b.scope_id, b.name)
        latest[key] = max(latest.get(key, 0), b.version)
    needed = {c for c, r in g.calls.items() if r.status == "running"}
    walk: list[int] = []
    for b in kept:
        producer = b.call_id if b.call_id in g.calls else _producer_of_binding(g, b)
        if producer is None:
            continue
        needed.add(producer)
        root = b.version == latest[(b.scope_id, b.name)] or (b.scope_id, b.name) in g.pinned
        if root:
            walk.append(producer)
    seen: set[int] = set()
    while walk:
        call_id = walk.pop()
        if call_id in seen:
            continue
        seen.add(call_id)
        needed.add(call_id)
        for a in g.inputs.get(call_id, ()):
            made = g.producers.get(a, [])
            k = bisect.bisect_left(made, call_id)
            if k:
                walk.append(made[k - 1])
    if g.calls:
        needed.add(max(g.calls))
    return needed


def _producer_of_binding(g: Graph, b: Any) -> int | None:
    # As lineage reads it: the newest finished call that returned the value,
    # preferring those that finished before the binding was made.
    found = g.producers.get(b.artifact_id, []) if b.artifact_id is not None else []
    before = [c for c in found if g.calls[c].finished is not None
              and g.calls[c].finished <= b.created]
    return max(before or found, default=None)


def last_used(row: Any) -> dt.datetime:
    """When a call's result was last used: its newest hit, else when it finished."""
    # DateTime columns of calls (rows are untyped: the graph holds plain Rows).
    times: list[dt.datetime] = [t for t in (row.last_hit, row.finished, row.started)
                                if t is not None]
    return max(times)


def _doomed_calls(g: Graph, needed: set[int], rules: Rules) -> set[int]:
    """Calls outside every keep rule given (with only max_bytes: none yet)."""
    if rules.keep_calls is None and rules.newer_than is None:
        return set()
    scope_of: dict[int, int] = {}
    for b in g.bindings:
        if b.call_id is not None:
            scope_of[b.call_id] = min(scope_of.get(b.call_id, b.scope_id), b.scope_id)
    kept: set[int] = set()
    if rules.keep_calls is not None:
        # The newest N finished calls, and the newest N failed attempts, of
        # each function in each scope (the scope of the bindings made from
        # it). A call bound nowhere (or no longer) counts among all the
        # calls of its function, so that old results whose versions were
        # pruned do not survive as the newest of their own group.
        in_scope: Counter[tuple[str, int, bool]] = Counter()
        overall: Counter[tuple[str, bool]] = Counter()
        for c in sorted(g.calls, reverse=True):
            r = g.calls[c]
            done = r.status == "done"
            overall[(r.function, done)] += 1
            scope = scope_of.get(c)
            if scope is None:
                rank = overall[(r.function, done)]
            else:
                in_scope[(r.function, scope, done)] += 1
                rank = in_scope[(r.function, scope, done)]
            if rank <= rules.keep_calls:
                kept.add(c)
    if rules.newer_than is not None:
        kept |= {c for c, r in g.calls.items() if last_used(r) >= rules.newer_than}
    return set(g.calls) - kept - needed


def _references(g: Graph, kept_bindings: set[int], doomed: set[int], *,
                files_count: bool) -> Counter[int]:
    refs: Counter[int] = Counter({a: 0 for a in g.artifacts})
    for b in g.bindings:
        if b.id in kept_bindings and b.artifact_id is not None:
            refs[b.artifact_id] += 1
    for c in g.calls:
        if c not in doomed:
            for a in (*g.inputs.get(c, ()), *g.outputs.get(c, ())):
                refs[a] += 1
    if files_count:  # without rules, an ingested file's record keeps its value (as before)
        for a in g.filed:
            refs[a] += 1
    return refs


def _evict(g: Graph, spared: set[int], refs: Counter[int], max_bytes: int) -> set[int]:
    """Drop the least recently used calls not *spared* until the referenced values fit."""
    total = sum(g.size(a) for a in g.artifacts if refs[a] > 0)
    evicted: set[int] = set()
    order = sorted((c for c in g.calls if c not in spared),
                   key=lambda c: (last_used(g.calls[c]), c))
    for c in order:
        if total <= max_bytes:
            break
        evicted.add(c)
        for a in (*g.inputs.get(c, ()), *g.outputs.get(c, ())):
            refs[a] -= 1
            if refs[a] == 0 and a in g.artifacts:
                total -= g.size(a)
    return evicted


def _unshared_files(g: Graph, doomed: set[int]) -> list[tuple[str, str, int]]:
    """Object files of *doomed* artifacts that no kept artifact row names."""
    files = {(r.digest, r.suffix): r.size for a, r in g.artifacts.items()
             if a in doomed and not r.is_inline}
    for a, r in g.artifacts.items():
        if a not in doomed:
            files.pop((r.digest, r.suffix), None)
            for d, s, _ in g.elements.get(a, ()):  # a raw file may also be an element
                files.pop((d, s), None)
    return [(d, s, n) for (d, s), n in files.items()]


def _unshared_elements(g: Graph, doomed: set[int]) -> list[tuple[str, str, int]]:
    """Element files of *doomed* containers that no kept artifact names (nor its own file)."""
    files = {(d, s): n for a in doomed for d, s, n in g.elements.get(a, ())}
    for a, r in g.artifacts.items():
        if a not in doomed:
            files.pop((r.digest, r.suffix), None)
            for d, s, _ in g.elements.get(a, ()):
                files.pop((d, s), None)
    return [(d, s, n) for (d, s), n in files.items()]
