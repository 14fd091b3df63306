"""WAL checkpoints off the path of the writes (SQLite).

With SQLite's automatic checkpoints, the commit that takes the write-ahead
log past 1,000 pages copies them into the database file and syncs it: 1 to
4 ms inside one tracked call, every 50 or so misses of a tiny function,
about 40 µs per miss on average. provstore's writing connections instead
leave the log to :data:`AUTOCHECKPOINT_PAGES` (a backstop), and every
:data:`EVERY_COMMITS` commits of this process to a file hand a ``PASSIVE``
checkpoint of it to the process's one background thread
(:mod:`provstore.periodic`), on a connection of its own: it never waits for
a reader or a writer, and :mod:`sqlite3` lets go of the GIL while it
copies, so the writes go on meanwhile on another core. A writer that
keeps writing all the while leaves the log never quite copied to its end,
so SQLite cannot start it over: the backstop then checkpoints what little
is left, inline, about every 200 misses.

Closing a store closes its checkpoint connection (:func:`stop`); so does
the end of the process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sqlite3

from ..periodic import timer

__all__ = ["AUTOCHECKPOINT_PAGES", "EVERY_COMMITS", "committed", "stop"]

# A writer still checkpoints by itself past this many pages (16 MB with the
# 4 KB default): a background thread that lags (a machine under load)
# cannot let the log grow without bound, and a log this size reads fast.
AUTOCHECKPOINT_PAGES = 4_000
# A miss commits twice and writes ~18 pages: 64 commits keep the log near
# the 1,000 pages SQLite would keep it at by itself.
EVERY_COMMITS = 64


class _Checkpoint:
    """The checkpoints of one database file, run by the periodic thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.commits = 0
        self.conn: sqlite3.Connection | None = None

    def beat(self) -> bool:
        try:
            if self.conn is None:
                self.conn = sqlite3.connect(self.path, isolation_level=None,
                                            check_same_thread=False)
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            # A full disk, a file being replaced: the writers' backstop
            # checkpoints; a new connection tries again next time.
            self.close()
        return False  # once per request

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


_RUNNING: dict[str, _Checkpoint] = {}
_INHERITED: list[_Checkpoint] = []


def committed(path: str | None) -> None:
    """Note one commit to the SQLite file *path* by this process."""
    if not path:
        return
    found = _RUNNING.get(path)
    if found is None:
        found = _RUNNING[path] = _Checkpoint(path)
    found.commits += 1
    if found.commits >= EVERY_COMMITS:
        found.commits = 0
        timer().add(found, 0.0)


def stop(path: str | None) -> None:
    """Close *path*'s checkpoint connection (the next commits open another)."""
    found = _RUNNING.pop(path, None) if path else None
    if found is None:
        return
    periodic = timer()
    periodic.remove(found)
    # Not while the thread checkpoints on it: a beat holds this lock.
    if periodic.beating.acquire(timeout=30):
        try:
            found.close()
        finally:
            periodic.beating.release()


def _stop_all() -> None:
    for path in list(_RUNNING):
        stop(path)


def _forget_in_child() -> None:
    # A forked child must not close its parent's connections: closing the
    # last connection of a process checkpoints and deletes the WAL under
    # the parent, and a connection dropped is closed. Kept, never used.
    _INHERITED.extend(_RUNNING.values())
    _RUNNING.clear()


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(_stop_all)
