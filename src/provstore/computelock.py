"""Who may compute tracked calls in a SQLite store: many processes with leases, or one alone.

A store opened with ``exclusive=True`` computes without compute leases
(:mod:`provstore.leases`): no claim transaction before a miss, no lease to
release after it. That is only sound while no other process computes
calls of the store, which a lock file next to the database guarantees:

- a process that computes with leases holds the file locked *shared*
  (``flock``), from its first miss until the store is closed;
- the exclusive process holds it locked *exclusively*, from the open until
  the store is closed; it writes its pid and host into the file, so that a
  refused process can say who holds it.

Either side is refused at once (never left waiting) while the other holds
the lock. Reading, hits and binding take no lock: they never compete for
a computation. ``flock`` locks belong to an open file, not to a process: a
forked child shares its parent's; the exclusive process gives up its
exclusivity before it forks (see :class:`ComputeLock.before_fork`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import weakref
from pathlib import Path

from .errors import StoreError

__all__ = ["ComputeLock", "lock_file"]


def lock_file(database: Path) -> Path:
    """The compute lock file of the SQLite *database*."""
    return database.with_name(database.name + ".computing")


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        # Made by another user of a shared store: a lock needs no write access
        # (only the holder's name is not written then).
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


class ComputeLock:
    """This process's hold on one store's compute lock file.

    Parameters
    ----------
    path : Path
        The lock file (:func:`lock_file`).
    root : Path
        The store, named in messages.
    """

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self._fd: int | None = None
        self._pid = 0
        self._exclusive = False
        #: Opened with exclusive=True: the lock is taken again so after a close.
        self.wants_exclusive = False
        #: How many calls this process has computed alone (see Computation).
        self.generation = 0
        # Key -> None while one thread computes it alone; an event once
        # another waits (most keys never have a waiter: no event to make).
        self._inflight: dict[str, threading.Event | None] = {}
        self._inflight_lock = threading.Lock()
        self._lock = threading.Lock()  # one thread at a time takes or lets go of the lock
        _ALL.add(self)

    @property
    def exclusive(self) -> bool:
        """Whether this process holds the lock exclusively now."""
        return self._fd is not None and self._exclusive and self._pid == os.getpid()

    def hold(self) -> bool:
        """Hold the lock as a miss needs it; return whether this process computes alone.

        Cheap when it is held already. Alone: opened with ``exclusive=True``
        (and not forked since); otherwise shared, computing with leases.

        Raises
        ------
        StoreError
            The lock is held the other way by another process.
        """
        if self._fd is not None and self._pid == os.getpid():
            return self._exclusive
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                return self._exclusive  # another thread took it meanwhile
            if self.wants_exclusive:
                self._hold_exclusive()
                return True
            self._take(fcntl.LOCK_SH)
            return False

    def hold_exclusive(self) -> None:
        """Hold the lock exclusively (``exclusive=True``).

        Raises
        ------
        StoreError
            Another process computes calls of the store, or holds it exclusively.
        """
        with self._lock:
            self._hold_exclusive()

    def _hold_exclusive(self) -> None:
        if self.exclusive:
            return
        shared = self._fd is not None and self._pid == os.getpid()
        try:
            self._take(fcntl.LOCK_EX)
        except StoreError:
            # Converting a lock may drop the one held: take back the share.
            if shared and not self._relock_shared():
                self._release()
            raise
        self.wants_exclusive = self._exclusive = True
        _EXCLUSIVE.add(self)
        with contextlib.suppress(OSError):  # only a courtesy for messages
            assert self._fd is not None
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)

    def before_fork(self) -> None:
        """Become a shared holder: a forked child computes with leases beside this process."""
        self.wants_exclusive = False
        if self.exclusive:
            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_SH)  # cannot conflict: no one else holds it
            self._exclusive = False

    def release(self) -> None:
        """Let go of the lock (closing the store); the next miss takes it again."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        fd, exclusive, self._fd, self._exclusive = self._fd, self.exclusive, None, False
        if fd is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                if exclusive:  # no stale name for the next refusal to give
                    os.ftruncate(fd, 0)
                os.close(fd)  # closing the last descriptor of the open file unlocks it

    def begin_alone(self, key: str) -> threading.Event | None:
        """Mark *key* computed by this thread; None, or the event of the thread computing it."""
        with self._inflight_lock:
            if key not in self._inflight:
                self._inflight[key] = None
                return None
            running = self._inflight[key]
            if running is None:
                running = self._inflight[key] = threading.Event()
            return running

    def end_alone(self, key: str) -> None:
        """*key* is committed or failed: wake the threads waiting for it."""
        with self._inflight_lock:
            running = self._inflight.pop(key, None)
            self.generation += 1
        if running is not None:
            running.set()

    def _relock_shared(self) -> bool:
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def _take(self, mode: int) -> None:
        if self._fd is not None and self._pid != os.getpid():
            self._fd = None  # the parent's (inherited through fork): left as it is
        fresh = self._fd is None
        if fresh:
            try:
                self._fd = _open(self.path)
            except OSError as exc:
                raise StoreError(f"cannot open the compute lock file {self.path} of the store "
                                 f"{self.root}: {exc}") from exc
            self._pid = os.getpid()
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            if fresh:  # an open file without its lock must not pass for one held
                os.close(self._fd)
                self._fd = None
            if isinstance(exc, BlockingIOError):
                raise self._refusal(mode) from None
            raise StoreError(f"cannot lock the compute lock file {self.path} of the store "
                             f"{self.root}: {exc}") from exc

    def _refusal(self, mode: int) -> StoreError:
        if mode == fcntl.LOCK_SH:
            holder = self._holder()
            return StoreError(
                f"the store {self.root} is opened with exclusive=True by {holder}, which "
                "computes its tracked calls alone (without compute leases): this process can "
                "read it, load hits and bind names, but not compute a call. Close it there "
                "(or open it there without exclusive=True), or compute this call there")
        return StoreError(
            f"cannot open the store {self.root} with exclusive=True: another process "
            f"computes its tracked calls ({self._holder()}). Close the store there, or open "
            "it here without exclusive=True")

    def _holder(self) -> str:
        try:
            text = self.path.read_text().split()
        except (OSError, ValueError):
            text = []
        if len(text) >= 2 and text[0].isdigit():
            return f"process {text[0]} on {text[1]}"
        return "another process"


# Locks held exclusively: a fork makes them shared first (see before_fork).
_EXCLUSIVE: weakref.WeakSet[ComputeLock] = weakref.WeakSet()
_ALL: weakref.WeakSet[ComputeLock] = weakref.WeakSet()


def _share_before_fork() -> None:
    for lock in list(_EXCLUSIVE):
        lock.before_fork()
    _EXCLUSIVE.clear()


def _fresh_locks_in_child() -> None:
    # Another thread of the parent may have held them at the fork.
    for lock in list(_ALL):
        lock._lock = threading.Lock()
        lock._inflight_lock = threading.Lock()
        lock._inflight = {}


os.register_at_fork(before=_share_before_fork, after_in_child=_fresh_locks_in_child)
