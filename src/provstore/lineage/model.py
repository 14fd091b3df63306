"""The lineage model: plain records of versions, calls, runs and lineage graphs.

Nothing here reads a database or imports the rest of provstore: the reader
(:mod:`provstore.lineage.reader`) builds these records from rows, and a
:class:`Version` reaches its call and lineage through the small
:class:`CallSource` protocol it was built with.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

__all__ = [
    "DEFAULT_DEPTH", "BoundName", "CallInfo", "CallSource", "Edge", "InputInfo", "LineageGraph",
    "Node", "RunInfo", "Version", "describe_artifact", "format_size", "seconds",
]

DEFAULT_DEPTH = 100


class CallSource(Protocol):
    """Where a version finds its producing call, its lineage and its runs' packages."""

    def call_of(self, version: Version) -> CallInfo | None: ...

    def upstream(self, version: Version, *, depth: int) -> LineageGraph: ...

    def run_packages(self, run_ids: list[int]) -> dict[int, dict[str, str] | None]: ...

    def code_sources(self, digests: Iterable[str]) -> dict[str, str]: ...


@dataclass(frozen=True)
class RunInfo:
    """The process that wrote a version."""

    id: int
    host: str
    pid: int
    user: str | None
    started: dt.datetime
    status: str
    argv: tuple[str, ...] = ()
    cwd: str | None = None

    def __str__(self) -> str:
        return f"run {self.id} ({self.user or '?'}@{self.host} pid {self.pid}, {self.status})"


class BoundName(NamedTuple):
    """A (scope, name) binding of an artifact: ``path`` is ``scope/name``.

    ``current`` is False when the name has been rebound or deleted since.
    """

    path: str
    current: bool

    def __str__(self) -> str:
        return self.path if self.current else f"{self.path} (old)"


@dataclass(frozen=True)
class InputInfo:
    """One argument of a tracked call.

    Attributes
    ----------
    name : str
        The parameter name.
    digest : str
        The canonical digest the call was keyed on.
    artifact_id : int or None
        The stored artifact the argument was (by identity or equal content).
    file_path : str or None
        The path of a :class:`provstore.File` argument.
    summary : object
        A small JSON description: the value itself for short scalars, else
        type, dtype and shape.
    names : tuple of BoundName
        A few (scope/name) bindings of the artifact, current ones first.
    name_count : int
        How many distinct bindings the artifact has had in all.
    """

    name: str
    digest: str
    artifact_id: int | None
    file_path: str | None
    summary: Any = field(default=None, hash=False)
    names: tuple[BoundName, ...] = ()
    name_count: int = 0

    def describe_names(self, limit: int = 2) -> str:
        """The first *limit* names, and how many more there are."""
        shown = ", ".join(map(str, self.names[:limit]))
        more = self.name_count - min(limit, len(self.names))
        return f"{shown} (+{more})" if more > 0 else shown


@dataclass(frozen=True)
class CallInfo:
    """One recorded call of a tracked function.

    Attributes
    ----------
    id : int
        The call's row id; ids grow with time.
    function : str
        ``module:qualname``.
    code_digest : str
        The code version the call was keyed on.
    key : str
        The call key (function, code version and argument digests).
    status : str
        ``done``, ``running``, ``failed``, ``orphaned`` or ``expired``.
    params : dict
        A short description of each argument (``{"artifact": id}`` for stored ones).
    inputs : dict of str to InputInfo
        Every argument, by parameter name.
    outputs : tuple of int
        The artifact ids returned, one per tuple element (``output_kind == "tuple"``)
        or a single one.
    output_kind : str or None
        ``single`` or ``tuple``; None until the call finished.
    source : str or None
        The normalized source of the code version (None if it was never recorded).
    deps : dict of str to str
        The code version's dependencies and their digests (or versions).
    pinned : str or None
        The ``version=`` pin of the code version.
    run : RunInfo or None
        The process that made the call.
    started, finished : datetime
        UTC; ``finished`` is None while running.
    duration : float or None
        Seconds spent in the function itself.
    error : str or None
        The exception of a failed call.
    host, pid : str, int
        Where the call ran.
    takeover_of : str or None
        The owner of an expired lease this call took over.
    defined_at : str or None
        ``module:qualname`` where the function lived when it was called
        (``__main__:f`` for a script); None for calls recorded before schema 0004.
    code_identity : str or None
        ``module:qualname`` of the function whose call first recorded this code
        version (its ``deps`` are named from there).
    """

    id: int
    function: str
    code_digest: str
    key: str
    status: str
    params: dict[str, Any] = field(hash=False)
    inputs: dict[str, InputInfo] = field(hash=False)
    outputs: tuple[int, ...]
    output_kind: str | None
    source: str | None
    deps: dict[str, str] = field(hash=False)
    pinned: str | None
    run: RunInfo | None
    started: dt.datetime
    finished: dt.datetime | None
    duration: float | None
    error: str | None
    host: str
    pid: int
    takeover_of: str | None
    defined_at: str | None = None
    code_identity: str | None = None

    @property
    def label(self) -> str:
        """``module:qualname(code digest)`` with the digest shortened."""
        return f"{self.function}({self.code_digest[:12]})"

    def describe_params(self) -> str:
        """The arguments that are plain values (not stored artifacts or files), inline."""
        parts = []
        for name, i in self.inputs.items():
            if i.artifact_id is None and i.file_path is None:
                parts.append(f"{name}={json.dumps(self.params.get(name, i.summary))}")
        return " ".join(parts)

    def __str__(self) -> str:
        took = f" in {seconds(self.duration)}" if self.duration is not None else ""
        return f"call {self.id} {self.label} {self.status}{took}"


