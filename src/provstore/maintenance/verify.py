"""Re-hashing every object and checking every row."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from .. import hashing
from ..backends.base import registry
from ..backends.container import ElementFile, element_files
from ..db import queries as q
from ..db.engine import damaged, integrity_check, is_sqlite, reading
from ..errors import CorruptObjectError, DatabaseDamagedError
from ..fstype import sqlite_file

if TYPE_CHECKING:
    from ..store import Store


from .common import (
    Problem,
    ProblemKind,
    Progress,
    VerifyReport,
    bindings_of,
    calls_of,
    is_object_name,
    scan_objects,
    tick,
    valid_object_name,
)
from .retention import CONTAINER_MANIFESTS


# ------------------------------------------------------------------- verify
def verify(store: Store, *, progress: Progress | None = None) -> VerifyReport:
    """Check every object file and row of *store*.

    Every file's bytes are hashed and compared with ``artifacts.file_digest``
    and ``size``. Inline values are decoded and keyed again, and compared
    with their recorded digest. Files under ``objects/`` that have no row are
    listed. On SQLite, ``PRAGMA integrity_check`` and
    ``PRAGMA foreign_key_check`` also run.

    Parameters
    ----------
    store : Store
        ``ctx.store``.
    progress : callable, optional
        ``progress(phase, done, total)``.

    Returns
    -------
    VerifyReport
        Each damaged artifact lists the bindings and calls it affects.

    Raises
    ------
    DatabaseDamagedError
        The SQLite database is too damaged to read its rows: nothing could be
        checked. The message carries ``PRAGMA integrity_check``'s findings.
    """
    try:
        return _verify(store, progress)
    except DatabaseDamagedError as exc:
        path = sqlite_file(store.url)
        if path is None:
            raise
        cause = exc.__cause__ if exc.__cause__ is not None else str(exc)
        raise damaged(path, cause, integrity_check(path)) from exc


def _verify(store: Store, progress: Progress | None) -> VerifyReport:
    report = VerifyReport()
    # Listed before rows are read: a file committed meanwhile has both.
    on_disk = scan_objects(store)
    a = q.artifacts
    with reading(store.engine) as conn:
        rows = conn.execute(select(a.c.id, a.c.digest, a.c.suffix, a.c.size, a.c.file_digest,
                                   a.c.format, a.c.inline.is_not(None).label("is_inline"))
                            .order_by(a.c.digest)).all()
        manifests = conn.execute(CONTAINER_MANIFESTS).all()
    files = [r for r in rows if not r.is_inline]
    # Hashing runs outside any connection: on a server database a long-open
    # transaction would hold back vacuum for as long as the disk takes.
    for done, r in enumerate(files, 1):
        problem = _check_file(store, r, report)
        if problem is not None:
            report.problems.append(problem)
        tick(progress, "hashing objects", done, len(files))
    element_paths = _check_elements(store, manifests, report, progress)
    with reading(store.engine) as conn:
        _check_inline(store, conn, report, progress, len(rows) - len(files))
        if is_sqlite(store.url):
            report.problems += _sqlite_checks(conn)
    expected = {store.objects.path(r.digest, r.suffix) for r in files
                if valid_object_name(store, r.digest, r.suffix)} | element_paths
    for path in sorted(set(on_disk) - expected):
        report.problems.append(_unreferenced(store, path))
    _annotate(store, report)
    return report


def _check_file(store: Store, r: Any, report: VerifyReport) -> Problem | None:
    where = f"artifact {r.id} ({r.format})"
    if not valid_object_name(store, r.digest, r.suffix):
        return Problem("database", f"{where} has an invalid digest or suffix", None, r.id)
    path = store.objects.path(r.digest, r.suffix)
    rel = store.objects.relative(r.digest, r.suffix)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Problem("missing", f"{rel} is missing ({where})", rel, r.id)
    if not stat.S_ISREG(st.st_mode):
        return Problem("missing", f"{rel} is not a regular file ({where})", rel, r.id)
    report.objects += 1
    report.bytes += st.st_size
    if st.st_size != r.size:
        how = "truncated" if st.st_size < r.size else "has bytes appended"
        return Problem("size", f"{rel} {how}: {st.st_size} bytes, recorded {r.size} ({where})",
                       rel, r.id)
    if r.file_digest is None or hashing.file_digest(path) != r.file_digest:
        return Problem("hash", f"{rel} changed: its bytes no longer match the recorded hash "
                       f"({where})", rel, r.id)
    return None


def _check_elements(store: Store, containers: Sequence[Any], report: VerifyReport,
                    progress: Progress | None) -> set[Path]:
    """Check the element files of every container; return their paths.

    A file shared by several containers is hashed once, and a problem is
    reported for each container naming it (with its own bindings).
    """
    seen: dict[Path, tuple[ProblemKind, str] | None] = {}
    for done, r in enumerate(containers, 1):
        try:
            files = element_files(json.loads(r.meta))
        except (CorruptObjectError, ValueError) as exc:
            report.problems.append(Problem("database", f"artifact {r.id} (container): its "
                                           f"manifest is damaged ({exc})", None, r.id))
            continue
        for f in files:
            if not valid_object_name(store, f.digest, f.suffix):
                report.problems.append(Problem("database", f"element {f.where} of artifact "
                                               f"{r.id} (container) has an invalid name",
                                               None, r.id))
                continue
            path = store.objects.path(f.digest, f.suffix)
            if path not in seen:
                seen[path] = _element_problem(store, path, f, report)
            found = seen[path]
            if found is not None:
                rel = store.objects.relative(f.digest, f.suffix)
                report.problems.append(Problem(
                    found[0], f"{rel} {found[1]} (element {f.where} of artifact {r.id}, "
                    "container)", rel, r.id))
        tick(progress, "hashing container elements", done, len(containers))
    return set(seen)


def _element_problem(store: Store, path: Path, f: ElementFile,
                     report: VerifyReport) -> tuple[ProblemKind, str] | None:
    """The kind of problem with one element file and what is wrong, or None when intact."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing", "is missing"
    if not stat.S_ISREG(st.st_mode):
        return "missing", "is not a regular file"
    report.objects += 1
    report.bytes += st.st_size
    if st.st_size != f.size:
        how = "truncated" if st.st_size < f.size else "has bytes appended"
        return "size", f"{how}: {st.st_size} bytes, recorded {f.size}"
    if hashing.file_digest(path) != f.digest:
        return "hash", "changed: its bytes no longer match the digest that names it"
    return None


