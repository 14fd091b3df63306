"""Where a store lives, and one open Store per location per process.

A store is named by its directory. The directory holds the SQLite database
(``provstore.db``) or, for a server database, a pointer file
(``provstore.url``) recording its URL without the password, so that workers,
child processes and the command line open the directory alone. Opened stores
are kept in a per-process registry: every Context on one location shares one
engine and its caches, and a forked child builds its own.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from . import ambient
from .errors import StoreError, StoreNotFoundError
from .fstype import check_sqlite_url, sqlite_file
from .lazy import LazyModule
from .store import Store, check_database_file

if TYPE_CHECKING:
    import sqlalchemy as sa

    from .db import engine as eng
else:
    # URLs are parsed by SQLAlchemy only for a server database or db= (see
    # provstore.store for why it is imported late).
    sa = LazyModule("sqlalchemy")
    eng = LazyModule("provstore.db.engine")

__all__ = [
    "DB_NAME", "DB_POINTER", "DEFAULT_LOCATION", "StoreRef", "close", "database_url",
    "enclosing_store", "open_stores", "record_database", "reopen_store", "store_for",
]

DEFAULT_LOCATION = ".provstore"
DB_NAME = "provstore.db"
# Written into a store directory opened with db=: later opens (other workers,
# the command line) find the database from the directory alone.
DB_POINTER = "provstore.url"
_stores: dict[tuple[str, str, bool, str, bool, int], Store] = {}
_lock = threading.Lock()


def database_url(loc: Path, db: str | None, *, create: bool = True) -> str:
    """Return the database URL of the store directory *loc*.

    An explicit *db* must agree with the database the directory recorded:
    the objects of one directory are kept alive by one database's rows, and a
    second database's ``gc`` would delete them.
    """
    pointer = loc / DB_POINTER
    recorded = pointer.read_text().strip() if pointer.is_file() else None
    local = loc / DB_NAME
    if db is None:
        if recorded is None:
            if not local.exists() and not create:
                # A missing database next to object files is a lost one.
                check_database_file(local, loc, create=False)
            return f"sqlite:///{local}"
        if _missing_sqlite_file(recorded):
            raise StoreNotFoundError(
                f"{loc} records its database as {recorded}, which does not exist on this "
                f"host; pass db= the right URL, or fix {pointer}")
        return recorded
    if recorded is not None and _without_password(recorded) != _without_password(db):
        raise StoreError(
            f"{loc} belongs to the database {recorded}, not {eng.display_url(db)}; open it "
            f"without db=, or use another directory for another database")
    if recorded is None and local.exists() and sqlite_file(db) != local:
        raise StoreError(
            f"{loc} holds an SQLite store ({DB_NAME}); use another directory for "
            f"{eng.display_url(db)}")
    if not loc.exists() and not create:
        raise StoreNotFoundError(f"no object root at {loc}; pass create=True to make one")
    return db


def _without_password(url: str) -> str:
    u = sa.make_url(url)  # (URL.set treats password=None as "unchanged")
    bare = sa.URL.create(u.drivername, username=u.username, host=u.host, port=u.port,
                      database=u.database, query=u.query)
    return bare.render_as_string(hide_password=False)


def _missing_sqlite_file(url: str) -> bool:
    path = sqlite_file(url)
    return path is not None and not path.exists()


def record_database(loc: Path, db: str) -> None:
    """Write the pointer file naming *db* (without its password) into *loc*, once."""
    pointer = loc / DB_POINTER
    if pointer.is_file():
        return
    # Write-then-rename: a reader never sees half a URL.
    tmp = loc / f".{DB_POINTER}.{os.getpid()}.tmp"
    tmp.write_text(_without_password(db) + "\n")
    os.replace(tmp, pointer)


def reopen_store(url: str, root: str, safe: bool, durability: str,
                 readonly: bool = False) -> Store:
    """Open, in this process, the store a pickled Context names.

    Unlike :func:`provstore.open` it never creates anything: a worker whose
    machine lacks the store (an SQLite file on another host's disk, a root
    mounted elsewhere) must fail loudly rather than fill a private store.
    """
    if _missing_sqlite_file(url):
        raise StoreNotFoundError(
            f"the store {root} is not on {socket.gethostname()}: its SQLite database "
            f"{sqlite_file(url)} does not exist here. Workers on other machines need "
            "the store on a shared filesystem at the same path, with a PostgreSQL database "
            "(see docs/scaling-out.md)")
    if not (Path(root) / "objects").is_dir():
        # With a server database the rows would land in the shared database
        # and the files on this host's disk, unreadable by everyone else.
        raise StoreNotFoundError(
            f"the store's object directory {root}/objects does not exist on "
            f"{socket.gethostname()}; mount the shared store directory at the same path "
            "on every worker (see docs/scaling-out.md)")
    check_sqlite_url(url)
    return store_for(url, root, safe=safe, durability=durability, create=False,
                     readonly=readonly)


def store_for(url: str, root: str, *, safe: bool, durability: str = "normal",
              create: bool = True, readonly: bool = False, exclusive: bool = False) -> Store:
    """The one Store of this process for (*url*, *root*, options), opened on first use.

    With ``create=False`` an empty database is refused rather than given a schema.
    ``exclusive=True`` makes it compute alone (see :mod:`provstore.computelock`),
    also when this process had it open already.
    """
    key = (url, root, safe, durability, readonly, os.getpid())
    with _lock:
        store = _stores.get(key)
        if store is not None and store.file_identity != _file_identity(url):
            # The SQLite file was deleted or replaced (a store removed and made
            # anew at the same path): a long-lived worker must not keep
            # writing into the unlinked file.
            store.close()
            store = None
        if store is None:
            lock_path = Path(root) / ".provstore.lock"
            store = Store(url, Path(root), safe=safe, durability=durability,
                          lock_path=lock_path, create=create, readonly=readonly,
                          exclusive=exclusive)
            store.file_identity = _file_identity(url)
            _stores[key] = store
        elif exclusive:
            store.make_exclusive()
        return store


def enclosing_store(path: Path) -> Path | None:
    """The store directory that *path* lies strictly inside, if any.

    A store directory is one holding ``objects/`` next to ``provstore.db`` or
    ``provstore.url``. A store made inside another one would be listed by
    the outer store's ``verify`` as stray files, and its database deleted by
    the outer store's ``gc``.
    """
    for parent in path.parents:
        if (parent / "objects").is_dir() and (
                (parent / DB_NAME).is_file() or (parent / DB_POINTER).is_file()):
            return parent
    return None


def open_stores() -> list[Store]:
    """The stores this process has open."""
    with _lock:
        return list(_stores.values())


def close(store: Store) -> None:
    """Close *store* and forget it: the next open of its location opens it anew."""
    with _lock:
        for key in [k for k, s in _stores.items() if s is store]:
            del _stores[key]
    store.close()
    last = ambient.last_opened()
    if last is not None and last.store is store:
        ambient.forget_last()


def _file_identity(url: str) -> tuple[int, int] | None:
    """(device, inode) of an SQLite database file; None for servers or a missing file."""
    path = sqlite_file(url)
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        return None
    return None if st is None else (st.st_dev, st.st_ino)


class StoreRef:
    """A store named by a pickled Context, opened in this process on first use."""

    __slots__ = ("args",)

    def __init__(self, url: str, root: str, safe: bool, durability: str,
                 readonly: bool = False) -> None:
        self.args = (url, root, safe, durability, readonly)

    def open(self) -> Store:
        """Open the store, which must exist: a worker never creates one."""
        return reopen_store(*self.args)
