"""What a change affects: the results computed from a value, and the stale ones.

Used by :meth:`provstore.Context.dependents` and :meth:`provstore.Context.stale`,
and by ``provstore dependents`` and ``provstore stale``. Nothing here writes
to the store.
"""

from __future__ import annotations

import ast
import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib.machinery import PathFinder
from typing import Any

from ..codesource import MISSING, constant, definition, distribution_of, normalized, parse_text
from ..codeversion import relative_deps
from ..hashing import digest
from ..store import Store
from .model import CallInfo
from .reader import LineageReader

__all__ = ["MAX_DEPTH", "Dependent", "Stale", "StaleList", "Unchecked", "dependents", "stale"]

MAX_DEPTH = 100  # call levels the downstream walk follows


@dataclass(frozen=True)
class Dependent:
    """A current binding computed, directly or not, from some artifact.

    Attributes
    ----------
    path : str
        ``scope/name`` of the binding.
    version : int
        Its current version number.
    artifact_id : int
        The artifact it holds.
    function : str
        ``module:qualname`` of the call that made it from the walked lineage.
    call_id : int
        That call.
    depth : int
        Calls between the starting artifact and this one (1: computed from it directly).
    """

    path: str
    version: int
    artifact_id: int
    function: str
    call_id: int
    depth: int

    def __str__(self) -> str:
        return f"{self.path} v{self.version} via {self.function} (call {self.call_id})"


def dependents(store: Store, artifact_id: int, *, transitive: bool = True,
               exclude: str | None = None) -> list[Dependent]:
    """Return the current bindings computed from *artifact_id*.

    Parameters
    ----------
    store : Store
        The store to read.
    artifact_id : int
        The starting artifact.
    transitive : bool
        Follow calls downstream up to :data:`MAX_DEPTH` levels; else only one.
    exclude : str, optional
        A ``scope/name`` path left out (the starting binding itself).

    Returns
    -------
    list of Dependent
        Nearest first, then by path; one entry per binding (its nearest producer).
    """
    rows = LineageReader(store).downstream_bindings(artifact_id, MAX_DEPTH if transitive else 1)
    found: dict[str, Dependent] = {}
    for r in rows:
        path = f"{r.path}/{r.name}" if r.path else r.name
        if path == exclude:
            continue
        d = Dependent(path, int(r.version), int(r.artifact_id), r.function, int(r.call_id),
                      int(r.depth))
        known = found.get(path)
        if known is None or (d.depth, d.call_id) < (known.depth, known.call_id):
            found[path] = d
    return sorted(found.values(), key=lambda d: (d.depth, d.path))


