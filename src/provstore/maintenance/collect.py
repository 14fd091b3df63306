"""Garbage collection: orphan files and, on request, old versions."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, delete, func, select

from ..db import queries as q
from ..db.engine import db_now, display_url, retrying, write
from ..errors import DatabaseDamagedError, StoreError
from ..lineage import format_size

if TYPE_CHECKING:
    from ..store import Store


from .common import Progress, chunks, scan_objects, tick, valid_object_name


# ----------------------------------------------------------------------- gc
@dataclass(frozen=True)
class Removal:
    """A file :func:`gc` removed (or would remove), relative to the store root."""

    path: str
    size: int
    reason: Literal["orphan", "unreferenced"]


@dataclass
class GcReport:
    """What :func:`gc` removed, or would remove in a dry run."""

    dry_run: bool
    grace_seconds: float
    keep_versions: int | None
    files: list[Removal] = field(default_factory=list)
    bindings: int = 0
    artifacts: int = 0
    inline_bytes: int = 0
    young: list[str] = field(default_factory=list)
    protected: int = 0
    restored: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """Bytes freed: object files plus inline values."""
        return sum(f.size for f in self.files) + self.inline_bytes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {**asdict(self), "bytes": self.bytes}

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        orphans = [f for f in self.files if f.reason == "orphan"]
        lines = [f"{verb} {len(orphans)} orphan files, {self.bindings} old binding versions, "
                 f"{self.artifacts} unreferenced artifacts ({len(self.files) - len(orphans)} "
                 f"files): {format_size(self.bytes)}"]
        if self.young:
            lines.append(f"kept {len(self.young)} orphan files younger than "
                         f"{self.grace_seconds:g} s (possibly still being published)")
        if self.protected:
            lines.append(f"kept {self.protected} artifacts used by running calls")
        if self.restored:
            lines.append(f"kept {len(self.restored)} files a writer republished during gc")
        if self.dry_run and (self.files or self.bindings):
            lines.append("dry run: nothing was deleted (`provstore gc --apply` deletes)")
        return "\n".join(lines)


def gc(store: Store, *, dry_run: bool = True, grace_seconds: float = 3600.0,
       keep_versions: int | None = None, progress: Progress | None = None,
       force: bool = False) -> GcReport:
    """Remove orphan object files and, with a retention rule, old versions.

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
        ones (never the current one). Artifacts that then nothing references
        (no binding, call input or output, or ingested-file record) are
        deleted with their files. Call outputs stay, so memoized calls still hit.
    progress : callable, optional
        ``progress(phase, done, total)``.
    force : bool
        Delete orphans even when the database does not account for the
        object directory (see Raises).

    Returns
    -------
    GcReport

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
    if grace_seconds < 0:
        raise ValueError(f"grace_seconds must be >= 0, not {grace_seconds}")
    report = GcReport(dry_run, grace_seconds, keep_versions)
    started = time.time()
    on_disk = scan_objects(store)  # before rows are read, as in verify
    if not force:
        refuse_unaccounted(store, on_disk, started - grace_seconds)
    if dry_run:
        with store.engine.connect() as conn:
            doomed = _plan(conn, report, keep_versions)[1]
    else:
        doomed = retrying(lambda: _delete_rows(store, report, keep_versions))
    doomed_paths = {store.objects.path(d, s): n for d, s, n in doomed}
    referenced = _referenced_paths(store) - set(doomed_paths)
    victims: list[tuple[Path, Literal["orphan", "unreferenced"]]] = []
    for path, st in sorted(on_disk.items()):
        if path in doomed_paths:
            victims.append((path, "unreferenced"))
        elif path not in referenced:
            if started - st.st_mtime < grace_seconds:
                report.young.append(str(path.relative_to(store.root)))
            else:
                victims.append((path, "orphan"))
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


def _versions_to_prune(keep: int) -> Any:
    b, b2 = q.bindings, q.bindings.alias("gc_b2")
    latest = (select(func.max(b2.c.version))
              .where(b2.c.scope_id == b.c.scope_id, b2.c.name == b.c.name).scalar_subquery())
    return b.c.version <= latest - keep  # the current version is never below latest - keep


