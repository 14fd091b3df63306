"""``provstore.File``: an input that is a file on disk."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .hashing import file_digest

__all__ = ["File", "FileStat"]

_cache: dict[tuple[str, int, int, int], str] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class FileStat:
    """What identifies a file's current content cheaply: path, size, mtime and inode."""

    path: str
    size: int
    mtime_ns: int
    inode: int

    @property
    def key(self) -> tuple[str, int, int, int]:
        """The cache key of the file's digest."""
        return (self.path, self.size, self.mtime_ns, self.inode)


class File(os.PathLike[str]):
    """A file used as an input: hashed by content, recorded with its path.

    Assigning a ``File`` to a name ingests it (``ctx.bold = File("bold.nii.gz")``)
    through the backend its extension selects; passing it to a tracked function
    keys the call on the file's content, not its name.

    Parameters
    ----------
    path : path-like
        The file. It must exist when the ``File`` is used.

    Notes
    -----
    The content digest (xxh3-128 of the bytes) is cached per process and in
    the store under (path, size, mtime, inode), like git's index: a file is
    re-read only when one of those changes.
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"File({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        """The file's name (``"sub-01_bold.nii.gz"``)."""
        return self.path.name

    def stat(self) -> FileStat:
        """Return the file's current identity (raises FileNotFoundError when missing)."""
        st = os.stat(self.path)
        return FileStat(str(self.path), st.st_size, st.st_mtime_ns, st.st_ino)

    def digest(self) -> str:
        """Return the xxh3-128 hex digest of the file's bytes (cached on stat)."""
        key = self.stat().key
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None:
            return cached
        value = file_digest(self.path)
        with _cache_lock:
            _cache[key] = value
        return value

    def __provstore_hash__(self) -> tuple[str, str]:
        # Keyed by content alone: moving or renaming a file keeps its calls' hits.
        return ("file", self.digest())
