"""The store: one database plus one object root, and the rules tying them.

A save hashes the value, publishes its file (outside any transaction, so a
1 GB write never holds the database lock) and then commits the artifact row
and the binding row together in one transaction: ``BEGIN IMMEDIATE`` on
SQLite, and on PostgreSQL ``READ COMMITTED`` under an advisory lock on the
name (:func:`~provstore.db.engine.lock_for_write`). A crash
before the commit leaves at most an unreferenced object file, which ``gc``
removes; a crash after it loses nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import weakref
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import hashing
from .backends.base import Backend, registry
from .computelock import ComputeLock, lock_file
from .db import lite_sql
from .db.lite import SCHEMA_HEAD, Lite, Rows, Statement, readonly_reason
from .errors import (
    CorruptObjectError,
    DatabaseDamagedError,
    StorageError,
    StoreError,
    StoreNotFoundError,
    StoreVersionError,
    UnsafeLoadError,
)
from .fstype import sqlite_file
from .identity import CallMemo, IdentityMap, Known, rememberable
from .lazy import LazyModule
from .objects import ObjectDir
from .records import ArtifactRow, InputRecord, Prepared
from .runs import ReuseLog, RunRecorder, utcnow
from .scope import Segment, format_path

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy import Connection, Engine, Executable, Result
    from sqlalchemy import exc as sa_exc

    from .db import driver, schema
    from .db import engine as eng
    from .db import queries as q
    from .db.driver import Tx
    from .db.engine import Readers
else:
    # SQLAlchemy and the modules built on it are imported on first use: a
    # process that only gets hits from an SQLite store never needs them
    # (it reads through provstore.db.lite), and they cost it ~0.2 s.
    sa = LazyModule("sqlalchemy")
    sa_exc = LazyModule("sqlalchemy.exc")
    driver = LazyModule("provstore.db.driver")
    eng = LazyModule("provstore.db.engine")
    q = LazyModule("provstore.db.queries")
    schema = LazyModule("provstore.db.schema")

# records re-exported for callers
__all__ = [
    "ArtifactCollectedError", "ArtifactRow", "Prepared", "Store", "check_database_file",
    "commit_artifact", "object_count",
]


class ArtifactCollectedError(Exception):
    """Internal: ``gc`` deleted the stored copy a binding was linked to; prepare again."""


class Store:
    """A database and an object root, opened once per process and location.

    Users reach a store through :func:`provstore.open`, which returns a
    :class:`~provstore.context.Context`; this class is the engine room.
    """

    def __init__(self, url: str, root: Path, *, safe: bool = False, durability: str = "normal",
                 lock_path: Path | None = None, create: bool = True,
                 readonly: bool = False, exclusive: bool = False) -> None:
        self.url = url
        self.root = root
        self.safe = safe
        self.durability = durability
        path = sqlite_file(url)
        if path is not None:
            check_database_file(path, root, create=create)
        #: Why this process cannot write the store (None when it can): then
        #: the database is opened read-only and nothing is ever written.
        self.unwritable: str | None = None if path is None else readonly_reason(path)
        #: Opened with readonly=True, or unwritable: hits load, nothing is written.
        self.readonly = readonly or self.unwritable is not None
        self._engine: Engine | None = None
        self._readers: Readers | None = None
        self._engine_lock = threading.Lock()
        #: SQLite without SQLAlchemy, for what a process that only hits needs.
        self.lite = (None if path is None else
                     Lite(path, synchronous="FULL" if durability == "full" else "NORMAL",
                          readonly=self.unwritable is not None))
        #: Who computes calls here (SQLite): this process alone, or any with leases.
        self.computing = (None if path is None or self.readonly else
                          ComputeLock(lock_file(path), root))
        try:
            self._check_schema(create, lock_path)
            if exclusive:
                self.make_exclusive()
        except BaseException:
            self._dispose()
            raise
        self.file_identity: tuple[int, int] | None = None  # set by provstore.api
        try:
            self.objects = ObjectDir(root, durable=True)
        except OSError as exc:  # e.g. a read-only store copied without its tmp/
            self._dispose()
            raise StorageError(f"cannot use the object root {root}: {exc}") from exc
        self.runs = RunRecorder(lambda: self.engine, self.lite)
        self._scopes: dict[str, int] = {}
        self._artifacts: dict[int, ArtifactRow] = {}
        self._loaded: weakref.WeakValueDictionary[tuple[int, str | None], Any] = (
            weakref.WeakValueDictionary()
        )
        self.identity = IdentityMap()
        self._scalars: dict[int, Any] = {}  # immutable inline values by artifact id
        self.memo = CallMemo()
        self._lock = threading.Lock()
        self.reuse = ReuseLog(lambda: self.engine, self.runs, self.lite,
                              enabled=not self.readonly)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, created on first use (see :mod:`provstore.db.lite`)."""
        engine = self._engine
        if engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = eng.make_engine(self.url, durability=self.durability,
                                                   readonly=self.unwritable is not None)
                engine = self._engine
        return engine

    @property
    def readers(self) -> Readers:
        """One SQLAlchemy read connection per thread, created on first use."""
        readers = self._readers
        if readers is None:
            engine = self.engine
            with self._engine_lock:
                if self._readers is None:
                    self._readers = eng.Readers(engine)
                readers = self._readers
        return readers

    def make_exclusive(self) -> None:
        """Compute this store's calls alone, without compute leases (``exclusive=True``).

        Raises
        ------
        StoreError
            Not a writable SQLite store, or another process computes its calls.
        """
        if self.computing is None:
            why = ("it was opened read-only" if self.readonly else
                   f"its database {eng.display_url(self.url)} is a server database, whose "
                   "workers on other hosts no file lock can keep out")
            raise StoreError(f"cannot open the store {self.root} with exclusive=True: {why}; "
                             "open it without exclusive=True")
        self.computing.hold_exclusive()

    def _dispose(self) -> None:
        if self.computing is not None:
            self.computing.release()
        if self.lite is not None:
            self.lite.close_all()
        if self._readers is not None:
            self._readers.close_all()
        if self._engine is not None:
            self._engine.dispose()

    def _check_schema(self, create: bool, lock_path: Path | None) -> None:
        """Refuse what must not be opened; create or upgrade the schema when allowed."""
        if self.lite is not None:
            if self.lite.revision() == SCHEMA_HEAD:
                return  # the usual open: one row read, nothing else to check
            # One connection at a time: SQLite keeps a closed file's descriptor
            # open while other connections of the process lock the file.
            self.lite.close_all()
        url, root = self.url, self.root
        revision = schema.check_schema(self.engine)
        if revision is None:
            # An empty database next to object files is a lost database, not
            # a new store: a fresh schema would make every object an orphan.
            # Read again after counting: a process creating the store commits
            # its schema before it publishes any object.
            if object_count(root) and schema.check_schema(self.engine) is None:
                raise _database_lost(eng.display_url(url), "holds no provstore schema", root)
            if not create:
                raise StoreNotFoundError(
                    f"no provstore store at {root}: its database {eng.display_url(url)} is empty; "
                    "provstore.open() in Python creates a store")
        if revision == SCHEMA_HEAD:
            return
        if self.readonly:
            why = self.unwritable or "it was opened with readonly=True"
            raise StoreError(
                f"the store at {root} has schema version {revision or 'none'} and this "
                f"provstore reads {SCHEMA_HEAD}, but {why}, so it cannot be "
                "upgraded; open it once with write access, or use the provstore that wrote it")
        # An SQLite store belongs to its directory and is upgraded on
        # open; a server database is shared by every worker of a lab, so
        # changing its schema is an explicit step. Creating the schema in
        # an empty database changes nothing anyone relies on.
        if revision is not None and not eng.is_sqlite(url):
            raise StoreVersionError(
                f"the database {eng.display_url(url)} has schema version {revision} and this "
                f"provstore writes {SCHEMA_HEAD}; back it up, stop its workers, then run "
                f"`provstore --store {root} upgrade`"
            )
        schema.upgrade(self.engine, lock_path=lock_path)

    # ------------------------------------------------------------------ scopes
    def query(self, statement: Executable,
              params: dict[str, Any] | None = None) -> Result[Any]:
        """Execute one read statement on this thread's reader connection.

        The door through which provstore's own readers (lineage, maintenance)
        run their prebuilt statements of :mod:`provstore.db.queries`; it never
        writes (writes go through :func:`provstore.db.engine.write`).

        Parameters
        ----------
        statement : sqlalchemy.Executable
            A prebuilt read statement.
        params : dict, optional
            Its bound parameters.

        Returns
        -------
        sqlalchemy.Result
        """
        try:
            return self.readers.get().execute(statement, params or {})
        except sa_exc.DBAPIError as exc:
            self.readers.discard()
            lost = eng.lost_connection(self.engine, exc)
            if lost is not None:  # a server restart: the next read reconnects
                raise lost from exc
            raise
        except Exception:
            self.readers.discard()
            raise

    def scope_id(self, segments: tuple[Segment, ...], *, create: bool) -> int | None:
        """Return the id of the scope at *segments*, creating it when asked."""
        path = format_path(segments)
        cached = self._scopes.get(path)
        if cached is not None:
            return cached
        found = self.query(q.SCOPE_BY_PATH, {"path": path}).scalar()
        if found is None and create:
            found = eng.retrying(lambda: self._create_scopes(segments))
        if found is not None:
            self._scopes[path] = found
        return found

    def _create_scopes(self, segments: tuple[Segment, ...]) -> int:
        with eng.write(self.engine) as conn:
            # One creator at a time (PostgreSQL): two workers making "a/b"
            # and "a/c" would otherwise both insert "a". Rare: paths are cached.
            eng.lock_for_write(conn, "scopes")
            parent: int | None = None
            for depth in range(len(segments) + 1):
                path = format_path(segments[:depth])
                found = conn.execute(q.SCOPE_BY_PATH, {"path": path}).scalar()
                if found is None:
                    seg = segments[depth - 1] if depth else Segment("")
                    found = conn.execute(q.INSERT_SCOPE, {
                        "parent_id": parent, "segment": seg.text, "key": seg.key,
                        "value": seg.value_json, "path": path, "depth": depth,
                    }).scalar_one()
                parent = found
            assert parent is not None
            return parent

    def scope_path(self, scope_id: int) -> str:
        """Return the path of scope *scope_id*."""
        for path, sid in self._scopes.items():
            if sid == scope_id:
                return path
        found = self.query(sa.select(q.scopes.c.path).where(q.scopes.c.id == scope_id)).scalar()
        if found is None:
            raise StoreError(f"scope id {scope_id} does not exist")
        return str(found)

    def chain(self, segments: tuple[Segment, ...]) -> list[int]:
        """Return ids of the existing scopes from *segments* up to the root, innermost first."""
        ids = []
        for depth in range(len(segments), -1, -1):
            sid = self.scope_id(segments[:depth], create=False)
            if sid is not None:
                ids.append(sid)
        return ids

    # --------------------------------------------------------------- artifacts
    def artifact(self, artifact_id: int, conn: Connection | None = None) -> ArtifactRow:
        """Return the recorded artifact *artifact_id* (cached: artifacts are immutable)."""
        row = self._artifacts.get(artifact_id)
        if row is not None:
            return row
        if conn is None:
            rows = self._lite_read(lite_sql.ARTIFACT_BY_ID, {"id": artifact_id})
            found = rows.first() if rows is not None else None
            if found is None:  # not SQLite, or no such row: SQLAlchemy reads or explains
                found = self.query(q.ARTIFACT_BY_ID, {"id": artifact_id}).one()
        else:
            found = conn.execute(q.ARTIFACT_BY_ID, {"id": artifact_id}).one()
        row = ArtifactRow(
            id=found.id, digest=found.digest, format=found.format, suffix=found.suffix,
            size=found.size, file_digest=found.file_digest, inline=found.inline,
            meta=json.loads(found.meta), summary=json.loads(found.summary),
        )
        self._artifacts[artifact_id] = row
        return row

    def note_artifact(self, row: ArtifactRow) -> None:
        """Remember the row of an artifact this process just committed (rows never change)."""
        self._artifacts[row.id] = row

    def existing_artifact(self, digest: str, backend: Backend) -> int | None:
        """The id of the stored artifact with *digest* in *backend*'s format, if its file is there.

        A row whose file was lost does not count: the caller publishes the
        file again and the row stays valid.
        """
        found = self.query(q.ARTIFACT_BY_DIGEST, {
            "algorithm": hashing.ALGORITHM, "digest": digest, "format": backend.name,
        }).first()
        if found is None:
            return None
        if found.inline is None and not self.objects.exists(digest, found.suffix):
            return None
        return int(found.id)

    def ingested_file(self, path: str, size: int, mtime_ns: int, inode: int) -> int | None:
        """The artifact a file with this path and stat was ingested as, if any (git's index)."""
        found = self.query(q.FILE_BY_STAT, {
            "path": path, "size": size, "mtime_ns": mtime_ns, "inode": inode,
        }).first()
        return None if found is None or found.artifact_id is None else int(found.artifact_id)

    # ---------------------------------------------------------------- bindings
    def bind(self, scope_id: int, name: str, prepared: Prepared | None, *,
             origin: str | None = None) -> tuple[int, int | None]:
        """Commit the artifact row (if new) and a new version of (scope, name).

        ``prepared=None`` records a deletion (a tombstone). Binding the value
        the name already holds adds no version (a rerun of a script changes
        nothing). Returns the version number and the artifact id.
        """
        self.check_writable(f"bind {name!r}")
        run_id = self.runs.run_id()

        def transaction() -> tuple[int, int | None]:
            now = utcnow()
            with eng.write(self.engine) as conn:
                # Binds of one name take turns (PostgreSQL): the current
                # version and the next number below see every earlier bind.
                eng.lock_for_write(conn, f"binding {scope_id} {name}")
                artifact_id = None
                if prepared is not None:
                    artifact_id, _ = commit_artifact(driver.as_tx(conn), prepared, run_id, now)
                version = conn.execute(q.INSERT_BINDING, {
                    "p_scope_id": scope_id, "p_name": name, "p_artifact_id": artifact_id,
                    "p_created": now, "p_run_id": run_id, "p_origin": origin,
                    "p_call_id": prepared.call_id if prepared is not None else None,
                }).scalar()
                if version is None:  # the same value: no new version
                    version = conn.execute(q.HEAD, {"scope_id": scope_id,
                                                    "name": name}).one().version
            return int(version), artifact_id

        try:
            return eng.retrying(transaction)
        except sa_exc.IntegrityError:
            if prepared is not None and self.collected([prepared]):
                raise ArtifactCollectedError(prepared.digest) from None
            raise

    def collected(self, prepared: list[Prepared]) -> bool:
        """Whether ``gc`` deleted an artifact row that *prepared* links to.

        A value this process loaded (or a call returned) is linked to its
        stored row without hashing or writing it again; ``gc --keep-versions``
        may delete that row meanwhile, and the commit then breaks a foreign
        key. Forget every such link, so that preparing the value again
        stores it afresh.
        """
        ids = [p.existing_id for p in prepared if p.existing_id is not None]
        gone = any(self.query(q.ARTIFACT_BY_ID, {"id": i}).first() is None for i in ids)
        # gc --keep-calls may also have deleted the call a loaded value came from.
        calls = {p.call_id for p in prepared if p.call_id is not None}
        gone = gone or any(self.query(sa.select(q.calls.c.id).where(q.calls.c.id == c)).first()
                           is None for c in calls)
        if gone:
            self.identity.clear()
            for i in ids:
                self._artifacts.pop(i, None)
        return gone

    def relinked(self, inputs: list[InputRecord]) -> list[InputRecord]:
        """*inputs*, with links to artifacts ``gc`` deleted meanwhile dropped.

        A call's argument is linked to the stored artifact this process
        knew it as; the commit links an unlinked one by its digest again.
        """
        ids = {i.artifact_id for i in inputs if i.artifact_id is not None}
        gone = {a for a in ids if self.query(q.ARTIFACT_BY_ID, {"id": a}).first() is None}
        if not gone:
            return inputs
        self.identity.clear()
        return [replace(i, artifact_id=None) if i.artifact_id in gone else i for i in inputs]

    def resolve(self, chain: list[int], name: str) -> tuple[int, int] | None:
        """Return (scope_id, artifact_id) of *name*'s current binding, innermost first."""
        if not chain:
            return None
        rows = self.query(q.HEADS_FOR_NAME, {"name": name, "chain": chain}).all()
        current = {r.scope_id: r.artifact_id for r in rows}
        for sid in chain:
            artifact_id = current.get(sid)
            if artifact_id is not None:
                return sid, int(artifact_id)
        return None

    def visible_names(self, chain: list[int]) -> dict[str, int]:
        """Return name → scope id for every name visible from the innermost scope."""
        if not chain:
            return {}
        rows = self.query(q.HEADS_IN_SCOPES, {"chain": chain}).all()
        order = {sid: i for i, sid in enumerate(chain)}
        # Walk outermost to innermost; a deletion in an inner scope unshadows
        # the enclosing binding.
        result: dict[str, int] = {}
        for r in sorted(rows, key=lambda r: order[r.scope_id], reverse=True):
            if r.artifact_id is not None:
                result[r.name] = r.scope_id
            elif result.get(r.name) == r.scope_id:
                del result[r.name]
        return dict(sorted(result.items()))

    # ------------------------------------------------------------------ loads
    def load(self, artifact_id: int, *, mmap_mode: str | None, verify: bool = False,
             where: str = "", options: dict[str, Any] | None = None,
             call_id: int | None = None) -> Any:
        """Load artifact *artifact_id*.

        Only values that cannot be changed in place unnoticed (read-only
        arrays, checked nibabel images, immutable scalars) come back as the
        same object while it is alive; a DataFrame, dict, list, writable or
        object array is decoded afresh for every load, so mutating what one
        load returned never changes what the next returns.
        """
        cache_key = (artifact_id, mmap_mode)
        if not verify and not options:
            cached = self._cached(artifact_id, cache_key)
            if cached is not None:
                row = self.artifact(artifact_id)
                if row.inline is not None:
                    self.identity.note_output(row.digest, call_id, artifact_id)
                elif call_id is not None:  # a tracked call's output: link it to the call
                    self.identity.remember(cached, Known(artifact_id, row.digest, call_id))
                return cached
        row = self.artifact(artifact_id)
        value = self._read(row, mmap_mode, verify, where, options)
        if options:  # views opened with loader options are the caller's own
            return value
        if row.inline is not None:
            self.identity.note_output(row.digest, call_id, artifact_id)
        if rememberable(value):
            self._loaded[cache_key] = value
        elif type(value) in (int, float, str, bool, bytes) and len(self._scalars) < 65536:
            self._scalars[artifact_id] = value  # immutable: cached strongly
        self.identity.remember(value, Known(artifact_id, row.digest, call_id))
        return value

    def _cached(self, artifact_id: int, cache_key: tuple[int, str | None]) -> Any:
        cached = self._loaded.get(cache_key)
        if cached is not None and self.identity.known(cached) is None:
            return None  # a nibabel header or affine was edited: read it again
        return cached if cached is not None else self._scalars.get(artifact_id)

    def _read(self, row: ArtifactRow, mmap_mode: str | None, verify: bool, where: str,
              options: dict[str, Any] | None) -> Any:
        """Decode one artifact: the only path from stored bytes to a value.

        The safety check lives here so that no load option can go around it.
        """
        backend = registry.get(row.format)
        if backend.unsafe and self.safe:
            raise UnsafeLoadError(
                f"{where} is stored as {row.format}, and loading it would unpickle; "
                "the store was opened with safe=True. Reopen with safe=False if you trust it"
            )
        if row.inline is not None:
            value = backend.decode(row.inline, row.meta)
            # An inline value has no file to re-hash: its decoded value is
            # keyed again, as when it was stored.
            if verify and (len(row.inline) != row.size or hashing.digest(value) != row.digest):
                raise CorruptObjectError(
                    f"{where}: its value kept in the database (artifact {row.id}) was changed "
                    "after it was stored: it no longer matches its recorded digest; rebind "
                    "the name from its source")
            return value
        path = self.objects.path(row.digest, row.suffix)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise CorruptObjectError(
                f"{where}: object file {self.objects.relative(row.digest, row.suffix)} is "
                "missing: it was deleted or moved outside provstore; rebind the name"
            ) from exc
        if size != row.size or (verify and hashing.file_digest(path) != row.file_digest):
            raise CorruptObjectError(
                f"{where}: object file {self.objects.relative(row.digest, row.suffix)} was "
                "changed or truncated after it was stored; rebind the name from its source"
            )
        mode = mmap_mode if backend.supports_mmap else None
        options = dict(options or {})
        if backend.checks_trust:  # set last: a caller's option cannot turn the check off
            options["safe"] = self.safe
        if backend.reads_objects:  # a container's elements are object files of their own
            options.update(objects=self.objects, verify=verify)
        try:
            return backend.load(path, row.meta, mmap_mode=mode, **options)
        except CorruptObjectError as exc:
            raise CorruptObjectError(f"{where}: {exc}") from exc

    # ----------------------------------------------------------------- history
    def versions(self, scope_id: int, name: str) -> list[Any]:
        """Return every version row of (scope, name), oldest first, with artifact and run."""
        return list(self.query(q.VERSIONS, {"scope_id": scope_id, "name": name}).all())

    def bound_scopes(self, chain: list[int], name: str) -> list[int]:
        """Return the scopes of *chain* holding any version of *name*, innermost first."""
        found = set(self.query(q.SCOPES_WITH_NAME, {"name": name, "chain": chain}).scalars())
        return [sid for sid in chain if sid in found]

    def child_scopes(self, scope_id: int | None, *, recursive: bool) -> list[str]:
        """Return the paths of the scopes below *scope_id*."""
        if scope_id is None:
            return []
        base = self.query(sa.select(q.scopes.c.path).where(q.scopes.c.id == scope_id)).scalar()
        if recursive:
            prefix = f"{base}/" if base else ""
            stmt = sa.select(q.scopes.c.path).where(
                q.scopes.c.path.startswith(prefix, autoescape=True), q.scopes.c.id != scope_id
            )
        else:
            stmt = sa.select(q.scopes.c.path).where(q.scopes.c.parent_id == scope_id)
        return sorted(self.query(stmt).scalars())

    def current_below(self, scope_id: int, path: str, *, recursive: bool, name: str | None,
                      function: str | None) -> list[Any]:
        """Current bindings at *scope_id* (``path``) and below it, for sweeps.

        With ``recursive=False`` only the scope and its direct children;
        *name* and *function* (``module:qualname``), when given, filter.
        """
        prefix = f"{path}/" if path else ""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return list(self.query(q.CURRENT_BELOW, {
            "scope_id": scope_id,
            "parent_id": None if recursive else scope_id,
            "pattern": escaped + "%" if recursive else None,
            "name": name,
            "function": function,
        }).all())

    # ------------------------------------------------------------------ calls
    def _lite_read(self, stmt: Statement, params: dict[str, Any]) -> Rows | None:
        """Read *stmt* without SQLAlchemy on SQLite; None: read it through :meth:`query`."""
        return None if self.lite is None else self.lite.read(stmt, params)

    def finished_call(self, key: str) -> int | None:
        """Return the newest finished call with *key*, if any."""
        rows = self._lite_read(lite_sql.FINISHED_CALL, {"key": key})
        found = (rows.scalar() if rows is not None else
                 self.query(q.FINISHED_CALL, {"key": key}).scalar())
        return None if found is None else int(found)

    def call_outputs(self, call_id: int) -> list[tuple[str, int, int]]:
        """Return ``(output_kind, position, artifact_id)`` rows of a call, in order."""
        found = self._lite_read(lite_sql.CALL_OUTPUTS, {"call_id": call_id})
        rows = found.rows if found is not None else self.query(
            q.CALL_OUTPUTS, {"call_id": call_id}).all()
        return [(r.output_kind, r.position, r.artifact_id) for r in rows]

    def load_output(self, artifact_id: int, call_id: int, *, computed: Any = None) -> Any:
        """Return an output of *call_id*: the stored value, or the computed one.

        Memory-mappable outputs (arrays, NIfTI) are always loaded from the
        store: read-only, so a hit and a miss return alike and the object can
        stand for its artifact. Others come back as computed, when available:
        that object is the caller's own, never cached here, so mutating it
        changes no later load.
        """
        row = self.artifact(artifact_id)
        if computed is not None and not registry.get(row.format).supports_mmap:
            return computed
        return self.load(artifact_id, mmap_mode="r", call_id=call_id)

    def forget_calls(self, function: str) -> int:
        """Make the finished calls of *function* stop being hits; return how many.

        Their rows, outputs and lineage stay (status ``forgotten``): history
        still tells how each result was made, and ``gc`` may reclaim them.
        """
        def transaction() -> int:
            with eng.write(self.engine) as conn:
                return int(conn.execute(q.FORGET_CALLS, {"p_function": function}).rowcount)

        forgotten = eng.retrying(transaction)
        self.memo.forget_keys()
        return forgotten

    # ------------------------------------------------------------- reuse
    def check_writable(self, what: str) -> None:
        """Raise when the store is read-only (opened so, or not writable by this user)."""
        if self.unwritable is not None:
            raise StoreError(f"cannot {what}: the store {self.root} is read-only here "
                             f"({self.unwritable})")
        if self.readonly:
            raise StoreError(
                f"cannot {what}: the store {self.root} was opened with readonly=True; "
                "open it without readonly= to write")

    def note_hit(self, call_id: int) -> None:
        """Count a reused call for this run and for ``gc --max-bytes`` (batched)."""
        self.reuse.note(call_id)

    def flush_hits(self) -> None:
        """Write ``last_hit`` of the calls hit since the last flush, in one UPDATE."""
        self.reuse.flush()

    def forget_if_collected(self, call_id: int) -> bool:
        """Whether ``gc`` deleted call *call_id*; if so, forget every remembered call.

        This process may remember a call (and its outputs) that a ``gc``
        elsewhere has dropped since; its hit then finds no rows or files.
        """
        if self.query(sa.select(q.calls.c.id).where(q.calls.c.id == call_id)).first() is not None:
            return False
        self.memo = CallMemo()
        self.identity.clear()
        return True

    def pin(self, scope_id: int, name: str) -> bool:
        """Pin (scope, name); return False when it was pinned already."""
        self.check_writable(f"pin {name!r}")

        def transaction() -> bool:
            with eng.write(self.engine) as conn:
                eng.lock_for_write(conn, f"pin {scope_id} {name}")  # gc waits: it reads pins
                if conn.execute(q.PIN_BY_NAME, {"scope_id": scope_id, "name": name}).first():
                    return False
                conn.execute(q.INSERT_PIN, {"scope_id": scope_id, "name": name,
                                            "created": utcnow()})
                return True

        return eng.retrying(transaction)

    def unpin(self, scope_id: int, name: str) -> bool:
        """Unpin (scope, name); return False when it was not pinned."""
        self.check_writable(f"unpin {name!r}")

        def transaction() -> bool:
            with eng.write(self.engine) as conn:
                eng.lock_for_write(conn, f"pin {scope_id} {name}")
                params = {"scope_id": scope_id, "name": name}
                return bool(conn.execute(q.DELETE_PIN, params).rowcount)

        return eng.retrying(transaction)

    def pins(self) -> list[Any]:
        """Every pin: ``path`` (of its scope), ``name``, ``created``."""
        return list(self.query(q.PINS).all())

    def close(self) -> None:
        """Release the database connections; harmless to repeat.

        The store stays usable: its next read or write connects again.
        """
        self.reuse.flush()
        self._dispose()


