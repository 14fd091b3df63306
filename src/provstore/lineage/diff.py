"""Comparing two lineages: what differs in how two results were made.

Used by :meth:`provstore.History.diff` and ``provstore diff``. Nothing here
writes to the store.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .explain import Sources, changed_items, code_changes
from .model import CallInfo, InputInfo, LineageGraph, Node, Version
from .render import leaf_text

__all__ = ["Diff", "Divergence", "diff"]


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


def diff(va: Version, vb: Version, *, depth: int = 1) -> Diff:
    """Compare the lineages of two versions; see :meth:`provstore.History.diff`."""
    result = Diff(va.path, vb.path)
    if va.deleted or vb.deleted:
        gone = " and ".join(v.path for v in (va, vb) if v.deleted)
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
    sources = va.lineage.code_sources if va.lineage is not None else None
    _compare_made(result, ga, pa, ga.root, gb, pb, gb.root, "", (0, depth, sources))
    ca, cb = (pa.call if pa else None), (pb.call if pb else None)
    runs = [c.run.id if c and c.run else v.run.id if v.run else None
            for c, v in ((ca, va), (cb, vb))]
    if ca is None or cb is None or ca.id != cb.id:
        _packages(result, va, runs[0], runs[1])
    return result


# How deep a comparison is, how deep it may go, and where stored sources are read.
_Walk = tuple[int, int, Sources | None]


def _compare_made(out: Diff, ga: LineageGraph, pa: Node | None, na: Node, gb: LineageGraph,
                  pb: Node | None, nb: Node, where: str, walk: _Walk) -> None:
    """Compare how two artifacts were made: by calls *pa*/*pb*, or not tracked."""
    if pa is None or pb is None or pa.call is None or pb.call is None:
        if pa is None and pb is None:
            la, lb = leaf_text(ga, na), leaf_text(gb, nb)
            if la != lb and na.digest != nb.digest:
                out.divergences.append(Divergence("origin", where, f"origin: {la} → {lb}"))
            return
        made = [p.call.label if p is not None and p.call else leaf_text(g, n)
                for p, g, n in ((pa, ga, na), (pb, gb, nb))]
        out.divergences.append(Divergence("origin", where, f"made by: {made[0]} → {made[1]}"))
        return
    _compare_calls(out, ga, pa, gb, pb, where, walk)


def _compare_calls(out: Diff, ga: LineageGraph, pa: Node, gb: LineageGraph, pb: Node,
                   where: str, walk: _Walk) -> None:
    level, depth, sources = walk
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
                           f"{cb.code_digest[:12]}", tuple(code_changes(ca, cb, sources))))
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
                              f"{where}/{name}" if where else name, (level + 1, depth, sources))
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


def _packages(out: Diff, v: Version, run_a: int | None, run_b: int | None) -> None:
    if run_a is None or run_b is None or v.lineage is None:
        return
    found = v.lineage.run_packages([run_a, run_b])
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