# ================================================================== stale
@dataclass(frozen=True)
class Stale:
    """A current binding whose producing call would not be repeated as recorded.

    Attributes
    ----------
    path : str
        ``scope/name`` of the binding.
    version : int
        Its current version.
    call_id : int
        The recorded producing call.
    function : str
        The name that call is listed under (``calls.function``).
    reasons : tuple of str
        Why: ``"code changed: ..."`` (the changed functions, classes and
        constants), ``"input x rebound: scope/name v2 → v3"``, or, with
        ``unimportable=True``, ``"not checked: ..."``.
    downstream : tuple of str
        ``scope/name vN`` of the current results computed from this one, directly
        or not: rerunning would recompute them too.
    """

    path: str
    version: int
    call_id: int
    function: str
    reasons: tuple[str, ...]
    downstream: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """All reasons in one line."""
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields and ``reason``."""
        return {**asdict(self), "reasons": list(self.reasons), "reason": self.reason,
                "downstream": list(self.downstream)}

    def __str__(self) -> str:
        return f"{self.path} v{self.version}: {self.reason} (call {self.call_id})"


@dataclass(frozen=True)
class Unchecked:
    """A current result whose code could not be compared with the code on disk.

    Attributes
    ----------
    path : str
        ``scope/name`` of the binding.
    call_id : int
        Its producing call.
    function : str
        The name that call is listed under.
    reason : str
        Why (``"defined in a notebook whose source is not on disk"``,
        ``"/path/run.py is gone"``...).
    """

    path: str
    call_id: int
    function: str
    reason: str


class StaleList(list[Stale]):
    """The stale results (a plain list of :class:`Stale`), and what could not be checked.

    Attributes
    ----------
    unchecked : list of Unchecked
        The results whose code could not be checked, with the reason of each.
    """

    def __init__(self, found: Iterable[Stale] = (),
                 unchecked: Iterable[Unchecked] = ()) -> None:
        super().__init__(found)
        self.unchecked = list(unchecked)

    def summary(self) -> list[str]:
        """One line per reason: ``"12 results not checked: <reason>"``, most first."""
        counts = Counter(u.reason for u in self.unchecked)
        return [f"{n} result{'s' if n != 1 else ''} not checked: {reason}"
                for reason, n in sorted(counts.items(), key=lambda c: (-c[1], c[0]))]


def stale(store: Store, scope: str, *, unimportable: bool = False) -> StaleList:
    """Return the stale current bindings at and below *scope*; see :meth:`Context.stale`."""
    reader = LineageReader(store)
    rows = reader.called_bindings_below(scope)
    calls = reader.calls(r.call_id for r in rows)
    inputs = {i.artifact_id for c in calls.values() for i in c.inputs.values()
              if i.artifact_id is not None}
    names: dict[int, list[Any]] = {}
    for r in reader.bindings_of_artifacts(inputs):
        names.setdefault(r.artifact_id, []).append(r)
    checker = _Checker()
    found, unchecked = [], []
    for r in rows:
        call = calls.get(r.call_id)
        if call is None:
            continue
        path = f"{r.path}/{r.name}" if r.path else r.name
        changed, why_not = checker.check(call)
        reasons = [f"code changed: {', '.join(changed)}"] if changed else []
        if why_not is not None and not changed:
            unchecked.append(Unchecked(path, call.id, call.function, why_not))
            if unimportable:
                reasons.append(f"not checked: {why_not}")
        reasons.extend(_rebound(call, r.path, names))
        if reasons:
            later = tuple(f"{d.path} v{d.version}" for d in
                          dependents(store, int(r.artifact_id), exclude=path))
            found.append(Stale(path, int(r.version), call.id, call.function, tuple(reasons),
                               later))
    return StaleList(sorted(found, key=lambda s: s.path), unchecked)


class _Unchecked(Exception):
    """Raised with the reason a call's code cannot be compared with the files."""


class _Checker:
    """Compares recorded code versions with the source files as they are now.

    Nothing is imported or run: files are parsed with :mod:`ast` and each
    recorded part (the function, its helpers and classes, literal constants) is
    normalized as :mod:`provstore.codesource` does at call time.
    """

    def __init__(self) -> None:
        self._trees: dict[str, ast.Module | str] = {}
        self._done: dict[tuple[Any, ...], tuple[list[str], str | None]] = {}

    def check(self, call: CallInfo) -> tuple[list[str], str | None]:
        """(changed parts, reason the rest could not be checked or None)."""
        run = call.run
        script = _script(run.argv, run.cwd) if run is not None else "no run recorded"
        cwd = run.cwd if run is not None else None
        where = call.defined_at or call.function
        key = (call.code_digest, where, call.code_identity, script, cwd)
        if key not in self._done:
            self._done[key] = self._check(call, where, script, cwd)
        return self._done[key]

    def _check(self, call: CallInfo, where: str, script: str,
               cwd: str | None) -> tuple[list[str], str | None]:
        module, _, qualname = where.partition(":")
        if call.source is None:
            return [], "its code version was not recorded"
        if call.pinned is not None:
            return [], "its code version is pinned by hand (version=)"
        if call.source.startswith("# ") and "(installed:" in call.source:
            return self._library(call), None
        roots = [os.path.dirname(script)] if os.path.isabs(script) else []
        roots += [cwd] if cwd else []
        files = _Files(self, module, script, roots)
        changed: list[str] = []
        try:
            tree = files.tree(module)
            found = definition(tree, qualname) if "<" not in qualname else None
            if found is None:
                raise _Unchecked(f"{where} is no longer defined in {files.path(module)}"
                                 if "<" not in qualname else
                                 f"{where} is defined inside a function")
            stored = parse_text(call.source)
            if stored is None or len(stored.body) != 1:
                raise _Unchecked("its source was not recorded")
            if normalized(stored, top=True)[0] != normalized(found, top=True)[0]:
                changed.append(where)
        except _Unchecked as e:
            return changed, str(e)
        why_not = None
        deps = relative_deps(call.deps, call.code_identity or where)
        for dep, recorded in sorted(deps.items()):
            try:
                name = self._dependency(files, module, dep, recorded)
            except _Unchecked as e:
                why_not = why_not or str(e)
                continue
            if name is not None:
                changed.append(name)
        return changed, why_not

    def _dependency(self, files: _Files, home: str, dep: str, recorded: str) -> str | None:
        """The dependency's name if it changed, None if not; raises if it cannot tell."""
        if dep.startswith("dist:"):
            return None  # installed packages are recorded on runs, not keyed (DESIGN §5)
        if dep.startswith("<self>") or "<" in dep or "#" in dep:
            raise _Unchecked("it reads values of an enclosing function or a lambda")
        if dep.startswith((":", ".")):
            dep = home + dep
        if ":" in dep:
            module, _, qualname = dep.partition(":")
            found = definition(files.tree(module), qualname)
            if found is None:
                return f"{dep} (removed)"
            return None if normalized(found)[0] == recorded else dep
        module, _, attr = dep.rpartition(".")
        value = constant(files.tree(module), attr)
        if value is MISSING:
            raise _Unchecked(f"{dep} is not a literal in {files.path(module)}")
        return None if digest(value) == recorded else dep

    def _library(self, call: CallInfo) -> list[str]:
        changed = []
        for dep, version in sorted(call.deps.items()):
            name = dep.partition(":")[2]
            found = distribution_of(name) if dep.startswith("dist:") and name else None
            if found is not None and found[1] != version:
                changed.append(f"{name} {version} → {found[1]}")
        return changed

    def parsed(self, path: str) -> ast.Module | str:
        """The parsed file, or the reason it cannot be read."""
        if path not in self._trees:
            try:
                with open(path, encoding="utf-8") as f:
                    tree = parse_text(f.read())
                self._trees[path] = tree if tree is not None else f"{path} does not parse"
            except FileNotFoundError:
                self._trees[path] = f"{path} is gone"
            except (OSError, UnicodeDecodeError) as e:
                self._trees[path] = f"{path} cannot be read ({e})"
        return self._trees[path]


