"""Garbage collection: orphan files and, with retention rules, old versions and calls."""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, delete, func, select, update

from ..db import queries as q
from ..db.engine import db_now, display_url, lock_out_writers, reading, retrying, write
from ..errors import DatabaseDamagedError, StoreError
from ..lineage import format_size
from ..runs import utcnow
from .common import (
    Progress,
    chunks,
    parse_moment,
    parse_size,
    scan_objects,
    tick,
    valid_object_name,
)
from .retention import (
    CONTAINER_MANIFESTS,
    Graph,
    Plan,
    Rules,
    plan,
    read_elements,
    read_graph,
)

if TYPE_CHECKING:
    from ..store import Store


# ----------------------------------------------------------------------- gc
@dataclass(frozen=True)
class Removal:
    """A file :func:`gc` removed (or would remove), relative to the store root."""

    path: str
    size: int
    reason: Literal["orphan", "unreferenced"]


@dataclass
class GcReport:
    """What :func:`gc` removed, or would remove in a dry run.

    ``rows`` counts the rows deleted per table; ``bytes`` the bytes freed
    (object files plus inline values); ``kept_bytes`` what the values still
    referenced afterwards take.
    """

    dry_run: bool
    grace_seconds: float
    keep_versions: int | None
    keep_calls: int | None = None
    older_than: dt.datetime | None = None
    max_bytes: int | None = None
    files: list[Removal] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    inline_bytes: int = 0
    kept_bytes: int = 0
    young: list[str] = field(default_factory=list)
    protected: int = 0
    restored: list[str] = field(default_factory=list)

    @property
    def bindings(self) -> int:
        """Binding versions deleted."""
        return self.rows.get("bindings", 0)

    @property
    def artifacts(self) -> int:
        """Artifact rows deleted."""
        return self.rows.get("artifacts", 0)

    @property
    def calls(self) -> int:
        """Call rows deleted."""
        return self.rows.get("calls", 0)

    @property
    def bytes(self) -> int:
        """Bytes freed: object files plus inline values."""
        return sum(f.size for f in self.files) + self.inline_bytes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {**asdict(self), "bytes": self.bytes, "bindings": self.bindings,
                "artifacts": self.artifacts, "calls": self.calls}

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        orphans = sum(f.reason == "orphan" for f in self.files)
        lines = [f"{verb} {orphans} orphan files, {self.bindings} old binding versions, "
                 f"{self.calls} calls, {self.artifacts} unreferenced artifacts "
                 f"({len(self.files) - orphans} files): {format_size(self.bytes)}",
                 f"{'would free' if self.dry_run else 'freed'} {format_size(self.bytes)}; "
                 f"the values kept take {format_size(self.kept_bytes)}"]
        rows = ", ".join(f"{t} {n}" for t, n in self.rows.items() if n)
        lines.append(f"rows {'to delete' if self.dry_run else 'deleted'}: {rows or 'none'}")
        if self.max_bytes is not None and self.kept_bytes > self.max_bytes:
            lines.append(f"the store still holds {format_size(self.kept_bytes)}, over the "
                         f"{format_size(self.max_bytes)} limit: the rest is pinned, bound "
                         "or in use")
        if self.young:
            lines.append(f"kept {len(self.young)} orphan files younger than "
                         f"{self.grace_seconds:g} s (possibly still being published)")
        if self.protected:
            lines.append(f"kept {self.protected} artifacts used by running calls")
        if self.restored:
            lines.append(f"kept {len(self.restored)} files a writer republished during gc")
        if self.dry_run and (self.files or any(self.rows.values())):
            lines.append("dry run: nothing was deleted (`provstore gc --apply` deletes)")
        return "\n".join(lines)