def _unreferenced_artifacts(keep: int | None) -> Any:
    a, b = q.artifacts, q.bindings
    kept = select(b.c.artifact_id).where(b.c.artifact_id.is_not(None))
    if keep is not None:
        kept = kept.where(~_versions_to_prune(keep))
    # NOT IN over subqueries: each is built once as an index; NULLs are filtered
    # out because one NULL would make every NOT IN false.
    return select(a.c.id, a.c.digest, a.c.suffix, a.c.size,
                  a.c.inline.is_not(None).label("is_inline")).where(
        a.c.id.not_in(kept),
        a.c.id.not_in(select(q.call_inputs.c.artifact_id).where(q.call_inputs.c.artifact_id.is_not(None))),
        a.c.id.not_in(select(q.call_outputs.c.artifact_id)),
        a.c.id.not_in(select(q.files.c.artifact_id).where(q.files.c.artifact_id.is_not(None))),
        a.c.id < select(func.max(a.c.id)).scalar_subquery(),
    )


def _live_call_artifacts(conn: Connection) -> set[int]:
    # A running call records its inputs only when it commits; until then its
    # params name the stored artifacts it was called with.
    rows = conn.execute(select(q.calls.c.params).join(q.leases, q.leases.c.call_id == q.calls.c.id)
                        .where(q.calls.c.status == "running", q.leases.c.expires > db_now(conn)))
    found: set[int] = set()
    for (params,) in rows:
        for value in json.loads(params or "{}").values():
            if isinstance(value, dict) and isinstance(value.get("artifact"), int):
                found.add(value["artifact"])
    return found


def _plan(conn: Connection, report: GcReport,
          keep: int | None) -> tuple[list[int], list[tuple[str, str, int]]]:
    """Count what the row phase deletes; return the artifact ids and their (digest, suffix,
    size) files that no other row names."""
    if keep is not None:
        report.bindings = conn.execute(select(func.count()).select_from(q.bindings)
                                       .where(_versions_to_prune(keep))).scalar_one()
    protected = _live_call_artifacts(conn)
    rows = conn.execute(_unreferenced_artifacts(keep)).all()
    report.protected = sum(r.id in protected for r in rows)
    rows = [r for r in rows if r.id not in protected]
    report.artifacts = len(rows)
    report.inline_bytes = sum(r.size for r in rows if r.is_inline)
    return [r.id for r in rows], _unshared_files(conn, rows)


def _delete_rows(store: Store, report: GcReport, keep: int | None) -> list[tuple[str, str, int]]:
    # One BEGIN IMMEDIATE transaction: no writer commits between the plan and
    # the deletions, so the plan stays exact.
    with write(store.engine) as conn:
        ids, doomed = _plan(conn, report, keep)
        if keep is not None:
            conn.execute(delete(q.bindings).where(_versions_to_prune(keep)))
        for chunk in chunks(ids):
            conn.execute(delete(q.artifacts).where(q.artifacts.c.id.in_(chunk)))
    return doomed


def _unshared_files(conn: Connection, rows: Sequence[Any]) -> list[tuple[str, str, int]]:
    """Files of *rows* that no other artifact row names (same digest, other format)."""
    ids = {r.id for r in rows}
    files = {(r.digest, r.suffix): r.size for r in rows if not r.is_inline}
    a = q.artifacts
    for chunk in chunks(d for d, _ in files):
        for r in conn.execute(select(a.c.id, a.c.digest, a.c.suffix).where(a.c.digest.in_(chunk))):
            if r.id not in ids:
                files.pop((r.digest, r.suffix), None)
    return [(d, s, n) for (d, s), n in files.items()]


def _referenced_paths(store: Store) -> set[Path]:
    a = q.artifacts
    rows = store.query(select(a.c.digest, a.c.suffix).where(a.c.inline.is_(None)))
    return {store.objects.path(r.digest, r.suffix) for r in rows
            if valid_object_name(store, r.digest, r.suffix)}


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


