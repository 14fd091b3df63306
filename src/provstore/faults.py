"""Fault injection at provstore's write points, for crash and I/O-error tests.

Set ``PROVSTORE_FAULT=<point>:<action>[@<n>]`` in a process's environment
and the *n*-th time (default: the first) that process passes *point*, the
fault fires once:

- ``kill``: the process dies at once by SIGKILL, as under ``kill -9``;
- ``eio`` / ``enospc``: an :class:`OSError` with that errno is raised, as a
  failing disk or a full one would;
- ``log``: the point and its count are printed on stderr (to learn how many
  times a point is passed).

The points, in the order a save passes them:

=====================  =====================================================
``publish.write``      the temporary file is written, not yet fsynced
``publish.fsync``      about to fsync the temporary file
``publish.rename``     about to rename it into ``objects/``
``publish.dirfsync``   about to fsync the object's directory
``txn.before_commit``  a write transaction's statements ran; about to commit
``txn.after_commit``   a write transaction committed; not yet returned
``schema.statement``   a statement of a schema migration ran (store creation)
=====================  =====================================================

The variable is read once, at import; unset, :func:`hit` is one comparison.
A test harness that forks its children from one warm process sets the
fault in each child with :func:`arm` instead. This module is private to
provstore and its tests.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

__all__ = ["ACTIONS", "POINTS", "arm", "hit"]

POINTS = ("publish.write", "publish.fsync", "publish.rename", "publish.dirfsync",
          "txn.before_commit", "txn.after_commit", "schema.statement")
ACTIONS = ("kill", "eio", "enospc", "log")
_ERRNO = {"eio": errno.EIO, "enospc": errno.ENOSPC}


def _parse(spec: str) -> tuple[str, str, int] | None:
    if not spec:
        return None
    where, _, nth = spec.partition("@")
    point, _, action = where.partition(":")
    if point not in POINTS or action not in ACTIONS or (nth and not nth.isdigit()):
        raise ValueError(f"PROVSTORE_FAULT={spec!r}: expected <point>:<action>[@<n>] with a "
                         f"point among {', '.join(POINTS)} and an action among "
                         f"{', '.join(ACTIONS)}")
    return point, action, int(nth or 1)


_SPEC = _parse(os.environ.get("PROVSTORE_FAULT", ""))
_count = 0


def arm(spec: str) -> None:
    """Set the fault as ``PROVSTORE_FAULT`` would (``""`` disarms), counting afresh."""
    global _SPEC, _count
    _SPEC, _count = _parse(spec), 0


def hit(point: str, path: str | os.PathLike[str] | None = None) -> None:
    """Pass the write point *point* (with the file it concerns, for the error)."""
    if _SPEC is None or _SPEC[0] != point:
        return
    global _count
    _count += 1
    action = _SPEC[1]
    if action == "log":
        print(f"provstore-fault {point} #{_count}", file=sys.stderr, flush=True)
        return
    if _count != _SPEC[2]:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = _ERRNO[action]
    raise OSError(code, f"{os.strerror(code)} (injected at {point})",
                  None if path is None else os.fspath(path))
