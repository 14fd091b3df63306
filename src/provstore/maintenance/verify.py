"""Re-hashing every object and checking every row."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from .. import hashing
from ..backends.base import registry
from ..db import queries as q
from ..db.engine import is_sqlite
from ..errors import CorruptObjectError

if TYPE_CHECKING:
    from ..store import Store


from .common import (
    Problem,
    Progress,
    VerifyReport,
    bindings_of,
    calls_of,
    is_object_name,
    scan_objects,
    tick,
    valid_object_name,
)


# ------------------------------------------------------------------- verify
def verify(store: Store, *, progress: Progress | None = None) -> VerifyReport:
    """Check every object file and row of *store*.

    Every file's bytes are hashed and compared with ``artifacts.file_digest``
    and ``size``. Inline values are decoded. Files under ``objects/`` that
    have no row are listed. On SQLite, ``PRAGMA quick_check`` and
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
    """
    report = VerifyReport()
    # Listed before rows are read: a file committed meanwhile has both.
    on_disk = scan_objects(store)
    a = q.artifacts
    with store.engine.connect() as conn:
        rows = conn.execute(select(a.c.id, a.c.digest, a.c.suffix, a.c.size, a.c.file_digest,
                                   a.c.format, a.c.inline.is_not(None).label("is_inline"))
                            .order_by(a.c.digest)).all()
    files = [r for r in rows if not r.is_inline]
    # Hashing runs outside any connection: on a server database a long-open
    # transaction would hold back vacuum for as long as the disk takes.
    for done, r in enumerate(files, 1):
        problem = _check_file(store, r, report)
        if problem is not None:
            report.problems.append(problem)
        tick(progress, "hashing objects", done, len(files))
    with store.engine.connect() as conn:
        _check_inline(store, conn, report, progress, len(rows) - len(files))
        if is_sqlite(store.url):
            report.problems += _sqlite_checks(conn)
    expected = {store.objects.path(r.digest, r.suffix) for r in files
                if valid_object_name(store, r.digest, r.suffix)}
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


def _check_inline(store: Store, conn: Connection, report: VerifyReport,
                  progress: Progress | None, total: int) -> None:
    a = q.artifacts
    stmt = select(a.c.id, a.c.format, a.c.size, a.c.inline, a.c.meta).where(a.c.inline.is_not(None))
    for r in conn.execute(stmt):  # streamed: inline values may add up to gigabytes
        report.inline += 1
        where = f"inline value of artifact {r.id} ({r.format})"
        try:
            backend = registry.get(r.format)
            if len(r.inline) != r.size:
                raise CorruptObjectError(f"{len(r.inline)} bytes, recorded {r.size}")
            if not (backend.unsafe and store.safe):  # safe mode never unpickles, even here
                backend.decode(r.inline, json.loads(r.meta))
        except Exception as exc:  # any failure to decode is what this check reports
            report.problems.append(Problem("inline", f"{where} does not decode: {exc}",
                                           None, r.id))
        tick(progress, "decoding inline values", report.inline, total)


def _sqlite_checks(conn: Connection) -> list[Problem]:
    # Constant PRAGMA statements: no user text reaches the SQL.
    found = [Problem("database", f"quick_check: {row[0]}")
             for row in conn.exec_driver_sql("PRAGMA quick_check").all() if row[0] != "ok"]
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