def gc(store: Store, *, dry_run: bool = True, grace_seconds: float = 3600.0,
       keep_versions: int | None = None, keep_calls: int | None = None,
       older_than: dt.datetime | dt.timedelta | str | None = None,
       max_bytes: int | str | None = None, progress: Progress | None = None,
       force: bool = False) -> GcReport:
    """Remove orphan object files and, with retention rules, old versions and calls.

    Without a rule, only what nothing references goes: orphan files, and
    artifacts no binding, call or ingested-file record names. Every rule
    keeps the current version of every name, every version of a pinned
    name (:meth:`provstore.Context.pin`), and all these were computed from
    (their calls, the calls' inputs, and upstream), and running calls.

    Parameters
    ----------
    store : Store
        ``ctx.store``.
    dry_run : bool
        Only report what would be removed (the default).
    grace_seconds : float
        Orphan files younger than this are kept: their rows may be about to
        commit. 0 is safe only while no process writes to the store.
    keep_versions : int, optional
        Keep the newest N versions of every (scope, name) and delete older
        ones (never the current one).
    keep_calls : int, optional
        Keep the newest N finished calls (and N failed attempts) of each
        function in each scope (the scope of the bindings made from them);
        drop the older ones with their inputs and outputs when nothing else
        needs them. Without any call rule every call stays, so memoized
        calls still hit.
    older_than : datetime, timedelta or str, optional
        Drop calls last used (hit, else finished) before this: a date
        (``"2026-01-31"``), an age (``"30d"``, ``"12h"``) or a timedelta.
        With ``keep_calls`` too, a call either rule keeps stays.
    max_bytes : int or str, optional
        Then drop the least recently used calls left (``calls.last_hit``,
        else when they finished) until the values still referenced take at
        most this many bytes (``"10G"``, ``"500MB"``). Pinned and current
        results are never dropped, even over the limit.
    progress : callable, optional
        ``progress(phase, done, total)``.
    force : bool
        Delete orphans even when the database does not account for the
        object directory (see Raises).

    Returns
    -------
    GcReport
        What was (or would be) freed: files, bytes and rows per table.

    Raises
    ------
    DatabaseDamagedError
        Without *force*, when the database names none of the object files
        old enough to delete, or fewer of them than it would delete as orphans
        (at least 20): it was lost, replaced or restored from an old copy, and
        those files may be all that is left. Nothing is deleted.
    """
    if keep_versions is not None and keep_versions < 1:
        raise ValueError(f"keep_versions must be at least 1, not {keep_versions}")
    if keep_calls is not None and keep_calls < 1:
        raise ValueError(f"keep_calls must be at least 1, not {keep_calls}")
    if grace_seconds < 0:
        raise ValueError(f"grace_seconds must be >= 0, not {grace_seconds}")
    if not dry_run:
        store.check_writable("collect garbage")
    cutoff = None if older_than is None else parse_moment(older_than, utcnow())
    limit = None if max_bytes is None else parse_size(max_bytes)
    rules = Rules(keep_versions, keep_calls, cutoff, limit)
    report = GcReport(dry_run, grace_seconds, keep_versions, keep_calls, cutoff, limit)
    store.flush_hits()  # this process's recent hits count as uses
    started = time.time()
    on_disk = scan_objects(store)  # before rows are read, as in verify
    if not force:
        refuse_unaccounted(store, on_disk, started - grace_seconds)
    if dry_run:
        with reading(store.engine) as conn:
            p = _plan(conn, report, rules)[1]
    else:
        p = retrying(lambda: _delete_rows(store, report, rules))
    doomed_paths = {store.objects.path(d, s): n for d, s, n in p.files}
    # Elements of dropped containers go like orphans, once old enough: a
    # writer about to commit another container naming one has just
    # republished it (saving.publish_element).
    elements = {store.objects.path(d, s) for d, s, _ in p.element_files}
    referenced = _referenced_paths(store) - set(doomed_paths) - elements
    victims: list[tuple[Path, Literal["orphan", "unreferenced"]]] = []
    for path, st in sorted(on_disk.items()):
        if path in doomed_paths:
            victims.append((path, "unreferenced"))
        elif path not in referenced:
            if started - st.st_mtime < grace_seconds:
                report.young.append(str(path.relative_to(store.root)))
            else:
                victims.append((path, "unreferenced" if path in elements else "orphan"))
    for done, (path, reason) in enumerate(victims, 1):
        rel = str(path.relative_to(store.root))
        if dry_run or _remove(store, path, on_disk[path]):
            report.files.append(Removal(rel, on_disk[path].st_size, reason))
        else:
            report.restored.append(rel)
        tick(progress, "checking files" if dry_run else "removing files", done, len(victims))
    return report


#: Orphans tolerated beyond the files the database names before gc stops;
#: crash debris is a handful of files, never most of the store.
ORPHAN_FLOOR = 20