def object_count(root: Path, *, at_least: int = 1) -> int:
    """How many entries ``root/objects`` holds, counting no further than *at_least*."""
    found = 0
    try:
        shards = list(os.scandir(root / "objects"))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for shard in shards:
        if not shard.is_dir(follow_symlinks=False):
            found += 1
        else:
            with os.scandir(shard.path) as entries:
                found += sum(1 for _ in entries)
        if found >= at_least:
            break
    return found


def check_database_file(path: Path, root: Path, *, create: bool) -> None:
    """Refuse to open the SQLite file *path* when it is missing or empty but should not be.

    A database that is gone or truncated to nothing while ``root/objects``
    holds files was lost: making a new one there would turn every object
    into an orphan for ``gc`` to delete. Nothing is written.

    Raises
    ------
    DatabaseDamagedError
        The file is missing or empty and object files exist.
    StoreNotFoundError
        The file is missing or empty, and *create* is false.
    """
    size = _file_size(path)
    if size:
        return
    what = "is missing" if size is None else "is empty (0 bytes)"
    # Stat again after counting: a process creating the store writes the
    # file's first page (switching to WAL) before it publishes any object.
    if object_count(root) and not _file_size(path):
        raise _database_lost(str(path), what, root)
    if not create:
        raise StoreNotFoundError(
            f"no provstore store at {root}: its database {path} {what}; "
            "provstore.open() in Python creates a store")


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _database_lost(where: str, what: str, root: Path) -> DatabaseDamagedError:
    return DatabaseDamagedError(
        f"the store's database {where} {what}, but {root / 'objects'} holds object files: the "
        "database was lost or replaced, and provstore will not start a new one over them. "
        "Restore provstore.db (with its -wal file, if any) from a backup copy. Without a "
        "backup, move objects/ aside (for example to objects.lost) to start an empty store "
        "there; see docs/guarantees.md, 'Damaged or missing database'.")


