"""Checking and cleaning a store: :func:`verify`, :func:`gc`, :func:`which`, :func:`export`.

``verify`` re-hashes every object file. It never trusts permissions, mtimes or
sizes alone: DVC skips files that are read-only, and that shortcut hides exactly
the damage a checker exists to find.

``gc`` deletes nothing that something still references. Rows commit only after
their file is published, so a file with no row is either left by a crashed
writer or belongs to a publication whose row is about to commit. Only files
older than the grace period are removed. Before a file is deleted it is
renamed into ``tmp/`` and its inode is compared with the one scanned, so a
file that a writer republished in the meantime is put back.
The highest-numbered artifact row is never deleted. SQLite (without
AUTOINCREMENT) would give its id to the next artifact, while other processes
still cache the old row under that id.
"""

from __future__ import annotations

from .calls import CallSummary, list_calls
from .collect import GcReport, Removal, gc
from .common import BindingRef, CallRef, Problem, Progress, VerifyReport
from .exchange import Match, RunSummary, export, list_runs, which
from .verify import verify

__all__ = [
    "BindingRef", "CallRef", "CallSummary", "GcReport", "Match", "Problem", "Progress",
    "Removal", "RunSummary", "VerifyReport", "export", "gc", "list_calls", "list_runs", "verify",
    "which",
]
