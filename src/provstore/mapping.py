"""Former name of :mod:`provstore.parallel`, kept so existing imports keep working."""

from __future__ import annotations

from .parallel import WorkerTraceback, map_calls

__all__ = ["WorkerTraceback", "map_calls"]
