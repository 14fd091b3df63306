"""Sweeps: collect results across the scopes of a parameter grid.

A grid is a tree of ``key=value`` scopes (``subject=01/sigma=2.0``). Its
parameters are read back from the scope paths, so a sweep needs no separate
record of what was varied: :func:`table` turns every binding of one name
below a scope into a row whose columns are the parameters of the scope that
holds it, and :func:`find` lists the bindings whose scope parameters or
producing function match.

Both look at the bindings where they are bound, never at names inherited
from enclosing scopes: a sweep asks which cells of the grid hold a result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .codeversion import function_identity
from .scope import Scalar, Segment, check_name, format_path, parse_path
from .store import Store

__all__ = ["Found", "find", "scope_params", "table"]


@dataclass(frozen=True)
class Found:
    """One current binding found by :meth:`Context.find <provstore.Context.find>`.

    Attributes
    ----------
    path : str
        ``scope/name``, usable with ``ctx[...]`` and ``ctx.history(...)`` from the root.
    scope : str
        The path of the scope holding the binding (``""`` is the root).
    name : str
        The bound name.
    version : int
        The binding's current version number.
    artifact_id : int
        The artifact the name is bound to.
    params : dict
        The scope parameters of *scope*, parsed to their JSON values.
    function : str or None
        ``module:qualname`` of the tracked function that produced the value,
        None for a plain assignment.
    """

    path: str
    scope: str
    name: str
    version: int
    artifact_id: int
    params: dict[str, Scalar] = field(default_factory=dict)
    function: str | None = None


def scope_params(path: str) -> dict[str, Scalar]:
    """Return the ``key=value`` parameters of a scope path, in path order.

    Plain labels carry no parameter and are skipped; a key repeated deeper in
    the path takes the innermost value, as a read would.
    """
    return {s.key: s.value for s in parse_path(path) if s.key is not None}


def find(store: Store, segments: tuple[Segment, ...], *, function: Any = None,
         name: str | None = None, params: dict[str, Any] | None = None,
         recursive: bool = True) -> list[Found]:
    """Return the current bindings at and below *segments* that match.

    Parameters
    ----------
    store : Store
        The store to search.
    segments : tuple of Segment
        The scope to search from (included).
    function : callable or str, optional
        Keep bindings produced by calls of this function: a tracked function,
        a plain function, or its ``"module:qualname"``.
    name : str, optional
        Keep bindings of this name only.
    params : dict, optional
        Keep bindings whose scope has every one of these parameters, equal.
    recursive : bool
        Search every descendant scope; with False only the direct children.

    Returns
    -------
    list of Found
        Sorted by scope path, then name.
    """
    sid = store.scope_id(segments, create=False)
    if sid is None:
        return []  # the scope was never written to: nothing below it either
    rows = store.current_below(sid, format_path(segments), recursive=recursive, name=name,
                               function=None if function is None else _identity(function))
    wanted = params or {}
    found = []
    for r in rows:
        scope = str(r.path)
        values = scope_params(scope)
        if all(k in values and _same(values[k], v) for k, v in wanted.items()):
            found.append(Found(
                path=f"{scope}/{r.name}" if scope else str(r.name), scope=scope,
                name=str(r.name), version=int(r.version), artifact_id=int(r.artifact_id),
                params=values, function=r.function,
            ))
    # In Python, not ORDER BY: database collations order paths differently.
    found.sort(key=lambda f: (f.scope, f.name))
    return found


def table(store: Store, segments: tuple[Segment, ...], name: str,
          func: Callable[[Any], Any] | None = None, *, recursive: bool = True,
          mmap_mode: str | None = "r") -> Any:
    """Collect *name* from every scope at and below *segments* into a DataFrame.

    Parameters
    ----------
    store : Store
        The store to read.
    segments : tuple of Segment
        The scope to collect from (included when *name* is bound there).
    name : str
        The name to collect.
    func : callable, optional
        Applied to each loaded value (``lambda m: m.sum()``); the result is
        what the row holds. Without it the row holds the value itself.
    recursive : bool
        Collect from every descendant scope; with False only the direct children.
    mmap_mode : {"r", "c", None}
        How arrays are mapped while loading.

    Returns
    -------
    pandas.DataFrame
        One row per scope holding *name*, sorted by scope path. Columns: the
        union of the scope parameters (missing ones are None/NaN), ``scope``,
        and *name*.

    Raises
    ------
    ImportError
        pandas is not installed.
    ValueError
        A scope parameter is called ``scope`` or *name*, so columns would clash.
    """
    pd = _pandas()
    check_name(name)
    hits = find(store, segments, name=name, recursive=recursive)
    columns: dict[str, None] = {}  # an ordered set: parameters in first-seen order
    for hit in hits:
        columns.update(dict.fromkeys(hit.params))
    clash = {"scope", name} & columns.keys()
    if clash:
        raise ValueError(
            f"scope parameter {sorted(clash)[0]!r} would clash with the "
            f"'scope' and {name!r} columns of the table"
        )
    data: dict[str, list[Any]] = {c: [h.params.get(c) for h in hits] for c in columns}
    data["scope"] = [h.scope for h in hits]
    data[name] = []
    for hit in hits:
        value = store.load(hit.artifact_id, mmap_mode=mmap_mode, where=hit.path)
        data[name].append(value if func is None else func(value))
    return pd.DataFrame(data, columns=list(data))


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError(
            "ctx.table() needs pandas: pip install provstore[pandas] "
            "(ctx.find() lists the same bindings without it)"
        ) from exc
    return pd


def _identity(function: Any) -> str:
    if isinstance(function, str):
        return function
    identity = getattr(function, "identity", None)  # a TrackedFunction knows its own
    return identity if isinstance(identity, str) else function_identity(function)


def _same(stored: Scalar, wanted: Any) -> bool:
    # sigma=2 finds sigma=2.0, but True is not 1 and "1" is not 1.
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return type(stored) is type(wanted) and stored == wanted
    if isinstance(stored, str) or isinstance(wanted, str):
        return type(stored) is type(wanted) and stored == wanted
    return bool(stored == wanted)
