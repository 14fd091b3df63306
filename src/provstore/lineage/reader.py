"""Reading lineage: rows of the store's database turned into the lineage model.

:class:`LineageReader` reads calls in batches (one query per table for any
number of calls, chunked under SQLite's parameter limit), walks the upstream
graph with one recursive query (:data:`provstore.db.lineage_queries.UPSTREAM_CALLS`)
and the downstream one likewise. It is the only part of :mod:`provstore.lineage`
that runs SQL.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Executable

from .. import hashing
from ..db import lineage_queries as lq
from ..runs import status_of
from ..store import Store
from .model import (
    DEFAULT_DEPTH,
    BoundName,
    CallInfo,
    CallSource,
    Edge,
    InputInfo,
    LineageGraph,
    Node,
    RunInfo,
    Version,
    describe_artifact,
)

__all__ = ["LineageReader", "VersionCalls", "version_from_row"]

CHUNK = 500  # ids per IN list: far below SQLite's 32,766 bound parameters
NAMES_SHOWN = 5  # bindings listed per artifact


class LineageReader:
    """Batched reads of calls and lineage from one store (calls cached: they never change)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._calls: dict[int, CallInfo] = {}

    def _rows(self, statement: Executable, ids: Iterable[Any], key: str = "ids",
              **params: Any) -> list[Any]:
        unique = sorted(set(ids))
        rows: list[Any] = []
        for i in range(0, len(unique), CHUNK):
            rows.extend(self._store.query(statement, {key: unique[i:i + CHUNK], **params}).all())
        return rows

    # ------------------------------------------------------------ calls
    def version_calls(self, versions: Sequence[Version]) -> dict[int, CallInfo | None]:
        """Map each version number to its producing call.

        The binding's own call when recorded; else the newest finished call
        that returned the version's artifact, preferring calls that finished
        before the binding was made.
        """
        ids = {v.number: v.call_id for v in versions}
        unlinked: dict[int, int] = {v.number: v.artifact_id for v in versions
                                    if v.call_id is None and v.artifact_id is not None}
        if unlinked:
            producers: dict[int, list[Any]] = {}
            for r in self._rows(lq.PRODUCERS_OF_ARTIFACTS, unlinked.values()):
                producers.setdefault(r.artifact_id, []).append(r)
            for v in versions:
                if v.number not in unlinked:
                    continue
                found = producers.get(unlinked[v.number], [])
                before = [r for r in found if r.finished is not None and r.finished <= v.created]
                best = max(before or found, key=lambda r: r.call_id, default=None)
                ids[v.number] = None if best is None else best.call_id
        calls = self.calls(i for i in ids.values() if i is not None)
        return {n: (calls.get(i) if i is not None else None) for n, i in ids.items()}

    def calls(self, ids: Iterable[int]) -> dict[int, CallInfo]:
        """Return the calls *ids* (missing ids are left out), in four queries at most."""
        wanted = set(ids)
        missing = wanted - self._calls.keys()
        if missing:
            rows = self._rows(lq.CALLS_BY_IDS, missing)
            inputs: dict[int, list[Any]] = {}
            for r in self._rows(lq.CALL_INPUTS_BY_CALLS, missing):
                inputs.setdefault(r.call_id, []).append(r)
            outputs: dict[int, list[int]] = {}
            for r in self._rows(lq.CALL_OUTPUTS_BY_CALLS, missing):
                outputs.setdefault(r.call_id, []).append(r.artifact_id)
            names = self.names(r.artifact_id for rs in inputs.values() for r in rs
                               if r.artifact_id is not None)
            for r in rows:
                self._calls[r.id] = _call(r, inputs.get(r.id, []), outputs.get(r.id, []), names)
        return {i: self._calls[i] for i in wanted if i in self._calls}

    def names(self, artifact_ids: Iterable[int]) -> dict[int, tuple[tuple[BoundName, ...], int]]:
        """A few bindings of each artifact (current first) and how many there are in all."""
        found: dict[int, tuple[list[BoundName], int]] = {}
        for r in self._rows(lq.NAMES_OF_ARTIFACTS, artifact_ids, limit=NAMES_SHOWN):
            path = f"{r.path}/{r.name}" if r.path else r.name
            bound = BoundName(path, bool(r.current))
            found.setdefault(r.artifact_id, ([], r.total))[0].append(bound)
        return {a: (tuple(bound), total) for a, (bound, total) in found.items()}

    def latest_done_call(self, function: str) -> int | None:
        """The newest finished call of *function* (``module:qualname``), if any."""
        found = self._store.query(lq.LATEST_DONE_CALL_OF, {"function": function}).scalar()
        return None if found is None else int(found)

    def with_names(self, inputs: dict[str, InputInfo]) -> dict[str, InputInfo]:
        """Link arguments to stored artifacts by digest, and attach their names."""
        by_digest = {r.digest: r.id for r in self._rows(
            lq.ARTIFACTS_BY_DIGESTS, (i.digest for i in inputs.values() if i.artifact_id is None),
            key="digests", algorithm=hashing.ALGORITHM)}
        linked = {n: i if i.artifact_id is not None else
                  replace(i, artifact_id=by_digest.get(i.digest)) for n, i in inputs.items()}
        names = self.names(i.artifact_id for i in linked.values() if i.artifact_id is not None)
        return {n: _named(i, names) for n, i in linked.items()}

    # ------------------------------------------------------- downstream
    def downstream_bindings(self, artifact_id: int, max_depth: int) -> list[Any]:
        """Current bindings made, through up to *max_depth* calls, from *artifact_id*."""
        return list(self._store.query(lq.DOWNSTREAM_BINDINGS,
                                      {"root": artifact_id, "max_depth": max_depth}).all())

    def called_bindings_below(self, scope: str) -> list[Any]:
        """Current bindings at and below *scope* that a tracked call produced."""
        prefix = f"{scope}/" if scope else ""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return list(self._store.query(lq.CALLED_BINDINGS_BELOW,
                                      {"path": scope, "pattern": pattern}).all())

    def bindings_of_artifacts(self, artifact_ids: Iterable[int]) -> list[Any]:
        """Every binding of the artifacts, with the current head of its name."""
        return self._rows(lq.BINDINGS_OF_ARTIFACTS, artifact_ids)

    def code_sources(self, digests: Iterable[str]) -> dict[str, str]:
        """The stored normalized source of each code version or part, by digest."""
        return {r.digest: r.source for r in self._rows(lq.CODE_SOURCES_BY_DIGESTS, digests)}

    def run_packages(self, run_ids: list[int]) -> dict[int, dict[str, str] | None]:
        """The recorded package versions of each run."""
        return {r.id: json.loads(r.packages) if r.packages else None
                for r in self._store.query(lq.RUN_PACKAGES, {"ids": run_ids}).all()}

    # ---------------------------------------------------------- upstream
    def upstream(self, artifact_id: int, call_id: int | None, *, origin: str | None,
                 name: BoundName, depth: int = DEFAULT_DEPTH) -> LineageGraph:
        """Walk from an artifact (made by *call_id*, or assigned at *origin*) upstream.

        One recursive query finds the calls up to *depth* levels (and one
        level more, to tell whether the walk was cut short); batched queries
        then read those calls, the artifacts' details, and where the leaves
        came from (ingested files, untracked assignments).
        """
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        walked: dict[int, int] = {}
        if call_id is not None:
            rows = self._store.query(lq.UPSTREAM_CALLS, {"root": call_id, "max_depth": depth})
            walked = {int(r.call_id): int(r.depth) for r in rows.all()}
        calls = self.calls(walked)
        details = {r.id: r for r in self._rows(lq.ARTIFACTS_BY_IDS, [artifact_id, *(
            i.artifact_id for c in calls.values() if walked[c.id] < depth
            for i in c.inputs.values() if i.artifact_id is not None)])}
        g = LineageGraph(root=_artifact_node(artifact_id, (name,), 0, details))
        g.add(g.root)
        leaves: dict[int, tuple[str, int]] = {}  # artifact id → (node id, depth)
        if call_id in calls:
            root_call = g.add(_call_node(calls[call_id], 0))
            g.link(Edge(root_call.id, g.root.id, "output"))
            g.set_producer(g.root.id, None, root_call.id)
            self._expand(g, calls, walked, depth, details, leaves)
        else:
            leaves[artifact_id] = (g.root.id, 0)
        self._leaves(g, leaves, root_origin=origin if call_id not in calls else None)
        return g

    @staticmethod
    def _expand(g: LineageGraph, calls: dict[int, CallInfo], walked: dict[int, int], depth: int,
                details: dict[int, Any], leaves: dict[int, tuple[str, int]]) -> None:
        # The producer of each input is the newest walked call that returned it
        # before the consumer: the same rule as the recursive query.
        made_by: dict[int, list[int]] = {}
        for cid in sorted(walked):
            if cid in calls:
                for a in calls[cid].outputs:
                    made_by.setdefault(a, []).append(cid)
        for cid in sorted(walked, key=lambda c: (walked[c], -c)):
            if walked[cid] >= depth or cid not in calls:
                continue  # one level past the limit: only tells that lineage goes on
            consumer = g.add(_call_node(calls[cid], walked[cid]))
            for arg, i in calls[cid].inputs.items():
                if i.artifact_id is None:
                    if i.file_path is not None:
                        f = g.add(Node(f"file:{i.file_path}", "file", i.file_path,
                                        walked[cid] + 1, path=i.file_path))
                        g.link(Edge(f.id, consumer.id, "input", arg))
                    continue
                makers = made_by.get(i.artifact_id, [])
                k = bisect.bisect_left(makers, cid)
                producer = makers[k - 1] if k else None
                beyond = producer is not None and walked[producer] >= depth
                node = g.add(_artifact_node(i.artifact_id, i.names, walked[cid] + 1, details,
                                             truncated=beyond))
                g.link(Edge(node.id, consumer.id, "input", arg))
                if beyond:
                    g.truncated = True
                elif producer is not None:
                    made = g.add(_call_node(calls[producer], walked[producer]))
                    g.link(Edge(made.id, node.id, "output"))
                    g.set_producer(node.id, consumer.id, made.id)
                else:
                    leaves[i.artifact_id] = (node.id, walked[cid] + 1)

    def _leaves(self, g: LineageGraph, leaves: dict[int, tuple[str, int]], *,
                root_origin: str | None) -> None:
        """Link artifacts no walked call made to their ingested files or assignments."""
        if not leaves:
            return
        ingested: set[int] = set()
        for r in self._rows(lq.FILES_OF_ARTIFACTS, leaves):
            node_id, d = leaves[r.artifact_id]
            f = g.add(Node(f"file:{r.path}", "file", r.path, d, path=r.path))
            g.link(Edge(f.id, node_id, "ingested"))
            ingested.add(r.artifact_id)
        origins = {int(r.artifact_id): r.origin for r in self._rows(
            lq.ASSIGNMENTS_OF_ARTIFACTS, set(leaves) - ingested)}
        if root_origin is not None and g.root.artifact_id not in ingested:
            # The version itself was assigned: its own line, not the first ever.
            assert g.root.artifact_id is not None
            origins[g.root.artifact_id] = root_origin
        for artifact_id, where in sorted(origins.items()):
            node_id, d = leaves[artifact_id]
            a = g.add(Node(f"assignment:{where}", "assignment", f"assigned at {where}", d,
                            path=where))
            g.link(Edge(a.id, node_id, "assigned"))


