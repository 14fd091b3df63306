"""Lineage: how every result was made, read from the store.

Read top to bottom: :mod:`.model` (plain records, importing nothing of
provstore) ← :mod:`.reader` (rows → records) and :mod:`.render` (text tree,
notebook HTML) ← :mod:`.explain` and :mod:`.impact` (dependents, stale) ←
:mod:`.diff` ← :mod:`.history` (:class:`History`, what ``ctx.history(name)``
returns).
"""

from __future__ import annotations

from .diff import Diff, Divergence
from .history import History
from .impact import Dependent, Stale, StaleList, Unchecked
from .model import (
    BoundName,
    CallInfo,
    Edge,
    InputInfo,
    LineageGraph,
    Node,
    RunInfo,
    Version,
    describe_artifact,
    format_size,
)
from .reader import LineageReader

__all__ = [
    "BoundName", "CallInfo", "Dependent", "Diff", "Divergence", "Edge", "History", "InputInfo",
    "LineageGraph", "LineageReader", "Node", "RunInfo", "Stale", "StaleList", "Unchecked",
    "Version",
    "describe_artifact", "format_size",
]
