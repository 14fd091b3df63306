"""Reading lineage: calls of versions and the upstream graph.

:class:`LineageReader` turns rows into :class:`~provstore.lineage.CallInfo`
objects in batches (one query per table for any number of calls, chunked
under SQLite's parameter limit) and walks the upstream graph with one
recursive query (:data:`provstore.db.queries.UPSTREAM_CALLS`).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import hashing
from .db import lineage_queries as lq
from .lineage import (
    DEFAULT_DEPTH,
    BoundName,
    CallInfo,
    InputInfo,
    RunInfo,
    Version,
    describe_artifact,
)
from .runs import status_of

__all__ = ["Edge", "LineageGraph", "LineageReader", "Node"]

CHUNK = 500  # ids per IN list: far below SQLite's 32,766 bound parameters
NAMES_SHOWN = 5  # bindings listed per artifact


@dataclass(frozen=True)
class Node:
    """A node of a lineage graph.

    Attributes
    ----------
    id : str
        ``artifact:<id>``, ``call:<id>``, ``file:<path>`` or ``assignment:<file:line>``.
    kind : str
        ``"artifact"``, ``"call"``, ``"file"`` or ``"assignment"``.
    label : str
        A short human-readable description.
    depth : int
        Call levels between the node and the walked version (0 at the version).
    artifact_id : int or None
        For artifact nodes.
    call : CallInfo or None
        For call nodes.
    path : str or None
        The file of a file node; ``file:line`` of an assignment node.
    names : tuple of BoundName
        For artifact nodes: a few bindings of the artifact.
    truncated : bool
        An artifact whose producing call lies beyond the depth limit.
    """

    id: str
    kind: str
    label: str
    depth: int = 0
    artifact_id: int | None = None
    call: CallInfo | None = None
    path: str | None = None
    digest: str | None = None
    names: tuple[BoundName, ...] = ()
    truncated: bool = False


@dataclass(frozen=True)
class Edge:
    """A typed edge, from the upstream node to the downstream one.

    ``kind`` is ``"output"`` (call → artifact), ``"input"`` (artifact or
    file → call; ``name`` is the argument), ``"ingested"`` (file →
    artifact) or ``"assigned"`` (assignment → artifact).
    """

    source: str
    target: str
    kind: str
    name: str | None = None


@dataclass
class LineageGraph:
    """The upstream lineage of one version: what it was computed from.

    ``len(graph)`` is the number of nodes; iterating yields the nodes, and
    ``graph["call:3"]`` looks one up.

    Attributes
    ----------
    root : Node
        The version's artifact.
    nodes : list of Node
        Every node, the root first.
    edges : list of Edge
        Every edge, upstream → downstream.
    truncated : bool
        Whether the walk stopped at the depth limit with lineage left to walk.
    """

    root: Node
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    truncated: bool = False
    _index: dict[str, Node] = field(default_factory=dict, repr=False)
    _into: dict[str, list[Edge]] = field(default_factory=dict, repr=False)
    _producers: dict[tuple[str, str | None], str] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __contains__(self, node: object) -> bool:
        return (node.id if isinstance(node, Node) else node) in self._index

    def __getitem__(self, node_id: str) -> Node:
        return self._index[node_id]

    def of_kind(self, kind: str) -> list[Node]:
        """The nodes of one kind (``"artifact"``, ``"call"``, ``"file"``, ``"assignment"``)."""
        return [n for n in self.nodes if n.kind == kind]

    def edges_of(self, kind: str) -> list[Edge]:
        """The edges of one kind (``"output"``, ``"input"``, ``"ingested"``, ``"assigned"``)."""
        return [e for e in self.edges if e.kind == kind]

    def calls(self) -> list[CallInfo]:
        """The calls, nearest to the version first."""
        return [n.call for n in self.nodes if n.call is not None]

    def parents(self, node_id: str) -> list[tuple[Edge, Node]]:
        """The edges into *node_id* with their upstream nodes."""
        return [(e, self._index[e.source]) for e in self._into.get(node_id, [])]

    def producer(self, artifact_node: str, consumer: str | None = None) -> Node | None:
        """The call that made an artifact, as read by *consumer* (a call node id).

        An artifact recomputed later can have several producers; each
        consumer read the one made before it. ``consumer=None`` asks for the
        producer of the root.
        """
        found = self._producers.get((artifact_node, consumer))
        return None if found is None else self._index[found]

    def to_dot(self) -> str:
        """The graph in Graphviz DOT (``dot -Tsvg``), upstream on the left."""
        shapes = {"artifact": "box", "call": "ellipse", "file": "note", "assignment": "plaintext"}
        lines = ["digraph lineage {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
        for n in self.nodes:
            lines.append(f"  {_dot_id(n.id)} [label={_dot_id(n.label)}, shape={shapes[n.kind]}];")
        for e in self.edges:
            attrs = f" [label={_dot_id(e.name)}]" if e.name else ""
            lines.append(f"  {_dot_id(e.source)} -> {_dot_id(e.target)}{attrs};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_frame(self) -> Any:
        """One row per node: id, kind, label, depth, artifact and call ids, function, path.

        Raises
        ------
        ImportError
            pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError(
                "LineageGraph.to_frame() needs pandas (pip install pandas); "
                "graph.nodes and graph.edges hold the same data"
            ) from exc
        rows = [{"id": n.id, "kind": n.kind, "label": n.label, "depth": n.depth,
                 "artifact_id": n.artifact_id, "call_id": n.call.id if n.call else None,
                 "function": n.call.function if n.call else None, "digest": n.digest,
                 "path": n.path, "names": [b.path for b in n.names]} for n in self.nodes]
        return pd.DataFrame(rows, columns=["id", "kind", "label", "depth", "artifact_id",
                                           "call_id", "function", "digest", "path", "names"])

    def __repr__(self) -> str:
        kinds = {k: len(self.of_kind(k)) for k in ("artifact", "call", "file", "assignment")}
        counts = ", ".join(f"{v} {k}s" for k, v in kinds.items() if v)
        title = self.root.label.splitlines()[0]
        return f"<LineageGraph of {title!r}: {counts}, {len(self.edges)} edges>"

    # -------------------------------------------------------- construction
    def _add(self, node: Node) -> Node:
        found = self._index.get(node.id)
        if found is not None:
            return found
        self._index[node.id] = node
        self.nodes.append(node)
        return node

    def _link(self, edge: Edge) -> None:
        into = self._into.setdefault(edge.target, [])
        if edge not in into:  # an edge is found once per path that reaches it
            into.append(edge)
            self.edges.append(edge)


