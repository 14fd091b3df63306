"""Run records: which process wrote what, where and when.

A run is opened lazily on a process's first write to a store and closed by
``atexit`` as finished, or as failed when an uncaught exception is on its way
out. A run still marked running reads as crashed when its process no longer
exists on this host (known at once), or when its heartbeat is old (a process
on another host, which cannot be asked).
"""

from __future__ import annotations

import atexit
import datetime as dt
import getpass
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .db import lite_sql
from .db.lite import Lite, LiteFailed, Statement
from .errors import ProvstoreError
from .lazy import LazyModule
from .periodic import timer

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy import exc as sa_exc

    from .db import engine as eng
    from .db import queries as q
else:
    # Imported when first needed: a process that only hits an SQLite store
    # writes its run through provstore.db.lite (see provstore.store).
    sa_exc = LazyModule("sqlalchemy.exc")
    eng = LazyModule("provstore.db.engine")
    q = LazyModule("provstore.db.queries")

__all__ = [
    "HIT_FLUSH_SECONDS", "ReuseLog", "RunRecorder", "environment", "process_gone", "status_of",
    "utcnow",
]

STALE_AFTER = dt.timedelta(minutes=5)
_HOST = socket.gethostname()  # what environment() records as a run's host
HEARTBEAT_SECONDS = 60.0  # well inside STALE_AFTER, so a live run never reads as crashed
HIT_FLUSH_SECONDS = 5.0  # reuse times are written at most once per this many seconds
_PACKAGES = ("numpy", "nibabel", "tables", "SQLAlchemy", "provstore", "pandas", "scipy")


# This process's id, kept up to date across fork: every hit counts itself,
# and os.getpid() is a system call.
_pid = [os.getpid()]


def _forked() -> None:
    _pid[0] = os.getpid()


os.register_at_fork(after_in_child=_forked)


def utcnow() -> dt.datetime:
    """Return the current UTC time without tzinfo (how the database stores it)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _git(cwd: str) -> tuple[str | None, bool | None]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def environment() -> dict[str, Any]:
    """Capture the process's environment for a run row."""
    cwd = os.getcwd()
    script_dir = os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else cwd
    commit, dirty = _git(script_dir if os.path.isdir(script_dir) else cwd)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "user": user,
        "argv": json.dumps(sys.argv),
        "cwd": cwd,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "packages": json.dumps(_package_versions()),
    }