def _named(i: InputInfo, names: dict[int, tuple[tuple[BoundName, ...], int]]) -> InputInfo:
    if i.artifact_id is None or i.artifact_id not in names:
        return i
    bound, total = names[i.artifact_id]
    return replace(i, names=bound, name_count=total)


def _call(r: Any, inputs: list[Any], outputs: list[int],
          names: dict[int, tuple[tuple[BoundName, ...], int]]) -> CallInfo:
    run = None
    if r.run_id is not None and r.run_host is not None:
        run = RunInfo(r.run_id, r.run_host, r.run_pid, r.run_user, r.run_started,
                      status_of(r.run_status, r.run_heartbeat, host=r.run_host, pid=r.run_pid),
                      tuple(json.loads(r.run_argv)) if r.run_argv else (), r.run_cwd)
    params = json.loads(r.params) if r.params else {}
    # Arguments in the function's parameter order, which params (a JSON object
    # written in signature order) preserves.
    order = {name: k for k, name in enumerate(params)}
    infos = {i.name: _named(InputInfo(i.name, i.digest, i.artifact_id, i.file_path,
                                      json.loads(i.summary) if i.summary else None), names)
             for i in sorted(inputs, key=lambda i: (order.get(i.name, len(order)), i.name))}
    return CallInfo(
        id=r.id, function=r.function, code_digest=r.code_digest, key=r.key, status=r.status,
        params=params, inputs=infos, outputs=tuple(outputs), output_kind=r.output_kind,
        source=r.source, deps=json.loads(r.deps) if r.deps else {}, pinned=r.pinned, run=run,
        started=r.started, finished=r.finished, duration=r.duration, error=r.error,
        host=r.host, pid=r.pid, takeover_of=r.takeover_of, defined_at=r.defined_at,
        code_identity=r.code_identity,
    )


