"""The content-addressed object directory.

Layout::

    <root>/objects/3f/2a9c...e1.npy     read-only, named by content digest
    <root>/tmp/<host>-<pid>-<uuid>.npy  in-flight writes

A file is published in four steps: written under ``tmp/``, fsynced, made
read-only and renamed into ``objects/``, then the destination directory is
fsynced. Only after that does the store commit the database rows, so a row
never points at a missing or partial file. ``tmp/`` lives under the same root
(hence the same filesystem, checked on open), which makes the rename atomic,
and keeps the sweep of debris from crashed writers to one directory listing
instead of a walk of every shard.

Paths are built only from validated hex digests and registered suffixes,
never from user-supplied names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from . import faults
from .errors import (
    CorruptObjectError,
    ProvstoreError,
    StorageError,
    StorageFullError,
    StoreError,
)

__all__ = ["ObjectDir", "storage_error"]

_HEX = re.compile(r"[0-9a-f]{32,128}")
_SUFFIX = re.compile(r"(\.[a-z0-9]{1,8}){0,3}")
_HOST = socket.gethostname().split(".")[0].replace("-", "_") or "host"
STALE_FOREIGN_SECONDS = 24 * 3600
T = TypeVar("T")


class ObjectDir:
    """Content-addressed, read-only files under ``<root>/objects``.

    Parameters
    ----------
    root : path
        The store's object root; ``objects/`` and ``tmp/`` are created in it.
    durable : bool
        Fsync files and directories (the default). Turning it off trades
        power-loss safety for speed; a killed process still loses nothing.
    """

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.durable = durable
        for d in (self.root, self.objects, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        if self.objects.stat().st_dev != self.tmp.stat().st_dev:
            raise StoreError(
                f"{self.tmp} and {self.objects} are on different filesystems; "
                "renames between them would not be atomic"
            )

    def path(self, digest: str, suffix: str) -> Path:
        """Return the final path of the object *digest* with *suffix*."""
        if not _HEX.fullmatch(digest):
            raise CorruptObjectError(f"{digest!r} is not a hexadecimal digest")
        if not _SUFFIX.fullmatch(suffix):
            raise StoreError(f"{suffix!r} is not a valid object file suffix")
        return self.objects / digest[:2] / f"{digest[2:]}{suffix}"

    def relative(self, digest: str, suffix: str) -> str:
        """Return the object's path relative to the root, for messages and exports."""
        return str(self.path(digest, suffix).relative_to(self.root))

    def exists(self, digest: str, suffix: str) -> bool:
        """Return whether the object's file is present."""
        return self.path(digest, suffix).is_file()

    def publish(self, digest: str, suffix: str, write: Callable[[Path], T]) -> T:
        """Write an object through *write* and publish it atomically.

        *write* receives a temporary path with the right suffix and must
        create the file there. On any exception the temporary file is removed
        and nothing is published.

        Raises
        ------
        StorageError
            A filesystem fault (``StorageFullError`` when the disk is full),
            naming the path and the errno.
        """
        final = self.path(digest, suffix)
        with self.staging(suffix) as tmp:
            try:
                result = write(tmp)
                faults.hit("publish.write", tmp)
            except ProvstoreError:
                raise
            except OSError as exc:
                raise storage_error(exc, "write", exc.filename or tmp) from exc
            self._seal(tmp)
            self._rename(tmp, final)
        return result

    def _rename(self, tmp: Path, final: Path) -> None:
        doing, where = "create the directory", final.parent
        try:
            final.parent.mkdir(exist_ok=True)
            doing, where = "rename into place", final
            faults.hit("publish.rename", final)
            # An identical object published concurrently is simply replaced
            # by the same bytes; readers see one whole file either way.
            os.replace(tmp, final)
            if self.durable:
                doing, where = "fsync the directory", final.parent
                faults.hit("publish.dirfsync", final.parent)
                _fsync_dir(final.parent)
        except OSError as exc:
            raise storage_error(exc, doing, where) from exc

    @contextlib.contextmanager
    def staging(self, suffix: str) -> Iterator[Path]:
        """Yield a unique temporary path under ``tmp/``; remove it on exit if left."""
        tmp = self.tmp / f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex}{suffix}"
        try:
            yield tmp
        finally:
            # Only a missing file (renamed, or never created) is expected; any
            # other failure to remove it (a read-only tmp/) must not replace
            # the error being raised, and `sweep` removes the file later.
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _seal(self, path: Path) -> None:
        if not path.is_file():
            raise StoreError(f"the backend wrote no file at {path}")
        try:
            if self.durable:
                faults.hit("publish.fsync", path)
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        except OSError as exc:
            raise storage_error(exc, "fsync", path) from exc

    def sweep(self) -> list[Path]:
        """Remove temporary files left by dead writers; return what was removed.

        A file from this host is stale when its writer's pid is gone; a file
        from another host (shared roots) when it is older than a day.
        """
        removed: list[Path] = []
        now = time.time()
        for entry in os.scandir(self.tmp):
            host, _, rest = entry.name.partition("-")
            pid_text = rest.partition("-")[0]
            if host == _HOST and pid_text.isdigit():
                stale = not _pid_alive(int(pid_text))
            else:
                stale = now - entry.stat().st_mtime > STALE_FOREIGN_SECONDS
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
        return removed

    def iter_files(self) -> Iterator[Path]:
        """Yield every file under ``objects/``."""
        for shard in sorted(self.objects.iterdir()):
            if shard.is_dir():
                yield from sorted(p for p in shard.iterdir() if p.is_file())


_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_error(exc: OSError, doing: str, path: str | os.PathLike[str]) -> StorageError:
    """Translate the filesystem error *exc* raised while *doing* something to *path*.

    ENOSPC and EDQUOT become
    :class:`StorageFullError`, anything else :class:`StorageError`. The
    result carries the original ``errno``; its message names the path.
    """
    code = exc.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else "no errno"
    reason = exc.strerror or str(exc)
    where = os.fspath(path)
    if code in _FULL:
        text = (f"cannot {doing} {where}: {reason} ({name}); the filesystem holding the "
                "store is full or over quota: free space, then retry (nothing was recorded)")
        return StorageFullError(code, text)
    text = (f"cannot {doing} {where}: {reason} ({name}); check that the store's directories "
            "exist and are writable by this user, then retry (nothing was recorded)")
    return StorageError(code, text) if code is not None else StorageError(text)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