class RunRecorder:
    """Opens this process's run in one store on first write and closes it at exit."""

    def __init__(self, engine: Callable[[], Engine], lite: Lite | None = None, *,
                 heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self._engine = engine
        self._lite = lite
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._id: int | None = None
        self.interval = heartbeat
        # Hits and misses of tracked calls, counted in memory and written with
        # the heartbeat and at close; hits wait by call id until the durations
        # they saved are read, one query per write.
        self._pending: Counter[int] = Counter()
        self._hits = self._misses = 0
        self._saved = 0.0
        self._counted_in = os.getpid()
        _LOCKED.add(self)

    def _same_process(self) -> None:
        # Call with the lock held: a forked child counts its own calls only.
        if self._counted_in != _pid[0]:
            self._pending, self._hits, self._misses, self._saved = Counter(), 0, 0, 0.0
            self._counted_in = _pid[0]

    def count_hit(self, call_id: int) -> None:
        """Count a tracked call answered from the store (the result of *call_id*)."""
        with self._lock:
            self._same_process()
            self._hits += 1
            self._pending[call_id] += 1

    def count_miss(self) -> None:
        """Count a tracked call computed by this process."""
        with self._lock:
            self._same_process()
            self._misses += 1

    def counts(self) -> dict[str, Any]:
        """``hits``, ``misses`` and ``saved_seconds`` so far (reads the pending durations)."""
        with self._lock:
            self._same_process()
            pending, self._pending = self._pending, Counter()
        saved = self._saved_by(pending) if pending else 0.0
        with self._lock:
            self._saved += saved
            return {"hits": self._hits, "misses": self._misses, "saved_seconds": self._saved}

    def _saved_by(self, pending: Counter[int]) -> float:
        """The recorded durations of the calls in *pending*, times their hits."""
        ids = sorted(pending)
        # A few calls (a script's hits) are read one by one without SQLAlchemy;
        # many, in batches of one IN query each.
        if self._lite is not None and len(ids) <= 20:
            durations = [self._lite.read(lite_sql.CALL_DURATION, {"id": i}) for i in ids]
            if all(d is not None for d in durations):
                return sum((d.scalar() or 0.0) * pending[i]
                           for i, d in zip(ids, durations) if d is not None)
        saved = 0.0
        with eng.reading(self._engine()) as conn:
            for i in range(0, len(ids), 500):
                for r in conn.execute(q.CALL_DURATIONS, {"ids": ids[i:i + 500]}):
                    saved += (r.duration or 0.0) * pending[r.id]
        return saved

    def record_counts(self) -> None:
        """Write the counts now; a process that only hit opens (and closes) its run for them."""
        with self._lock:
            self._same_process()
            if not (self._hits or self._misses):
                return
        if self._id is None or self._pid != os.getpid():
            self.run_id()
            self._close()
            return
        params = {"run_id": self._id, **self.counts()}
        if not _lite_wrote(self._lite, lite_sql.RUN_COUNTS, params):
            with eng.write(self._engine()) as conn:
                conn.execute(q.RUN_COUNTS, params)

    def run_id(self) -> int:
        """Return this process's run id in the store, opening the run if needed."""
        if self._id is not None and self._pid == os.getpid():
            return self._id
        with self._lock:
            if self._id is None or self._pid != os.getpid():  # new process after fork
                self._id = self._open()
                self._pid = os.getpid()
                timer().add(self, self.interval)
                atexit.register(self._close)
            return self._id

    def beat(self) -> bool:
        """Write the heartbeat and counts of this process's open run (periodic thread)."""
        run_id = self._id
        if run_id is None or self._pid != os.getpid():
            return False
        counts = self.counts()
        with eng.write(self._engine()) as conn:
            conn.execute(q.BEAT_RUN, {"run_id": run_id, "p_heartbeat": utcnow(), **counts})
        return True

    def after_fork(self) -> None:
        """Replace the lock a thread of the parent may have held at ``fork()``."""
        self._lock = threading.Lock()

    def _open(self) -> int:
        now = utcnow()
        row = {
            **environment(),
            "uuid": uuid.uuid4().hex,
            "started": now,
            "heartbeat": now,
            "status": "running",
        }

        if self._lite is not None:
            try:
                return int(self._lite.write(
                    lambda tx: tx.execute(lite_sql.INSERT_RUN, row).scalar_one()))
            except LiteFailed:
                pass  # again through SQLAlchemy, which retries or explains

        def insert_run() -> int:
            with eng.write(self._engine()) as conn:
                return int(conn.execute(q.INSERT_RUN, row).scalar_one())

        return eng.retrying(insert_run)

    def _close(self) -> None:
        if self._id is None or self._pid != os.getpid():
            return
        timer().remove(self)
        failed = getattr(sys, "last_value", None) is not None
        status = "failed" if failed else "finished"
        now = utcnow()
        try:
            params = {"run_id": self._id, "p_status": status, "p_ended": now,
                      "p_heartbeat": now, **self.counts()}
            if not _lite_wrote(self._lite, lite_sql.CLOSE_RUN, params):
                with eng.write(self._engine()) as conn:
                    conn.execute(q.CLOSE_RUN, params)
        except Exception:
            pass


class ReuseLog:
    """The calls this process reused, for the run's counts and ``calls.last_hit``.

    A hit only adds its call id to a set; the ids are written in one UPDATE
    at most every :data:`HIT_FLUSH_SECONDS`, when the store closes and at
    exit, never once per hit. A process killed before a flush loses at most
    those seconds of reuse times, which only order ``gc --max-bytes``.
    """

    def __init__(self, engine: Callable[[], Engine], runs: RunRecorder, lite: Lite | None = None,
                 *, enabled: bool = True) -> None:
        self._engine = engine
        self._runs = runs
        self._lite = lite
        self._enabled = enabled  # a read-only store writes nothing, not even reuse
        self._lock = threading.Lock()
        self._ids: set[int] = set()
        self._flushed = time.monotonic()
        self._pid = os.getpid()
        _LOCKED.add(self)
        if enabled:
            # By weak reference: a process that opens many stores keeps none alive.
            atexit.register(_flush_at_exit, weakref.ref(self))

    def note(self, call_id: int) -> None:
        """Record a hit on *call_id*; write the batch if the interval has passed."""
        if not self._enabled:
            return
        self._runs.count_hit(call_id)
        with self._lock:
            self._ids.add(call_id)
            due = time.monotonic() - self._flushed >= HIT_FLUSH_SECONDS
        if due:
            self.flush()

    def after_fork(self) -> None:
        """Replace the lock a thread of the parent may have held at ``fork()``."""
        self._lock = threading.Lock()

    def flush(self) -> None:
        """Write ``last_hit`` of the calls hit since the last flush, in one transaction."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent writes its own
                self._ids, self._pid = set(), os.getpid()
            ids, self._ids = self._ids, set()
            self._flushed = time.monotonic()
        if not ids:
            return
        now = utcnow()
        ordered = sorted(ids)

        def transaction() -> None:
            with eng.write(self._engine()) as conn:
                for i in range(0, len(ordered), 500):  # far below SQLite's parameter limit
                    conn.execute(q.TOUCH_CALLS, {"ids": ordered[i:i + 500], "now": now})

        try:
            if not _lite_wrote(self._lite, lite_sql.TOUCH_CALL,
                               [{"p_id": i, "now": now} for i in ordered]):
                eng.retrying(transaction)
        except (ProvstoreError, sa_exc.SQLAlchemyError):
            # A busy or vanished database must not fail a hit; the ids wait
            # for the next flush.
            with self._lock:
                self._ids |= ids


def _lite_wrote(lite: Lite | None, stmt: Statement,
                params: dict[str, Any] | list[dict[str, Any]]) -> bool:
    """Whether *stmt* was written on SQLite without SQLAlchemy; if not, the caller writes it.

    Not written: a server database, or an error SQLite reported (rolled
    back), which the SQLAlchemy path retries or explains.
    """
    if lite is None:
        return False
    try:
        lite.write(lambda tx: tx.execute(stmt, params))
    except LiteFailed:
        return False
    return True


def _flush_at_exit(ref: weakref.ref[ReuseLog]) -> None:
    log = ref()
    if log is None:
        return
    try:
        log.flush()
        log._runs.record_counts()
    except Exception:  # at interpreter exit nothing can be reported any more
        pass


def status_of(row_status: str, heartbeat: dt.datetime, now: dt.datetime | None = None, *,
              host: str | None = None, pid: int | None = None) -> str:
    """Return the displayed status of a run row.

    A run still marked running crashed when its heartbeat is stale, or at once
    when *host* is this host and process *pid* is gone (``kill -9``, OOM).
    """
    if row_status != "running":
        return row_status
    if now is None:
        now = utcnow()
    if now - heartbeat > STALE_AFTER or process_gone(host, pid):
        return "crashed"
    return row_status


def process_gone(host: str | None, pid: int | None) -> bool:
    """Whether *pid* names a process of this host that no longer exists.

    False when it cannot be told: another host, or no pid. A pid reused by a
    new process reads as alive until the run's heartbeat goes stale.
    """
    if host != _HOST or pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


# Locks a heartbeat or flushing thread may hold at the moment another thread
# forks: the child has no such thread, so it gets fresh, unheld locks.
_LOCKED: weakref.WeakSet[RunRecorder | ReuseLog] = weakref.WeakSet()


def _fresh_locks_after_fork() -> None:
    for holder in list(_LOCKED):
        holder.after_fork()


os.register_at_fork(after_in_child=_fresh_locks_after_fork)
