"""Refuse to put a SQLite database on a network or cluster filesystem.

SQLite in WAL mode keeps its write-ahead index in a shared-memory file
(``-shm``) that is ``mmap``-ed by every connection: that only works when all
processes run on one host, because network filesystems do not keep memory
maps coherent across clients. SQLite's locking also relies on POSIX advisory
locks (``fcntl``), which these filesystems implement partially, lazily or not
at all. The result is not an error but silent corruption or lost commits, so
:func:`check_local` refuses up front and points to the two safe layouts: the
database on a local disk with the object root on the shared filesystem, or
PostgreSQL.

Set ``PROVSTORE_ALLOW_NETWORK_SQLITE=1`` to skip the refusal when you know
your filesystem's locking is sound (e.g. a single NFS client with local
locks); provstore then warns once per process.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from .errors import StoreError

__all__ = [
    "ALLOW_ENV",
    "NETWORK_FILESYSTEMS",
    "check_local",
    "check_sqlite_url",
    "filesystem_type",
    "sqlite_directory",
    "sqlite_file",
]

ALLOW_ENV = "PROVSTORE_ALLOW_NETWORK_SQLITE"

#: Filesystem types (as in ``/proc/mounts``) on which SQLite is refused, and why.
#: Common to all: WAL needs shared memory on one host, and POSIX locks that
#: these filesystems do not provide reliably across clients.
NETWORK_FILESYSTEMS: dict[str, str] = {
    "nfs": "NFS v2/v3: locks go through a separate lock daemon (NLM), often broken or "
    "disabled; mmap is not coherent between clients",
    "nfs4": "NFS v4: byte-range locks are leased and may be lost on network hiccups; "
    "mmap is not coherent between clients",
    "cifs": "SMB/CIFS: POSIX locks are emulated (or mapped to mandatory Windows locks); "
    "client caching breaks shared memory",
    "smb3": "SMB3: same as cifs",
    "smbfs": "legacy SMB client: no POSIX locks at all",
    "lustre": "Lustre: flock/fcntl locks are off unless mounted with -o flock; "
    "mmap is not coherent between clients",
    "gpfs": "IBM Spectrum Scale (GPFS): shared-memory mmap is not coherent across nodes",
    "beegfs": "BeeGFS: POSIX locks are client-local unless tuneUseGlobalFileLocks is set",
    "glusterfs": "GlusterFS (FUSE): locks and mmap coherence depend on translators; "
    "known SQLite corruption",
    "fuse.sshfs": "SSHFS: no locks across clients, no shared-memory coherence",
    "ceph": "CephFS: mmap is not coherent between clients; locks are slow and "
    "may be lost on client eviction",
    "9p": "9P (VMs, WSL2 /mnt): no reliable locks, no coherent mmap",
}

_MOUNTS_FILES = ("/proc/self/mounts", "/proc/mounts")
_warned = False


def _unescape(field: str) -> str:
    r"""Undo the octal escapes of ``/proc/mounts`` (``\040`` space, ``\011`` tab, ...)."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        chunk = field[i + 1 : i + 4]
        if field[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _existing_parent(path: Path) -> Path:
    """The real path of ``path`` or of its nearest existing ancestor."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.resolve()


def _contains(mount: str, path: str) -> bool:
    if mount == "/":
        return True
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def filesystem_type(path: str | os.PathLike[str], mounts: str | os.PathLike[str] | None = None,
                    ) -> str:
    """The type of the filesystem holding ``path`` (``"ext4"``, ``"nfs4"``, ...).

    Parameters
    ----------
    path : path
        Any path; when it does not exist yet, its nearest existing parent is
        used (symlinks resolved).
    mounts : path, optional
        A file in ``/proc/mounts`` format to read instead of the system's
        (for tests).

    Returns
    -------
    str
        The ``fstype`` of the longest mount point containing the path, or
        ``"unknown"`` on systems without ``/proc/mounts`` or when it cannot be
        read.
    """
    if mounts is None:
        if not sys.platform.startswith("linux"):
            return "unknown"
        candidates: tuple[str | os.PathLike[str], ...] = _MOUNTS_FILES
    else:
        candidates = (mounts,)
    text = None
    for name in candidates:
        try:
            with open(name, encoding="utf-8", errors="surrogateescape") as fh:
                text = fh.read()
            break
        except OSError:
            continue
    if text is None:
        return "unknown"
    try:
        target = str(_existing_parent(Path(path)))
    except OSError:
        return "unknown"
    best, best_type = "", "unknown"
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount, fstype = _unescape(fields[1]), fields[2]
        # ">=" so a later mount on the same point (which hides the earlier) wins.
        if _contains(mount, target) and len(mount) >= len(best):
            best, best_type = mount, fstype
    return best_type


def check_local(path: str | os.PathLike[str]) -> None:
    """Raise unless ``path`` is on a filesystem where SQLite is safe.

    Parameters
    ----------
    path : path
        The directory that holds (or will hold) the SQLite database.

    Raises
    ------
    StoreError
        The filesystem is one of :data:`NETWORK_FILESYSTEMS` and
        ``PROVSTORE_ALLOW_NETWORK_SQLITE`` is not set to ``1``.

    Warns
    -----
    UserWarning
        Once per process, when the refusal is overridden by
        ``PROVSTORE_ALLOW_NETWORK_SQLITE=1``.
    """
    global _warned
    fstype = filesystem_type(path)
    if fstype not in NETWORK_FILESYSTEMS:
        return
    if os.environ.get(ALLOW_ENV) == "1":
        if not _warned:
            _warned = True
            warnings.warn(
                f"{path} is on a {fstype} filesystem; using SQLite there anyway because "
                f"{ALLOW_ENV}=1. Concurrent writers from several hosts can corrupt the "
                f"database.",
                stacklevel=3,
            )
        return
    raise StoreError(
        f"refusing to open a SQLite database in {path}: it is on a {fstype} filesystem "
        f"({NETWORK_FILESYSTEMS[fstype]}). SQLite's WAL needs shared memory on one host and "
        f"reliable POSIX locks. Keep the SQLite database on a local disk "
        f"(db='sqlite:////local/path/provstore.db' with root= on the shared filesystem) or "
        f"use PostgreSQL (db='postgresql+psycopg://...'). If you know this filesystem's "
        f"locking is sound, set {ALLOW_ENV}=1."
    )


def sqlite_file(url: str) -> Path | None:
    """The absolute path of the database file of a SQLite URL; None for other URLs.

    In-memory databases (``sqlite://``, ``:memory:``, ``mode=memory``) give
    None too. Relative paths are taken from the current directory, as SQLite
    does; ``file:`` URIs are understood.
    """
    if not url.startswith("sqlite"):
        return None
    plain = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if plain and not any(c in plain for c in "?%") and not plain.startswith("file:"):
        # What SQLAlchemy's URL parser returns for a plain path, without
        # importing it (~0.2 s of a short script's start and exit).
        database: str | None = plain
    else:
        from sqlalchemy.engine import make_url

        database = make_url(url).database
    if not database or database == ":memory:" or "mode=memory" in database:
        return None
    if database.startswith("file:"):
        database = database[len("file:"):].split("?", 1)[0]
        if database.startswith("//"):  # file://host/path: drop the (empty) authority
            database = "/" + database[2:].split("/", 1)[-1]
        if not database or database == ":memory:":
            return None
    return Path(database).expanduser().absolute()


def sqlite_directory(url: str) -> Path | None:
    """The directory of :func:`sqlite_file`; None for other URLs and in-memory databases."""
    path = sqlite_file(url)
    return None if path is None else path.parent


def check_sqlite_url(url: str) -> None:
    """:func:`check_local` on the directory of a SQLite URL's file; other URLs pass.

    Raises
    ------
    StoreError
        See :func:`check_local`.
    """
    directory = sqlite_directory(url)
    if directory is not None:
        check_local(directory)