class _Files:
    """The source files of one call's modules: its script for ``__main__``, else by path search."""

    def __init__(self, checker: _Checker, home: str, script: str, roots: list[str]) -> None:
        self._checker, self._home, self._script = checker, home, script
        self._roots = [*roots, *sys.path]
        self._paths: dict[str, str] = {}

    def path(self, module: str) -> str:
        if module not in self._paths:
            self._paths[module] = self._find(module)
        return self._paths[module]

    def tree(self, module: str) -> ast.Module:
        found = self._checker.parsed(self.path(module))
        if isinstance(found, str):
            raise _Unchecked(found)
        return found

    def _find(self, module: str) -> str:
        if module == "__main__":
            if not os.path.isabs(self._script):
                raise _Unchecked(self._script)
            return self._script
        # PathFinder looks files up without importing anything, parents included.
        spec, search = None, self._roots
        parts = module.split(".")
        for n in range(1, len(parts) + 1):
            spec = PathFinder.find_spec(".".join(parts[:n]), search)
            if spec is None:
                raise _Unchecked(f"module {module} is not found")
            search = list(spec.submodule_search_locations or [])
        origin = getattr(spec, "origin", None)
        if not origin or not origin.endswith(".py"):
            raise _Unchecked(f"module {module} has no Python source")
        return str(origin)


def _script(argv: tuple[str, ...], cwd: str | None) -> str:
    """The script file a run ran (absolute), or why there is none."""
    first = argv[0] if argv else ""
    if not first or first == "-c":
        return "defined in an interactive session or python -c (no source on disk)"
    if "ipykernel" in first:
        return "defined in a notebook whose source is not on disk"
    return os.path.normpath(os.path.join(cwd or "", first))


def _rebound(call: CallInfo, scope: str, names: dict[int, list[Any]]) -> list[str]:
    """Inputs whose names (visible from *scope*, else any) now hold other artifacts."""
    reasons = []
    for arg, i in call.inputs.items():
        if i.artifact_id is None:
            continue
        bound = names.get(i.artifact_id, [])
        visible = [b for b in bound if b.path == "" or scope == b.path
                   or scope.startswith(f"{b.path}/")] or bound
        if not visible or any(b.head_artifact_id == i.artifact_id for b in visible):
            continue  # still bound where it was read, or never bound
        b = max(visible, key=lambda b: b.path.count("/") if b.path else -1)
        where = f"{b.path}/{b.name}" if b.path else b.name
        now = f"v{b.head_version}" + (" (deleted)" if b.head_artifact_id is None else "")
        reasons.append(f"input {arg} rebound: {where} v{b.version} → {now}")
    return reasons