def _check_inline(store: Store, conn: Connection, report: VerifyReport,
                  progress: Progress | None, total: int) -> None:
    a = q.artifacts
    stmt = select(a.c.id, a.c.format, a.c.size, a.c.inline, a.c.meta, a.c.digest,
                  a.c.algorithm).where(a.c.inline.is_not(None))
    for r in conn.execute(stmt):  # streamed: inline values may add up to gigabytes
        report.inline += 1
        problem = _inline_problem(store, r)
        if problem is not None:
            report.problems.append(Problem("inline", problem, None, r.id))
        tick(progress, "decoding inline values", report.inline, total)


def _inline_problem(store: Store, r: Any) -> str | None:
    """What is wrong with one inline value, or None: it decodes to what was keyed."""
    where = f"inline value of artifact {r.id} ({r.format})"
    try:
        backend = registry.get(r.format)
        if len(r.inline) != r.size:
            raise CorruptObjectError(f"{len(r.inline)} bytes, recorded {r.size}")
        if backend.unsafe and store.safe:  # safe mode never unpickles, even here
            return None
        value = backend.decode(r.inline, json.loads(r.meta))
    except Exception as exc:  # any failure to decode is what this check reports
        return f"{where} does not decode: {exc}"
    # Keyed by the algorithm it was stored with; a row of another (older)
    # scheme cannot be compared by this provstore.
    if r.algorithm == hashing.ALGORITHM and hashing.digest(value) != r.digest:
        return (f"{where} changed: it decodes, but no longer to the value that was stored "
                "(its digest differs from the recorded one)")
    return None


def _sqlite_checks(conn: Connection) -> list[Problem]:
    # Constant PRAGMA statements: no user text reaches the SQL.
    # integrity_check, not quick_check: it also finds indexes that disagree
    # with their tables, which quick_check skips.
    found = [Problem("database", f"integrity_check: {row[0]}")
             for row in conn.exec_driver_sql("PRAGMA integrity_check(100)").all()
             if row[0] != "ok"]
    found += [Problem("database", f"foreign_key_check: {row[0]} row {row[1]} points at a "
                      f"missing {row[2]} row")
              for row in conn.exec_driver_sql("PRAGMA foreign_key_check").all()]
    return found


def _unreferenced(store: Store, path: Path) -> Problem:
    rel = str(path.relative_to(store.root))
    if is_object_name(store, path):
        return Problem("orphan", f"{rel} has no row (left by an interrupted write; "
                       "`provstore gc` removes it)", rel)
    return Problem("stray", f"{rel} was not written by provstore", rel)


def _annotate(store: Store, report: VerifyReport) -> None:
    ids = {p.artifact_id for p in report.problems if p.artifact_id is not None}
    bindings, calls = bindings_of(store, ids), calls_of(store, ids)
    report.problems[:] = [
        p if p.artifact_id is None else Problem(
            p.kind, p.message, p.path, p.artifact_id,
            tuple(bindings.get(p.artifact_id, ())), tuple(calls.get(p.artifact_id, ())))
        for p in report.problems
    ]
