"""One background thread per process for provstore's periodic writes.

Held leases are renewed every third of their lifetime and open runs write
their heartbeat every minute. Both used to have threads of their own (once,
one per store's run), and each extra thread alive at a ``fork()`` is one
more chance that the child inherits a lock held mid-write. This thread
starts with the first task and serves every store of the process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Protocol

__all__ = ["THREAD_NAME", "Task", "Timer", "timer"]

THREAD_NAME = "provstore-periodic"


class Task(Protocol):
    """Periodic work: :meth:`beat` runs every interval while the task is added."""

    def beat(self) -> bool:
        """Do the work once; return False to be dropped (an exception keeps it)."""


class Timer:
    """Runs each added task every *interval* seconds from one daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[Task, tuple[float, float]] = {}  # task -> (next run, interval)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_wake: float | None = None  # when the thread wakes by itself; None: never
        # Held while a task runs, and by fork() (see _hold_for_fork): a child
        # forked mid-beat would inherit SQLite's own mutexes locked and hang
        # on its first database call.
        self.beating = threading.Lock()

    def add(self, task: Task, interval: float) -> None:
        """Run *task* every *interval* seconds, the first time one interval from now."""
        with self._lock:
            due = time.monotonic() + interval
            self._due[task] = (due, interval)
            if self._thread is None:
                # At interpreter exit Python 3.12+ starts no thread; nothing
                # periodic is needed then (a run records its counts at exit).
                with contextlib.suppress(RuntimeError):
                    thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                    thread.start()
                    self._thread = thread
            # Waking the thread costs a context switch: only when it would
            # otherwise sleep past this task's first run.
            early = self._next_wake is None or due < self._next_wake
        if early:
            self._wake.set()

    def remove(self, task: Task) -> None:
        """Stop running *task* (harmless if it is not added)."""
        with self._lock:
            self._due.pop(task, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [t for t, (at, _) in self._due.items() if at <= now]
                for t in due:
                    self._due[t] = (now + self._due[t][1], self._due[t][1])
                wait = min((at - now for at, _ in self._due.values()), default=None)
                self._next_wake = None if wait is None else now + wait
            for task in due:
                try:
                    with self.beating:
                        keep = task.beat()
                except Exception:  # a busy database: the next beat tries again
                    continue
                if not keep:
                    self.remove(task)
            self._wake.wait(timeout=wait)
            self._wake.clear()


_timers: dict[int, Timer] = {}


def timer() -> Timer:
    """This process's timer; a forked child gets its own (it inherits no thread)."""
    pid = os.getpid()
    found = _timers.get(pid)
    if found is None:
        found = _timers[pid] = Timer()
    return found


_held_for_fork: list[Timer] = []


def _hold_for_fork() -> None:
    # A fork waits for the beat in progress, so the child never starts with a
    # lock (Python's or SQLite's) that this thread held at that instant.
    found = _timers.get(os.getpid())
    if found is not None:
        found.beating.acquire()
        _held_for_fork.append(found)


def _release_after_fork() -> None:
    while _held_for_fork:
        _held_for_fork.pop().beating.release()


os.register_at_fork(before=_hold_for_fork, after_in_parent=_release_after_fork,
                    after_in_child=_release_after_fork)
