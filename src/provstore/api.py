"""``provstore.open``: the one door to a store."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .context import Context
from .errors import StoreError, StoreNotFoundError
from .fstype import check_sqlite_url
from .store import Store

__all__ = ["last_opened", "open"]

DEFAULT_LOCATION = ".provstore"
DB_NAME = "provstore.db"
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
        The location holds something that is not a provstore store, or the
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
    if db is None:
        db_path = loc / DB_NAME
        if not db_path.exists() and not create:
            raise StoreNotFoundError(f"no provstore store at {loc}; pass create=True to make one")
        url = f"sqlite:///{db_path}"
    else:
        url = db
        if not loc.exists() and not create:
            raise StoreNotFoundError(f"no object root at {loc}; pass create=True to make one")
    check_sqlite_url(url)  # SQLite on NFS/CIFS/Lustre... corrupts: refuse before creating it
    loc.mkdir(parents=True, exist_ok=True)
    store = _store_for(url, str(Path(root).expanduser().absolute() if root else loc), safe=safe,
                       durability=durability)
    # Every open sweeps debris of crashed writers, even when this process
    # already had the store open: listing tmp/ costs microseconds.
    store.objects.sweep()
    ctx = Context(store, (), mmap_mode=mmap_mode)
    _last[:] = [ctx]
    return ctx


def _store_for(url: str, root: str, *, safe: bool, durability: str = "normal") -> Store:
    # One Store per process and location: engines and caches are shared by
    # every Context on it, and a forked child builds its own.
    key = (url, root, safe, durability, os.getpid())
    with _lock:
        store = _stores.get(key)
        if store is None:
            lock_path = Path(root) / ".provstore.lock"
            store = Store(url, Path(root), safe=safe, durability=durability,
                          lock_path=lock_path)
            _stores[key] = store
        return store
