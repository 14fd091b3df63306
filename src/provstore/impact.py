"""Comparing lineages, and what a change affects: diff, dependents and stale results.

Used by :meth:`provstore.History.diff`, :meth:`provstore.Context.dependents`
and :meth:`provstore.Context.stale`, and by ``provstore diff`` and
``provstore stale``. Nothing here writes to the store.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .db import queries as q
from .explain import _code_changes, changed_items
from .lineage import CallInfo, History, InputInfo, _leaf
from .lineage_graph import LineageGraph, LineageReader, Node

__all__ = ["Dependent", "Diff", "Divergence", "Stale", "dependents", "diff", "stale"]

MAX_DEPTH = 100  # call levels the downstream walk follows


# ==================================================================== diff
@dataclass(frozen=True)
class Divergence:
    """One difference between two lineages.

    Attributes
    ----------
    kind : str
        ``"value"``, ``"function"``, ``"code"``, ``"param"``, ``"input"``,
        ``"origin"`` or ``"packages"``.
    where : str
        The argument path from the compared values to the call that differs
        (``""`` at the values' own calls, ``"img"`` one input up, ``"img/x"``...).
    text : str
        One line in plain language.
    details : tuple of str
        Further lines (a unified diff of the sources, changed dependencies).
    """

    kind: str
    where: str
    text: str
    details: tuple[str, ...] = ()


@dataclass
class Diff:
    """What differs between the lineages of two names; ``str()`` tells it in plain language.

    Attributes
    ----------
    a, b : str
        The two compared paths (``scope/name``), each at its current version.
    divergences : list of Divergence
        The first differences found walking both graphs upstream, nearest first.
    same : list of str
        What was compared and found equal (code, inputs, packages), for the reader.
    value : str
        Whether the two values themselves are the same artifact, the same content or not.
    """

    a: str
    b: str
    value: str = ""
    divergences: list[Divergence] = field(default_factory=list)
    same: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Whether no divergence was found."""
        return not self.divergences

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``a``, ``b``, ``identical``, ``divergences`` and ``same``."""
        return {"a": self.a, "b": self.b, "identical": self.identical, "value": self.value,
                "divergences": [{**asdict(d), "details": list(d.details)}
                                for d in self.divergences],
                "same": list(self.same)}

    def __str__(self) -> str:
        lines = [f"{self.a} vs {self.b}", *([self.value] if self.value else [])]
        if self.identical:
            lines.append("identical lineage")
        for d in self.divergences:
            lines.append(f"{d.where}: {d.text}" if d.where else d.text)
            lines.extend(f"  {line}" for line in d.details)
        lines.extend(self.same)
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "identical" if self.identical else f"{len(self.divergences)} divergence(s)"
        return f"<Diff {self.a!r} vs {self.b!r}: {state}>"


def diff(a: History, b: History, *, depth: int = 1) -> Diff:
    """See :meth:`provstore.lineage.History.diff`."""
    result = Diff(a.path, b.path)
    va, vb = a.latest, b.latest
    if va.deleted or vb.deleted:
        gone = " and ".join(h.path for h, v in ((a, va), (b, vb)) if v.deleted)
        result.divergences.append(Divergence("value", "", f"deleted: {gone}"))
        return result
    if va.artifact_id == vb.artifact_id:
        result.value = (f"value: same artifact {va.artifact_id} ({(va.digest or '')[:12]})")
    elif va.digest == vb.digest:
        result.value = f"value: same content ({(va.digest or '')[:12]})"
    else:
        result.value = f"value: differs, {(va.digest or '')[:12]} → {(vb.digest or '')[:12]}"
    ga, gb = va.upstream(depth=depth + 1), vb.upstream(depth=depth + 1)
    pa, pb = ga.producer(ga.root.id), gb.producer(gb.root.id)
    _compare_made(result, ga, pa, ga.root, gb, pb, gb.root, "", 0, depth)
    ca, cb = (pa.call if pa else None), (pb.call if pb else None)
    runs = [c.run.id if c and c.run else v.run.id if v.run else None
            for c, v in ((ca, va), (cb, vb))]
    if ca is None or cb is None or ca.id != cb.id:
        _packages(result, a, runs[0], runs[1])
    return result


def _compare_made(out: Diff, ga: LineageGraph, pa: Node | None, na: Node, gb: LineageGraph,
                  pb: Node | None, nb: Node, where: str, level: int, depth: int) -> None:
    """Compare how two artifacts were made: by calls *pa*/*pb*, or not tracked."""
    if pa is None or pb is None or pa.call is None or pb.call is None:
        if pa is None and pb is None:
            la, lb = _leaf(ga, na), _leaf(gb, nb)
            if la != lb and na.digest != nb.digest:
                out.divergences.append(Divergence("origin", where, f"origin: {la} → {lb}"))
            return
        made = [p.call.label if p is not None and p.call else _leaf(g, n)
                for p, g, n in ((pa, ga, na), (pb, gb, nb))]
        out.divergences.append(Divergence("origin", where, f"made by: {made[0]} → {made[1]}"))
        return
    _compare_calls(out, ga, pa, gb, pb, where, level, depth)


def _compare_calls(out: Diff, ga: LineageGraph, pa: Node, gb: LineageGraph, pb: Node,
                   where: str, level: int, depth: int) -> None:
    ca, cb = pa.call, pb.call
    assert ca is not None and cb is not None
    at = f"{where}: " if where else ""
    if ca.id == cb.id:
        out.same.append(f"{at}same call {ca.id} ({ca.label})")
        return
    if ca.function != cb.function:
        out.divergences.append(Divergence("function", where,
                                          f"function: {ca.function} → {cb.function}"))
        return
    if ca.code_digest == cb.code_digest:
        out.same.append(f"{at}code: same ({ca.label})")
    else:
        out.divergences.append(Divergence(
            "code", where, f"code: {ca.function} changed, {ca.code_digest[:12]} → "
                           f"{cb.code_digest[:12]}", tuple(_code_changes(ca, cb))))
    same_inputs = []
    for name in [*ca.inputs, *(n for n in cb.inputs if n not in ca.inputs)]:
        ia, ib = ca.inputs.get(name), cb.inputs.get(name)
        if ia is not None and ib is not None and ia.digest == ib.digest:
            if _is_value(ia) and _is_value(ib):
                continue  # equal parameters need no mention
            same_inputs.append(name)
            continue
        if (ia is None or _is_value(ia)) and (ib is None or _is_value(ib)):
            out.divergences.append(Divergence(
                "param", where, f"param {name}: {_param(ca, ia)} → {_param(cb, ib)}"))
            continue
        out.divergences.append(Divergence(
            "input", where, f"input {name}: {_input(ca, ia)} → {_input(cb, ib)}"))
        if (level < depth and ia is not None and ib is not None and ia.artifact_id is not None
                and ib.artifact_id is not None):
            na, nb = f"artifact:{ia.artifact_id}", f"artifact:{ib.artifact_id}"
            if na in ga and nb in gb:
                _compare_made(out, ga, ga.producer(na, pa.id), ga[na], gb,
                              gb.producer(nb, pb.id), gb[nb],
                              f"{where}/{name}" if where else name, level + 1, depth)
    if same_inputs:
        out.same.append(f"{at}inputs: same ({', '.join(same_inputs)})")


def _is_value(i: InputInfo) -> bool:
    return i.artifact_id is None and i.file_path is None


def _param(call: CallInfo, i: InputInfo | None) -> str:
    if i is None:
        return "(absent)"
    text = json.dumps(call.params.get(i.name, i.summary))
    return text if len(text) <= 60 else text[:57] + "..."


def _input(call: CallInfo, i: InputInfo | None) -> str:
    if i is None:
        return "(absent)"
    if i.file_path is not None:
        return f"file {i.file_path} ({i.digest[:12]})"
    if i.artifact_id is None:
        return _param(call, i)
    named = i.describe_names()
    return f"{named} (artifact {i.artifact_id})" if named else f"artifact {i.artifact_id}"


def _packages(out: Diff, h: History, run_a: int | None, run_b: int | None) -> None:
    if run_a is None or run_b is None:
        return
    store = h.latest._calls._store if h.latest._calls is not None else None
    if store is None:
        return
    found = {r.id: json.loads(r.packages) if r.packages else None
             for r in store._query(q.RUN_PACKAGES, {"ids": [run_a, run_b]}).all()}
    old, new = found.get(run_a), found.get(run_b)
    if old is None or new is None:
        return
    changed = []
    for name, x, y in changed_items(old, new):
        if x is None:
            changed.append(f"+ {name} {y}")
        elif y is None:
            changed.append(f"- {name} {x}")
        else:
            changed.append(f"{name} {x} → {y}")
    if changed:
        out.divergences.append(Divergence(
            "packages", "", f"packages: {len(changed)} differ between run {run_a} and run "
                            f"{run_b}", tuple(changed)))
    elif run_a != run_b:
        out.same.append(f"packages: same (runs {run_a} and {run_b})")


# ============================================================== dependents
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


def dependents(store: Any, artifact_id: int, *, transitive: bool = True,
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
    rows = store._query(q.DOWNSTREAM_BINDINGS,
                        {"root": artifact_id, "max_depth": MAX_DEPTH if transitive else 1})
    found: dict[str, Dependent] = {}
    for r in rows.all():
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


def stale(store: Any, scope: str, *, unimportable: bool = False) -> list[Stale]:
    """Return the stale current bindings at and below *scope*; see :meth:`Context.stale`."""
    prefix = f"{scope}/" if scope else ""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = store._query(q.CALLED_BINDINGS_BELOW, {"path": scope, "pattern": pattern}).all()
    reader = LineageReader(store)
    calls = reader.calls(r.call_id for r in rows)
    inputs = {i.artifact_id for c in calls.values() for i in c.inputs.values()
              if i.artifact_id is not None}
    names: dict[int, list[Any]] = {}
    for r in reader._rows(q.BINDINGS_OF_ARTIFACTS, inputs):
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


def _current_code(function: str, pinned: str | None) -> Any:
    """The code version of *function* as importable now, or None."""
    from .tracking import FINGERPRINTS

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
