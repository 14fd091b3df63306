"""Explaining results: what differs between two calls' code and inputs.

Used by :meth:`provstore.History.explain` / ``ctx.explain(name)``, by
:meth:`provstore.TrackedFunction.explain` and by the lineage diff.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..codeversion import CodeVersion, relative_deps
from ..store import Store
from .model import InputInfo
from .reader import LineageReader

__all__ = ["Sources", "changed_items", "code_changes", "differences", "explain_call"]

# Reads stored sources by digest (LineageReader.code_sources, CallSource.code_sources).
Sources = Callable[[Iterable[str]], dict[str, str]]

class _Recipe(Protocol):
    """What a call's key is made of: a recorded call, or one about to be made."""

    @property
    def function(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def code_digest(self) -> str: ...
    @property
    def source(self) -> str | None: ...
    @property
    def deps(self) -> dict[str, str]: ...
    @property
    def pinned(self) -> str | None: ...
    @property
    def inputs(self) -> dict[str, InputInfo]: ...
    @property
    def code_identity(self) -> str | None: ...


@dataclass(frozen=True)
class _Prospect:
    function: str
    key: str
    code_digest: str
    source: str | None
    deps: dict[str, str]
    pinned: str | None
    inputs: dict[str, InputInfo]
    code_identity: str | None


def explain_call(store: Store, function: str, key: str, code: CodeVersion,
                 inputs: dict[str, InputInfo]) -> str:
    """Explain a call about to be made (:meth:`provstore.TrackedFunction.explain`).

    Parameters
    ----------
    store : Store
        Where the call would be recorded.
    function : str
        ``module:qualname`` of the tracked function.
    key : str
        The call's key.
    code : CodeVersion
        The function's current code version.
    inputs : dict of str to InputInfo
        The bound arguments, as they would be keyed.
    """
    reader = LineageReader(store)
    head = f"{function} with these arguments (key {key[:12]}):"
    done = store.finished_call(key)
    if done is not None and done in (hit := reader.calls([done])):
        when = f" on {hit[done].finished:%Y-%m-%d %H:%M:%S}" if hit[done].finished else ""
        return f"{head}\nhit: {hit[done]}{when}; its stored result would be loaded"
    latest = reader.latest_done_call(function)
    old = None if latest is None else reader.calls([latest]).get(latest)
    if old is None:
        return f"{head}\nmiss: first computation: no finished call of {function} yet"
    new = _Prospect(function, key, code.digest, code.source, dict(code.deps), code.pinned,
                    reader.with_names(inputs), code.identity)
    return "\n".join([head, f"miss: compared with the newest finished call, {old}:",
                      *differences(old, new, _with_parts(reader.code_sources, code))])


def _with_parts(stored: Sources, code: CodeVersion) -> Sources:
    """Stored sources, and those of a code version not recorded yet."""
    def sources(digests: Iterable[str]) -> dict[str, str]:
        wanted = set(digests)
        return {**stored(wanted - code.parts.keys()),
                **{d: text for d, text in code.parts.items() if d in wanted}}
    return sources


def differences(old: _Recipe, new: _Recipe, sources: Sources | None = None) -> list[str]:
    """Lines telling what differs between two calls' code and inputs.

    With *sources*, a changed helper, class or constant is shown as a unified
    diff of its stored sources.
    """
    lines = []
    if old.function != new.function:
        lines.append(f"function: {old.function} → {new.function}")
    if old.key == new.key:
        return [*lines, "same key: forced recompute"]
    if old.code_digest == new.code_digest:
        lines.append(f"code: unchanged ({new.code_digest[:12]})")
    else:
        lines.append(f"code: changed, {old.code_digest[:12]} → {new.code_digest[:12]}")
        lines.extend(code_changes(old, new, sources))
    changed, same = [], []
    for name in [*new.inputs, *(n for n in old.inputs if n not in new.inputs)]:
        o, n = old.inputs.get(name), new.inputs.get(name)
        if o is None:
            assert n is not None
            changed.append(f"  + {name}: new argument {n.digest[:12]} ({_what(n)})")
        elif n is None:
            changed.append(f"  - {name}: no longer an argument (was {_what(o)})")
        elif o.digest != n.digest:
            changed.append(f"  {name}: {o.digest[:12]} → {n.digest[:12]}  "
                           f"({_what(o)} → {_what(n)})")
        else:
            same.append(name)
    if changed:
        lines += ["inputs changed:", *changed]
    if same:
        lines.append(f"inputs unchanged: {', '.join(same)}")
    if old.code_digest == new.code_digest and not changed and old.function == new.function:
        lines.append("the keys differ though code and inputs match (were ignore= names changed?)")
    return lines


def code_changes(old: _Recipe, new: _Recipe, sources: Sources | None = None) -> list[str]:
    """Lines telling how the code versions of two calls differ: pin, dependencies, source.

    With *sources*, each changed helper, class or constant whose old and new
    sources were stored gets a unified diff.
    """
    lines = []
    if old.pinned != new.pinned:
        lines.append(f"  pinned version: {old.pinned!r} → {new.pinned!r}")
    deps, changed = [], []
    for dep, a, b in changed_items(*_comparable(old, new)):
        if a is None:
            deps.append(f"    + {dep} {_short(b)}")
        elif b is None:
            deps.append(f"    - {dep} {_short(a)}")
        else:
            deps.append(f"    {dep}: {_short(a)} → {_short(b)}")
            if not dep.startswith("dist:"):
                changed.append((dep, a, b))
    if deps:
        lines += ["  dependencies changed:", *deps]
    found = sources([d for _, a, b in changed for d in (a, b)]) if sources and changed else {}
    for dep, a, b in changed:
        if a in found and b in found:
            diff = difflib.unified_diff(found[a].splitlines(), found[b].splitlines(),
                                        lineterm="", fromfile=f"{dep} {a[:12]}",
                                        tofile=f"{dep} {b[:12]}")
            lines += [f"  {dep} diff:", *(f"    {line}" for line in diff)]
    if old.source is None or new.source is None:
        lines.append("  (the source of one version was not recorded)")
    elif old.source == new.source:
        lines.append("  source: unchanged")
    else:
        diff = difflib.unified_diff(
            old.source.splitlines(), new.source.splitlines(), lineterm="",
            fromfile=f"{old.function} {old.code_digest[:12]}",
            tofile=f"{new.function} {new.code_digest[:12]}")
        lines += ["  source diff:", *(f"    {line}" for line in diff)]
    return lines


def _comparable(old: _Recipe, new: _Recipe) -> tuple[dict[str, str], dict[str, str]]:
    """Both dependency maps, relative to their function's module when it moved."""
    homes = [(r.code_identity or r.function).partition(":")[0] for r in (old, new)]
    if homes[0] == homes[1]:
        return old.deps, new.deps
    return (relative_deps(old.deps, old.code_identity or old.function),
            relative_deps(new.deps, new.code_identity or new.function))


def changed_items(old: Mapping[str, Any],
                  new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old value or None, new value or None)`` for every key whose value differs."""
    return [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


def _short(value: str | None) -> str:
    text = str(value)
    return text if len(text) <= 16 else text[:12]


def _what(i: InputInfo) -> str:
    if i.names:
        return i.describe_names()
    if i.file_path is not None:
        return f"file {i.file_path}"
    if i.artifact_id is not None:
        return f"artifact {i.artifact_id}"
    text = json.dumps(i.summary)
    return text if len(text) <= 60 else text[:57] + "..."
