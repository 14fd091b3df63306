"""``provstore.open``: the one door to a store."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from sqlalchemy import URL, make_url

from .context import Context
from .db.engine import display_url
from .errors import StoreError, StoreNotFoundError
from .fstype import check_sqlite_url, sqlite_file
from .store import Store

__all__ = ["database_url", "last_opened", "open", "reopen_store"]

DEFAULT_LOCATION = ".provstore"
DB_NAME = "provstore.db"
# Written into a store directory opened with db=: later opens (other workers,
# the command line) find the database from the directory alone.
DB_POINTER = "provstore.url"
_stores: dict[tuple[str, str, bool, str, int], Store] = {}
_lock = threading.Lock()
_last: list[Context] = []


def last_opened() -> Context | None:
    """The root Context of the store this process opened most recently, if any.

    Still valid in a forked child: a Store reconnects, and opens its own run,
    when it finds itself in a new process.
    """
    return _last[-1] if _last else None


def open(
    location: str | os.PathLike[str] | None = None,
    *,
    db: str | None = None,
    root: str | os.PathLike[str] | None = None,
    mmap_mode: str | None = "r",
    safe: bool = False,
    create: bool = True,
    durability: str = "normal",
) -> Context:
    """Open (or create) a store and return a Context at its root scope.

    Parameters
    ----------
    location : path, optional
        The store directory: SQLite at ``location/provstore.db``, objects in
        ``location/objects``. Defaults to ``$PROVSTORE``, else ``.provstore``.
    db : str, optional
        A SQLAlchemy URL overriding the database (``postgresql+psycopg://...``).
        An empty server database gets provstore's schema. The URL, without
        its password, is recorded in ``location/provstore.url``, so later
        opens of the directory need no ``db=``; passwords come from
        ``~/.pgpass`` or ``$PGPASSWORD``.
    root : path, optional
        The object root, overriding ``location``.
    mmap_mode : {"r", "c", None}
        How ``.npy`` artifacts load: read-only memmaps by default; None copies
        into memory.
    safe : bool
        Refuse to unpickle anything (``UnsafeLoadError``) and never pickle
        automatically.
    create : bool
        Create the store when missing; otherwise raise ``StoreNotFoundError``.
    durability : {"normal", "full"}
        ``"normal"`` (SQLite ``synchronous=NORMAL`` in WAL mode) loses no
        committed transaction when a process dies; ``"full"`` also survives
        power loss, at the cost of an fsync per commit. Object files are
        always fsynced before their rows commit.

    Returns
    -------
    Context
        A view of the root scope.

    Raises
    ------
    StoreVersionError
        The store was written by a newer provstore.
    StoreError
        The location holds something that is not a provstore store, belongs
        to another database than *db*, or the
        SQLite database would live on a network filesystem (NFS, CIFS,
        Lustre...), where its locking is unreliable: keep the database local
        or use PostgreSQL.
    """
    if durability not in ("normal", "full"):
        raise ValueError(f"durability must be 'normal' or 'full', not {durability!r}")
    loc = Path(location or os.environ.get("PROVSTORE") or DEFAULT_LOCATION).expanduser().absolute()
    if loc.exists() and not loc.is_dir():
        raise StoreError(
            f"{loc} is a file; provstore.open() takes the store's directory "
            f"(the database is {DB_NAME} inside it)"
        )
    url = database_url(loc, db, create=create)
    check_sqlite_url(url)  # SQLite on NFS/CIFS/Lustre... corrupts: refuse before creating it
    loc.mkdir(parents=True, exist_ok=True)
    store = _store_for(url, str(Path(root).expanduser().absolute() if root else loc), safe=safe,
                       durability=durability)
    # Every open sweeps debris of crashed writers, even when this process
    # already had the store open: listing tmp/ costs microseconds.
    store.objects.sweep()
    if db is not None:
        _record_database(loc, db)
    ctx = Context(store, (), mmap_mode=mmap_mode)
    _last[:] = [ctx]
    return ctx


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
                raise StoreNotFoundError(
                    f"no provstore store at {loc}; pass create=True to make one")
            return f"sqlite:///{local}"
        if _missing_sqlite_file(recorded):
            raise StoreNotFoundError(
                f"{loc} records its database as {recorded}, which does not exist on this "
                f"host; pass db= the right URL, or fix {pointer}")
        return recorded
    if recorded is not None and _without_password(recorded) != _without_password(db):
        raise StoreError(
            f"{loc} belongs to the database {recorded}, not {display_url(db)}; open it "
            f"without db=, or use another directory for another database")
    if recorded is None and local.exists() and sqlite_file(db) != local:
        raise StoreError(
            f"{loc} holds an SQLite store ({DB_NAME}); use another directory for "
            f"{display_url(db)}")
    if not loc.exists() and not create:
        raise StoreNotFoundError(f"no object root at {loc}; pass create=True to make one")
    return db


def _without_password(url: str) -> str:
    u = make_url(url)  # (URL.set treats password=None as "unchanged")
    bare = URL.create(u.drivername, username=u.username, host=u.host, port=u.port,
                      database=u.database, query=u.query)
    return bare.render_as_string(hide_password=False)


def _missing_sqlite_file(url: str) -> bool:
    path = sqlite_file(url)
    return path is not None and not path.exists()


def _record_database(loc: Path, db: str) -> None:
    pointer = loc / DB_POINTER
    if pointer.is_file():
        return
    # Write-then-rename: a reader never sees half a URL.
    tmp = loc / f".{DB_POINTER}.{os.getpid()}.tmp"
    tmp.write_text(_without_password(db) + "\n")
    os.replace(tmp, pointer)


def reopen_store(url: str, root: str, safe: bool, durability: str) -> Store:
    """Open, in this process, the store a pickled Context names.

    Unlike :func:`open` it never creates anything: a worker whose machine
    lacks the store (an SQLite file on another host's disk, a root mounted
    elsewhere) must fail loudly rather than fill a private store of its own.
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
    return _store_for(url, root, safe=safe, durability=durability)


def _store_for(url: str, root: str, *, safe: bool, durability: str = "normal") -> Store:
    # One Store per process and location: engines and caches are shared by
    # every Context on it, and a forked child builds its own.
    key = (url, root, safe, durability, os.getpid())
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
                          lock_path=lock_path)
            store.file_identity = _file_identity(url)
            _stores[key] = store
        return store


def _file_identity(url: str) -> tuple[int, int] | None:
    """(device, inode) of an SQLite database file; None for servers or a missing file."""
    path = sqlite_file(url)
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        return None
    return None if st is None else (st.st_dev, st.st_ino)
