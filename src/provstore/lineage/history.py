"""History of a name: every version, the call behind each, and its lineage.

``ctx.history(name)`` reads the versions only (one query). The producing
call of each version (:attr:`Version.call`) is read on first access, for all
versions of the history at once, in a bounded number of batched queries; the
lineage graph (:meth:`History.upstream`) is walked by one recursive query.
Both are done by :mod:`provstore.lineage.reader`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import MissingKeyError
from ..store import Store
from .diff import Diff, diff
from .explain import differences
from .model import DEFAULT_DEPTH, CallInfo, LineageGraph, Version
from .reader import VersionCalls, version_from_row
from .render import history_html, render_tree

__all__ = ["TREE_DEPTH", "History", "number_ranges"]

TREE_DEPTH = 30  # call levels str(history) draws; upstream() has the rest


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
                  store: Store | None = None) -> History:
        """Build a history from :data:`provstore.db.queries.VERSIONS` rows.

        With *store*, versions can read their calls and lineage from it.
        """
        calls = VersionCalls(store) if store is not None else None
        versions = [version_from_row(scope, name, r, calls) for r in rows]
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
        NotFoundError
            No such version (``gc --keep-versions`` may have collected it).
        ValueError
            The version is a deletion, or the history was built without a store.
        """
        chosen = self.latest if version is None else self.version(version)
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
        return _explain(self)

    def diff(self, other: History | None = None, *, version: int | None = None,
             other_version: int | None = None, depth: int = 1) -> Diff:
        """Compare the lineage of a version with that of another version.

        ``h.diff(other)`` compares the current versions of two names;
        ``h.diff(version=1)`` version 1 of this name with its current one;
        ``h.diff(other, version=2, other_version=5)`` any two versions. Versions
        are looked up by number (:meth:`version`: gaps are named, never filled).
        Walks both upstream graphs and reports
        the first divergences: the producing function, its code version
        (changed dependencies and a unified diff of the stored sources), the
        parameters (``sigma: 1.0 → 2.0``), the inputs (same artifact or not;
        differing inputs are followed to their own producing calls), and the
        package versions of the two runs.

        Parameters
        ----------
        other : History, optional
            The history to compare with; by default this one.
        version : int, optional
            The version of this name to compare (default: the current one).
        other_version : int, optional
            The version of *other* (default: its current one).
        depth : int
            How many call levels to follow into differing inputs.

        Returns
        -------
        Diff
            ``str(diff)`` reads in plain language (``identical lineage`` when
            nothing differs); ``diff.to_dict()`` is JSON-ready. Its ``a`` and
            ``b`` name the versions (``x@1``) when a version was asked for.

        Raises
        ------
        NotFoundError
            A version number that does not exist (the message lists those that do).
        """
        other = self if other is None else other
        va = self.latest if version is None else self.version(version)
        vb = other.latest if other_version is None else other.version(other_version)
        result = diff(va, vb, depth=depth)
        if version is not None or other_version is not None:
            result.a, result.b = f"{va.path}@{va.number}", f"{vb.path}@{vb.number}"
        return result

    def version(self, number: int) -> Version:
        """Return version *number* (1 is the first ever bound; -1 the latest, -2 the one before).

        Numbers are the ones :attr:`versions` shows, not positions:
        ``gc --keep-versions`` leaves gaps, and a collected version is gone.

        Raises
        ------
        NotFoundError
            No version has that number; the message lists the ones that exist.
        """
        if number < 0 and -number <= len(self.versions):
            return self.versions[number]
        for v in self.versions:
            if v.number == number:
                return v
        have = number_ranges([v.number for v in self.versions])
        raise MissingKeyError(f"{self.path} has versions {have}, not {number}")

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
        if v.deleted or v.lineage is None:
            return [head]
        return [head, *render_tree(v.upstream(depth=TREE_DEPTH))]

    def __repr__(self) -> str:
        return f"<History {self.path!r}: {len(self.versions)} version(s)>"

    def _repr_html_(self) -> str:
        return history_html(self)


def _explain(h: History) -> str:
    """See :meth:`History.explain`."""
    v = h.latest
    if v.deleted:
        return f"{h.path} was deleted (v{v.number})"
    new = v.call
    if new is None:
        return (f"{h.path} v{v.number} was not computed by a tracked call: "
                f"assigned at {v.origin or 'an unknown place'}")
    head = f"{h.path} v{v.number}: {new}"
    before = next((p for p in reversed(h.versions[:-1]) if p.call is not None), None)
    if before is None or before.call is None:
        return f"{head}\nfirst computation: no earlier version of {h.name} came from a tracked call"
    old = before.call
    if old.id == new.id:
        return f"{head}\nsame call as v{before.number}: its result was reused, not recomputed"
    lines = [head, f"compared with v{before.number}: {old}"]
    if new.id < old.id:
        lines.append(f"(call {new.id} is older than call {old.id}: a cached result was reused)")
    sources = v.lineage.code_sources if v.lineage is not None else None
    return "\n".join(lines + differences(old, new, sources))


def number_ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1..3, 7"``."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or "none"
