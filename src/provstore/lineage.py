"""History of a name: every version, the call behind each, and its lineage.

``ctx.history(name)`` reads the versions only (one query). The producing
call of each version (:attr:`Version.call`) is read on first access, for all
versions of the history at once, in a bounded number of batched queries; the
lineage graph (:meth:`History.upstream`) is walked by one recursive query.
Both live in :mod:`provstore.lineage_graph`, imported on use so that reading
a history costs nothing more than before.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .runs import status_of

if TYPE_CHECKING:
    from .impact import Diff
    from .lineage_graph import LineageGraph, LineageReader, Node

__all__ = ["BoundName", "CallInfo", "History", "InputInfo", "RunInfo", "Version"]

DEFAULT_DEPTH = 100
TREE_DEPTH = 30  # call levels str(history) draws; upstream() has the rest


@dataclass(frozen=True)
class RunInfo:
    """The process that wrote a version."""

    id: int
    host: str
    pid: int
    user: str | None
    started: dt.datetime
    status: str

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
        took = f" in {_seconds(self.duration)}" if self.duration is not None else ""
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
    _calls: _VersionCalls | None = field(default=None, repr=False, compare=False)

    @property
    def call(self) -> CallInfo | None:
        """The tracked call that produced the value (None for plain assignments).

        The binding's own call when recorded, else the newest finished call
        that returned this artifact (content linking). Loaded on first access
        for every version of the history at once.
        """
        return None if self._calls is None else self._calls.call_of(self)

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
        if self._calls is None:
            raise ValueError("this version was built without a store: it has no lineage")
        if self.deleted:
            raise ValueError(f"version {self.number} of {self.path} is a deletion: no lineage")
        assert self.artifact_id is not None
        call = self.call
        return self._calls.reader().upstream(
            self.artifact_id, call.id if call is not None else None, origin=self.origin,
            name=BoundName(self.path, True), depth=depth,
        )


class _VersionCalls:
    """Resolves the calls of all versions of one history together, on first use."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._reader: LineageReader | None = None
        self.versions: list[Version] = []
        self._by_number: dict[int, CallInfo | None] | None = None

    def reader(self) -> LineageReader:
        if self._reader is None:
            from .lineage_graph import LineageReader

            self._reader = LineageReader(self._store)
        return self._reader

    def call_of(self, version: Version) -> CallInfo | None:
        if self._by_number is None:
            self._by_number = self.reader().version_calls(self.versions)
        return self._by_number.get(version.number)


@dataclass
class History:
    """Every version of one name in one scope, oldest first.

    ``str(history)`` draws the lineage tree of the current version, then the
    table of versions; ``history.latest`` is the current version (possibly a
    deletion).
    """

    scope: str
    name: str
    versions: list[Version] = field(default_factory=list)

    @classmethod
    def from_rows(cls, scope: str, name: str, rows: Sequence[Any], *,
                  store: Any = None) -> History:
        """Build a history from :data:`provstore.db.queries.VERSIONS` rows.

        With *store*, versions can read their calls and lineage from it.
        """
        calls = _VersionCalls(store) if store is not None else None
        versions = [_version(scope, name, r, calls) for r in rows]
        if calls is not None:
            calls.versions = versions
        return cls(scope, name, versions)

    @property
    def path(self) -> str:
        """The qualified name, ``scope/name``."""
        return f"{self.scope}/{self.name}" if self.scope else self.name

    @property
    def latest(self) -> Version:
        """The newest version (a deletion if the name was deleted last)."""
        return self.versions[-1]

    @property
    def call(self) -> CallInfo | None:
        """The call that produced the current version, if it was tracked."""
        return self.latest.call

    def upstream(self, version: int | None = None, *, depth: int = DEFAULT_DEPTH) -> LineageGraph:
        """Walk the lineage of a version back to ingested files and assignments.

        Parameters
        ----------
        version : int, optional
            A version number (1 is the first, -1 the last); the latest by default.
        depth : int
            The most call levels to walk (the version's own call is level 1).

        Returns
        -------
        LineageGraph
            Artifacts, calls, files and assignments, with typed edges.

        Raises
        ------
        ValueError
            The version is a deletion, or the history was built without a store.
        """
        chosen = self.latest if version is None else self._version(version)
        return chosen.upstream(depth=depth)

    def explain(self) -> str:
        """Why the current version was computed, compared with the previous computed one.

        Returns
        -------
        str
            What changed between the two calls: the code (changed
            dependencies and a diff of the sources), the inputs (old and
            new digests, with the names bound to each), or nothing (a forced
            recompute); or that this is the first computation.
        """
        from .explain import explain_history

        return explain_history(self)

    def diff(self, other: History, *, depth: int = 1) -> Diff:
        """Compare the lineage of the current version with that of *other*'s.

        Walks both upstream graphs from their current versions and reports
        the first divergences: the producing function, its code version
        (changed dependencies and a unified diff of the stored sources), the
        parameters (``sigma: 1.0 → 2.0``), the inputs (same artifact or not;
        differing inputs are followed to their own producing calls), and the
        package versions of the two runs.

        Parameters
        ----------
        other : History
            The history to compare with (its current version).
        depth : int
            How many call levels to follow into differing inputs.

        Returns
        -------
        Diff
            ``str(diff)`` reads in plain language (``identical lineage`` when
            nothing differs); ``diff.to_dict()`` is JSON-ready.
        """
        from .impact import diff

        return diff(self, other, depth=depth)

    def _version(self, number: int) -> Version:
        try:
            return self.versions[number - 1 if number > 0 else number]
        except IndexError:
            raise IndexError(f"{self.path} has versions 1..{len(self)}, not {number}") from None

    def __len__(self) -> int:
        return len(self.versions)

    def __iter__(self) -> Iterator[Version]:
        return iter(self.versions)

    def __getitem__(self, index: int) -> Version:
        return self.versions[index]

    def __str__(self) -> str:
        lines = self._tree() if self.versions else []
        if lines:
            lines.append("")
        lines.append(f"{self.path}: {len(self.versions)} version(s)")
        for v in self.versions:
            when = v.created.strftime("%Y-%m-%d %H:%M:%S")
            digest = f"{v.digest[:12]}" if v.digest else "-" * 12
            lines.append(f"  v{v.number:<3} {when}  {digest}  {v.describe()}")
            if v.call is not None:
                lines.append(f"        from call {v.call.id} {v.call.label}")
            if v.run is not None:
                lines.append(f"        by {v.run}")
            if v.origin:
                lines.append(f"        at {v.origin}")
        return "\n".join(lines)

    def _tree(self) -> list[str]:
        v = self.latest
        head = f"{v.path} = {v.describe()}  (v{v.number})"
        if v.deleted or v._calls is None:
            return [head]
        return [head, *_render_tree(v.upstream(depth=TREE_DEPTH))]

    def __repr__(self) -> str:
        return f"<History {self.path!r}: {len(self.versions)} version(s)>"

    def _repr_html_(self) -> str:
        from .lineage_html import history_html

        return history_html(self)