def _artifact_node(artifact_id: int, names: tuple[BoundName, ...], depth: int,
                   details: dict[int, Any], *, truncated: bool = False) -> Node:
    row = details.get(artifact_id)
    title = str(names[0]) if names else f"artifact {artifact_id}"
    label = title
    if row is not None:
        summary = json.loads(row.summary) if row.summary else {}
        label = f"{title}\n{describe_artifact(row.format, summary, row.size)}"
    return Node(f"artifact:{artifact_id}", "artifact", label, depth, artifact_id=artifact_id,
                digest=row.digest if row is not None else None, names=names, truncated=truncated)


def _call_node(call: CallInfo, depth: int) -> Node:
    return Node(f"call:{call.id}", "call", f"{call.function}\n{call.code_digest[:12]}", depth,
                call=call)


class VersionCalls:
    """The :class:`~provstore.lineage.model.CallSource` of one history's versions.

    Resolves the calls of all versions together, on first use, so reading a
    history costs one query and its calls a bounded few more.
    """

    def __init__(self, store: Store) -> None:
        self.reader = LineageReader(store)
        self.versions: list[Version] = []
        self._by_number: dict[int, CallInfo | None] | None = None

    def call_of(self, version: Version) -> CallInfo | None:
        """The producing call of *version* (see :meth:`LineageReader.version_calls`)."""
        if self._by_number is None:
            self._by_number = self.reader.version_calls(self.versions)
        return self._by_number.get(version.number)

    def upstream(self, version: Version, *, depth: int) -> LineageGraph:
        """The lineage graph of *version*, walked *depth* call levels up."""
        assert version.artifact_id is not None
        call = version.call
        return self.reader.upstream(
            version.artifact_id, call.id if call is not None else None, origin=version.origin,
            name=BoundName(version.path, True), depth=depth,
        )

    def run_packages(self, run_ids: list[int]) -> dict[int, dict[str, str] | None]:
        """See :meth:`LineageReader.run_packages`."""
        return self.reader.run_packages(run_ids)

    def code_sources(self, digests: Iterable[str]) -> dict[str, str]:
        """See :meth:`LineageReader.code_sources`."""
        return self.reader.code_sources(digests)


def version_from_row(scope: str, name: str, r: Any, source: CallSource | None) -> Version:
    """A :class:`Version` from a :data:`provstore.db.queries.VERSIONS` row."""
    run = None
    if r.run_id is not None:
        run = RunInfo(r.run_id, r.host, r.pid, r.user, r.run_started,
                      status_of(r.run_status, r.run_heartbeat, host=r.host, pid=r.pid))
    return Version(
        number=r.version, scope=scope, name=name, artifact_id=r.artifact_id, digest=r.digest,
        format=r.format, size=r.size, summary=json.loads(r.summary) if r.summary else {},
        created=r.created, origin=r.origin, run=run, call_id=r.call_id, lineage=source,
    )