def _dot_id(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class LineageReader:
    """Batched reads of calls and lineage from one store (calls cached: they never change)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._calls: dict[int, CallInfo] = {}

    def _rows(self, statement: Any, ids: Iterable[Any], key: str = "ids",
              **params: Any) -> list[Any]:
        unique = sorted(set(ids))
        rows: list[Any] = []
        for i in range(0, len(unique), CHUNK):
            rows.extend(self._store._query(statement, {key: unique[i:i + CHUNK], **params}).all())
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
        found = self._store._query(lq.LATEST_DONE_CALL_OF, {"function": function}).scalar()
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
            rows = self._store._query(lq.UPSTREAM_CALLS, {"root": call_id, "max_depth": depth})
            walked = {int(r.call_id): int(r.depth) for r in rows.all()}
        calls = self.calls(walked)
        details = {r.id: r for r in self._rows(lq.ARTIFACTS_BY_IDS, [artifact_id, *(
            i.artifact_id for c in calls.values() if walked[c.id] < depth
            for i in c.inputs.values() if i.artifact_id is not None)])}
        g = LineageGraph(root=_artifact_node(artifact_id, (name,), 0, details))
        g._add(g.root)
        leaves: dict[int, tuple[str, int]] = {}  # artifact id → (node id, depth)
        if call_id in calls:
            root_call = g._add(_call_node(calls[call_id], 0))
            g._link(Edge(root_call.id, g.root.id, "output"))
            g._producers[(g.root.id, None)] = root_call.id
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
            consumer = g._add(_call_node(calls[cid], walked[cid]))
            for arg, i in calls[cid].inputs.items():
                if i.artifact_id is None:
                    if i.file_path is not None:
                        f = g._add(Node(f"file:{i.file_path}", "file", i.file_path,
                                        walked[cid] + 1, path=i.file_path))
                        g._link(Edge(f.id, consumer.id, "input", arg))
                    continue
                makers = made_by.get(i.artifact_id, [])
                k = bisect.bisect_left(makers, cid)
                producer = makers[k - 1] if k else None
                beyond = producer is not None and walked[producer] >= depth
                node = g._add(_artifact_node(i.artifact_id, i.names, walked[cid] + 1, details,
                                             truncated=beyond))
                g._link(Edge(node.id, consumer.id, "input", arg))
                if beyond:
                    g.truncated = True
                elif producer is not None:
                    made = g._add(_call_node(calls[producer], walked[producer]))
                    g._link(Edge(made.id, node.id, "output"))
                    g._producers[(node.id, consumer.id)] = made.id
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
            f = g._add(Node(f"file:{r.path}", "file", r.path, d, path=r.path))
            g._link(Edge(f.id, node_id, "ingested"))
            ingested.add(r.artifact_id)
        origins = {int(r.artifact_id): r.origin for r in self._rows(
            lq.ASSIGNMENTS_OF_ARTIFACTS, set(leaves) - ingested)}
        if root_origin is not None and g.root.artifact_id not in ingested:
            # The version itself was assigned: its own line, not the first ever.
            assert g.root.artifact_id is not None
            origins[g.root.artifact_id] = root_origin
        for artifact_id, where in sorted(origins.items()):
            node_id, d = leaves[artifact_id]
            a = g._add(Node(f"assignment:{where}", "assignment", f"assigned at {where}", d,
                            path=where))
            g._link(Edge(a.id, node_id, "assigned"))


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
                      status_of(r.run_status, r.run_heartbeat))
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
        host=r.host, pid=r.pid, takeover_of=r.takeover_of,
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