# ------------------------------------------------------------------ the tree
def _render_tree(g: LineageGraph) -> list[str]:
    """Lines under the root of ``str(history)``: the root's origin, then each input.

    A call met again (a diamond) is named, not redrawn, so the text stays
    linear in the size of the graph.
    """
    lines: list[str] = []
    drawn: set[str] = set()
    made = g.producer(g.root.id)
    if made is None:
        lines.append(f"← {_leaf(g, g.root)}")
        return lines
    lines.append(f"← {_call_line(made)}")
    _inputs(g, made, "  ", lines, drawn)
    return lines


def _inputs(g: LineageGraph, call: Node, indent: str, lines: list[str], drawn: set[str]) -> None:
    drawn.add(call.id)
    for edge, node in g.parents(call.id):
        if edge.kind != "input":
            continue
        if node.kind == "file":
            lines.append(f"{indent}{edge.name} ← file {node.path}")
            continue
        title = ", ".join(map(str, node.names[:2])) or f"artifact {node.artifact_id}"
        made = g.producer(node.id, call.id)
        if made is None:
            lines.append(f"{indent}{edge.name} ← {title} ← {_leaf(g, node)}")
        elif made.id in drawn:
            lines.append(f"{indent}{edge.name} ← {title} ← {_call_line(made)}  (call "
                         f"{made.call.id if made.call else '?'}, drawn above)")
        else:
            lines.append(f"{indent}{edge.name} ← {title} ← {_call_line(made)}")
            _inputs(g, made, indent + "  ", lines, drawn)


def _call_line(node: Node) -> str:
    assert node.call is not None
    params = node.call.describe_params()
    return f"{node.call.label}  {params}" if params else node.call.label


def _leaf(g: LineageGraph, node: Node) -> str:
    if node.truncated:
        return "… (deeper lineage: history.upstream())"
    origins = [n for e, n in g.parents(node.id) if e.kind in ("ingested", "assigned")]
    if not origins:
        return "(no recorded origin)"
    first = origins[0]
    text = f"ingested from {first.path}" if first.kind == "file" else first.label
    return f"{text} (+{len(origins) - 1})" if len(origins) > 1 else text


def _version(scope: str, name: str, r: Any, calls: _VersionCalls | None) -> Version:
    run = None
    if r.run_id is not None:
        run = RunInfo(r.run_id, r.host, r.pid, r.user, r.run_started,
                      status_of(r.run_status, r.run_heartbeat))
    return Version(
        number=r.version, scope=scope, name=name, artifact_id=r.artifact_id, digest=r.digest,
        format=r.format, size=r.size, summary=json.loads(r.summary) if r.summary else {},
        created=r.created, origin=r.origin, run=run, call_id=r.call_id, _calls=calls,
    )


def describe_artifact(format: str | None, summary: dict[str, Any], size: int | None) -> str:
    """One line: format, dtype and shape (or type) and size of an artifact."""
    parts = [format or "?", str(summary.get("dtype") or summary.get("type", ""))]
    if summary.get("shape") is not None:
        parts.append("x".join(map(str, summary["shape"])) or "scalar")
    parts.append(format_size(size or 0))
    return "  ".join(p for p in parts if p)


def _seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def format_size(n: int) -> str:
    """``1536`` → ``'1.5 KiB'``: byte counts for people."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