def commit_artifact(tx: Tx, p: Prepared, run_id: int, now: dt.datetime) -> tuple[int, bool]:
    """Insert *p*'s artifact row (and file record) in the open write transaction *tx*.

    The one rule for binds and tracked calls. Returns the artifact id (the
    existing row's when one holds the same content in the same format) and
    whether this inserted the row.
    """
    artifact_id = p.existing_id
    inserted = False
    if artifact_id is None:
        row = {
            "algorithm": hashing.ALGORITHM, "digest": p.digest, "format": p.backend.name,
            "suffix": p.suffix, "size": p.size, "file_digest": p.file_digest,
            "inline": p.inline, "meta": p.meta_text(), "summary": p.summary_text(),
            "created": now, "run_id": run_id,
        }
        # Inserted unless the content is stored already (then no row comes
        # back): one statement for new content, which a commit mostly holds.
        # On PostgreSQL a concurrent writer storing the same new content under
        # another lock (a name, a call key) is waited for, and its row taken.
        artifact_id = tx.execute(q.insert_artifact_unless_found(tx.server), row).scalar()
        inserted = artifact_id is not None
        if artifact_id is None:
            artifact_id = tx.execute(q.ARTIFACT_BY_DIGEST, row).scalar_one()
    if p.file_record is not None:
        tx.execute(q.INSERT_FILE, {**p.file_record, "artifact_id": artifact_id, "seen": now})
    return int(artifact_id), inserted