def refuse_unaccounted(store: Store, on_disk: dict[Path, os.stat_result],
                       before: float) -> None:
    """Raise when the database does not account for the object files (git gc's rule).

    Orphans are the files without a row older than *before* (a timestamp),
    which gc would delete.
    """
    if not any(st.st_mtime <= before for st in on_disk.values()):
        return
    named = _referenced_paths(store)
    accounted = sum(p in named for p in on_disk)
    orphans = sum(p not in named and st.st_mtime <= before for p, st in on_disk.items())
    if orphans and (not accounted or (orphans > accounted and orphans >= ORPHAN_FLOOR)):
        raise DatabaseDamagedError(
            f"gc refused: the database {display_url(store.url)} names "
            f"{accounted} of the {len(on_disk)} files under {store.objects.objects}, and {orphans} "
            "would be deleted as orphans. The database may have been lost, replaced or "
            "restored from an old copy, and these files may be all that is left: restore "
            "the right provstore.db and run `provstore verify`. Nothing was deleted. If the "
            "files really are debris, `provstore gc --force` deletes them.")


def _plan(conn: Connection, report: GcReport, rules: Rules) -> tuple[Graph, Plan]:
    """Plan the row phase in *conn* and count it into *report*."""
    g = read_graph(conn, db_now(conn))
    p = plan(g, rules)
    report.protected = p.protected
    report.kept_bytes = p.kept_bytes
    report.inline_bytes = sum(g.artifacts[a].size for a in p.artifacts
                              if g.artifacts[a].is_inline)
    report.rows = {
        "bindings": len(p.bindings),
        "calls": len(p.calls),
        "call_inputs": sum(g.input_rows[c] for c in p.calls),
        "call_outputs": sum(len(g.outputs.get(c, ())) for c in p.calls),
        "artifacts": len(p.artifacts),
        "files": 0 if not p.artifacts else _count_file_rows(conn, p.artifacts),
        "code_versions": len(p.code_versions),
    }
    return g, p


def _count_file_rows(conn: Connection, artifacts: list[int]) -> int:
    f = q.files
    return sum(conn.execute(select(func.count()).select_from(f)
                            .where(f.c.artifact_id.in_(chunk))).scalar_one()
               for chunk in chunks(artifacts))


def _delete_rows(store: Store, report: GcReport, rules: Rules) -> Plan:
    # One BEGIN IMMEDIATE transaction (SQLite), or one holding the lock every
    # writer shares (PostgreSQL): no writer commits between the plan and the
    # deletions, so the plan stays exact.
    with write(store.engine) as conn:
        lock_out_writers(conn)
        _, p = _plan(conn, report, rules)
        # Children before parents: every foreign key stays satisfied.
        for chunk in chunks(p.bindings):
            conn.execute(delete(q.bindings).where(q.bindings.c.id.in_(chunk)))
        for chunk in chunks(p.calls):
            conn.execute(update(q.leases).where(q.leases.c.call_id.in_(chunk))
                         .values(call_id=None))
            conn.execute(delete(q.call_inputs).where(q.call_inputs.c.call_id.in_(chunk)))
            conn.execute(delete(q.call_outputs).where(q.call_outputs.c.call_id.in_(chunk)))
            conn.execute(delete(q.calls).where(q.calls.c.id.in_(chunk)))
        for chunk in chunks(p.artifacts):
            conn.execute(delete(q.files).where(q.files.c.artifact_id.in_(chunk)))
            conn.execute(delete(q.artifacts).where(q.artifacts.c.id.in_(chunk)))
        for chunk in chunks(p.code_versions):
            conn.execute(delete(q.code_versions).where(q.code_versions.c.id.in_(chunk)))
    return p


def _referenced_paths(store: Store) -> set[Path]:
    """Every object file a row names: artifacts' own files and containers' elements."""
    a = q.artifacts
    rows = store.query(select(a.c.digest, a.c.suffix).where(a.c.inline.is_(None)))
    named = [(r.digest, r.suffix) for r in rows]
    elements = read_elements(store.query(CONTAINER_MANIFESTS))
    named += [(d, s) for files in elements.values() for d, s, _ in files]
    return {store.objects.path(d, s) for d, s in named if valid_object_name(store, d, s)}


def _remove(store: Store, path: Path, seen: os.stat_result) -> bool:
    """Delete *path* unless a writer replaced it since the scan; return whether deleted."""
    try:
        with store.objects.staging("") as held:  # removed when the block exits
            try:
                os.rename(path, held)
            except FileNotFoundError:
                return True  # gone already (another gc)
            now = os.lstat(held)
            if (now.st_ino, now.st_mtime_ns) != (seen.st_ino, seen.st_mtime_ns):
                os.replace(held, path)  # republished meanwhile; its row may be committing now
                return False
    except OSError as exc:
        raise StoreError(f"gc cannot remove {path}: {exc}") from exc
    return True


