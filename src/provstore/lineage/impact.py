"""What a change affects: the results computed from a value, and the stale ones.

Used by :meth:`provstore.Context.dependents` and :meth:`provstore.Context.stale`,
and by ``provstore dependents`` and ``provstore stale``. Nothing here writes
to the store.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any

from ..codeversion import FINGERPRINTS, CodeVersion
from ..store import Store
from .model import CallInfo
from .reader import LineageReader

__all__ = ["MAX_DEPTH", "Dependent", "Stale", "dependents", "stale"]

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
        ``module:qualname`` of that call.
    reasons : tuple of str
        Why: ``"code changed: ..."``, ``"input x rebound: scope/name v2 → v3"``
        or ``"not importable"``.
    """

    path: str
    version: int
    call_id: int
    function: str
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        """All reasons in one line."""
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields and ``reason``."""
        return {**asdict(self), "reasons": list(self.reasons), "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.path} v{self.version}: {self.reason} (call {self.call_id})"


def stale(store: Store, scope: str, *, unimportable: bool = False) -> list[Stale]:
    """Return the stale current bindings at and below *scope*; see :meth:`Context.stale`."""
    reader = LineageReader(store)
    rows = reader.called_bindings_below(scope)
    calls = reader.calls(r.call_id for r in rows)
    inputs = {i.artifact_id for c in calls.values() for i in c.inputs.values()
              if i.artifact_id is not None}
    names: dict[int, list[Any]] = {}
    for r in reader.bindings_of_artifacts(inputs):
        names.setdefault(r.artifact_id, []).append(r)
    code: dict[tuple[str, str | None], Any] = {}
    found = []
    for r in rows:
        call = calls.get(r.call_id)
        if call is None:
            continue
        reasons = []
        key = (call.function, call.pinned)
        if key not in code:
            code[key] = _current_code(call.function, call.pinned)
        current = code[key]
        if current is None:
            if unimportable:
                reasons.append("not importable")
        elif current.digest != call.code_digest:
            reasons.append(_code_reason(call, current.deps))
        reasons.extend(_rebound(call, r.path, names))
        if reasons:
            path = f"{r.path}/{r.name}" if r.path else r.name
            found.append(Stale(path, int(r.version), call.id, call.function, tuple(reasons)))
    return sorted(found, key=lambda s: s.path)


def _current_code(function: str, pinned: str | None) -> CodeVersion | None:
    """The code version of *function* as importable now, or None."""
    module, _, qualname = function.partition(":")
    if "<" in qualname or module == "__main__":
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return FINGERPRINTS.current(getattr(obj, "__wrapped__", obj), version=pinned)
    except Exception:  # anything the import or the source lookup raises: not importable
        return None


def _code_reason(call: CallInfo, deps: dict[str, str]) -> str:
    changed = sorted(d for d in call.deps.keys() | deps.keys() if call.deps.get(d) != deps.get(d))
    return f"code changed: {', '.join(changed)}" if changed else "code changed"


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
