"""``provstore.open``: the one door to a store."""

from __future__ import annotations

import os
from pathlib import Path

from . import ambient
from .ambient import last_opened
from .context import Context
from .errors import StoreError, StoreNotFoundError
from .fstype import check_sqlite_url
from .locations import (
    DB_NAME,
    DEFAULT_LOCATION,
    database_url,
    enclosing_store,
    record_database,
    reopen_store,
    store_for,
)

__all__ = ["database_url", "last_opened", "open", "reopen_store"]


def open(
    location: str | os.PathLike[str] | None = None,
    *,
    db: str | None = None,
    root: str | os.PathLike[str] | None = None,
    mmap_mode: str | None = "r",
    safe: bool = False,
    create: bool = True,
    durability: str = "normal",
    readonly: bool = False,
    exclusive: bool = False,
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
        The object root, overriding ``location``; created when missing
        (with ``create=True``).
    mmap_mode : {"r", "c", None}
        How ``.npy`` artifacts load: read-only memmaps by default; None copies
        into memory.
    safe : bool
        Refuse to unpickle anything (``UnsafeLoadError``) and never pickle
        automatically.
    create : bool
        Create the store when missing; otherwise raise ``StoreNotFoundError``.
        Never creates a store inside another store's directory, nor a new
        database next to existing object files.
    durability : {"normal", "full"}
        ``"normal"`` (SQLite ``synchronous=NORMAL`` in WAL mode) loses no
        committed transaction when a process dies; ``"full"`` also survives
        power loss, at the cost of an fsync per commit. Object files are
        always fsynced before their rows commit.
    readonly : bool
        Open as a consumer that never writes: loads and tracked-call hits
        work; a tracked call that misses raises ``NotCachedError`` instead of
        computing, and binding, deleting or pinning raises ``StoreError``.
        Nothing is written, not even reuse times or a run record.
    exclusive : bool
        This process computes the store's tracked calls alone, without
        compute leases: a miss then skips the claim transaction before it
        computes (about a third of a tiny call's overhead). Other processes
        may still open the store, read it, load hits and bind names, but a
        tracked call that misses there raises ``StoreError`` until this
        process closes the store; opening with ``exclusive=True`` while
        another process computes calls raises ``StoreError`` too. SQLite
        stores only. A fork ends it: parent and child then compute with
        leases. See docs/parallel.md.

    Returns
    -------
    Context
        A view of the root scope.

    A store this user cannot write (an archive, a read-only mount) opens
    read-only: every read works, and a write raises ``StoreError``.

    Raises
    ------
    StoreVersionError
        The store was written by a newer provstore.
    DatabaseDamagedError
        The database is damaged, or it is missing or empty while ``objects/``
        holds files: restore it from a backup copy (see docs/guarantees.md).
    StoreError
        The location holds something that is not a provstore store, belongs
        to another database than *db*, or the
        SQLite database would live on a network filesystem (NFS, CIFS,
        Lustre...), where its locking is unreliable: keep the database local
        or use PostgreSQL; or *location* or *root* lies inside another store.
    """
    if durability not in ("normal", "full"):
        raise ValueError(f"durability must be 'normal' or 'full', not {durability!r}")
    loc = Path(location or os.environ.get("PROVSTORE") or DEFAULT_LOCATION).expanduser().absolute()
    if loc.exists() and not loc.is_dir():
        raise StoreError(
            f"{loc} is a file; provstore.open() takes the store's directory "
            f"(the database is {DB_NAME} inside it)"
        )
    objects_root = Path(root).expanduser().absolute() if root else loc
    _refuse_nested(loc, objects_root)
    url = database_url(loc, db, create=create)
    check_sqlite_url(url)  # SQLite on NFS/CIFS/Lustre... corrupts: refuse before creating it
    if not create and not objects_root.is_dir():
        raise StoreNotFoundError(f"the store's object root {objects_root} does not exist; "
                                 "pass create=True to make it")
    loc.mkdir(parents=True, exist_ok=True)
    objects_root.mkdir(parents=True, exist_ok=True)
    store = store_for(url, str(objects_root), safe=safe, durability=durability, create=create,
                      readonly=readonly, exclusive=exclusive)
    if not store.readonly:
        # Every open sweeps debris of crashed writers, even when this process
        # already had the store open: listing tmp/ costs microseconds.
        store.objects.sweep()
    if db is not None:
        record_database(loc, db)
    ctx = Context(store, (), mmap_mode=mmap_mode)
    ambient.opened(ctx)
    return ctx


def _refuse_nested(loc: Path, root: Path) -> None:
    for path in dict.fromkeys((loc, root)):
        outer = enclosing_store(path)
        if outer is not None:
            raise StoreError(
                f"{path} is inside the store {outer}: a store there would be damaged by "
                f"{outer}'s own maintenance (`gc` deletes files it does not know). Open "
                f"{outer} itself, with ctx.scope(...) to separate results, or put the new "
                "store in a directory of its own")


# provstore.Memory(location) and other services open stores through ambient.
ambient.set_opener(open)