@dataclass(frozen=True)
class Version:
    """One version of a binding.

    Attributes
    ----------
    number : int
        1 for the first binding of the name in its scope, then 2, 3...
    artifact_id : int or None
        None when this version records a deletion.
    summary : dict
        Type, dtype and shape (or size) of the value, as the backend described it.
    origin : str or None
        ``file:line`` of the assignment that made this version.
    call_id : int or None
        The producing call recorded on the binding, if the value was known to
        come from one when it was bound.
    """

    number: int
    scope: str
    name: str
    artifact_id: int | None
    digest: str | None
    format: str | None
    size: int | None
    summary: dict[str, Any]
    created: dt.datetime
    origin: str | None
    run: RunInfo | None
    call_id: int | None = None
    lineage: CallSource | None = field(default=None, repr=False, compare=False)

    @property
    def call(self) -> CallInfo | None:
        """The tracked call that produced the value (None for plain assignments).

        The binding's own call when recorded, else the newest finished call
        that returned this artifact (content linking). Loaded on first access
        for every version of the history at once.
        """
        return None if self.lineage is None else self.lineage.call_of(self)

    @property
    def deleted(self) -> bool:
        """Whether this version is a deletion (a tombstone)."""
        return self.artifact_id is None

    @property
    def path(self) -> str:
        """The qualified name, ``scope/name``."""
        return f"{self.scope}/{self.name}" if self.scope else self.name

    def describe(self) -> str:
        """One line: format, dtype and shape (or type and size)."""
        if self.deleted:
            return "deleted"
        return describe_artifact(self.format, self.summary, self.size)

    def upstream(self, *, depth: int = DEFAULT_DEPTH) -> LineageGraph:
        """The lineage graph of this version; see :meth:`History.upstream`."""
        if self.lineage is None:
            raise ValueError("this version was built without a store: it has no lineage")
        if self.deleted:
            raise ValueError(f"version {self.number} of {self.path} is a deletion: no lineage")
        return self.lineage.upstream(self, depth=depth)


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

    def set_producer(self, artifact_node: str, consumer: str | None, call_node: str) -> None:
        """Record that *call_node* made the artifact *consumer* read (None: the root)."""
        self._producers[(artifact_node, consumer)] = call_node

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
    def add(self, node: Node) -> Node:
        """Add *node* unless a node with its id is there; return the node in the graph."""
        found = self._index.get(node.id)
        if found is not None:
            return found
        self._index[node.id] = node
        self.nodes.append(node)
        return node

    def link(self, edge: Edge) -> None:
        """Add *edge* once."""
        into = self._into.setdefault(edge.target, [])
        if edge not in into:  # an edge is found once per path that reaches it
            into.append(edge)
            self.edges.append(edge)


def _dot_id(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def describe_artifact(format: str | None, summary: dict[str, Any], size: int | None) -> str:
    """One line: format, dtype and shape (or type) and size of an artifact."""
    parts = [format or "?", str(summary.get("dtype") or summary.get("type", ""))]
    if summary.get("shape") is not None:
        parts.append("x".join(map(str, summary["shape"])) or "scalar")
    parts.append(format_size(size or 0))
    return "  ".join(p for p in parts if p)


def seconds(s: float) -> str:
    """``0.0123`` → ``'12.3 ms'``; ``2.5`` → ``'2.50 s'``."""
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def format_size(n: int) -> str:
    """``1536`` → ``'1.5 KiB'``: byte counts for people."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
