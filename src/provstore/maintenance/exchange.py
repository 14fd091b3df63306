"""Bridging files and the store: which, export; and listing runs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import xxhash
from sqlalchemy import select

from .. import hashing
from ..backends.base import registry
from ..db import queries as q
from ..errors import CorruptObjectError, MissingKeyError, StoreError
from ..lineage import History
from ..runs import status_of
from ..store import Store
from .common import (
    BindingRef,
    bindings_of,
)


# -------------------------------------------------------------------- which
@dataclass(frozen=True)
class Match:
    """An artifact a file's content matches.

    ``how`` is ``bytes`` (the object file has these bytes), ``ingested`` (the
    artifact was ingested from a file with these bytes) or ``content`` (the
    file decodes to a value with the artifact's canonical digest).
    """

    artifact_id: int
    digest: str
    format: str
    how: str
    bindings: tuple[BindingRef, ...]
    files: tuple[str, ...] = ()


def which(store: Store, path: str | os.PathLike[str]) -> list[Match]:
    """Find the artifacts whose content is the file at *path*.

    Returns
    -------
    list of Match
        Empty when the content is not in the store.
    """
    byte_digest = hashing.file_digest(path)
    a, f = q.artifacts, q.files
    found: dict[int, tuple[str, list[str]]] = {}
    for r in store.query(select(a.c.id).where(a.c.file_digest == byte_digest)):
        found[r.id] = ("bytes", [])
    for r in store.query(select(f.c.artifact_id, f.c.path).where(
            f.c.digest == byte_digest, f.c.artifact_id.is_not(None))):
        found.setdefault(r.artifact_id, ("ingested", []))[1].append(r.path)
    if not found:
        value_digest = _content_digest(Path(path))
        if value_digest is not None:
            for r in store.query(select(a.c.id).where(
                    a.c.algorithm == hashing.ALGORITHM, a.c.digest == value_digest)):
                found[r.id] = ("content", [])
    bindings = bindings_of(store, found)
    matches = []
    for artifact_id, (how, paths) in sorted(found.items()):
        row = store.artifact(artifact_id)
        matches.append(Match(artifact_id, row.digest, row.format, how,
                             tuple(bindings.get(artifact_id, ())), tuple(sorted(set(paths)))))
    return matches


def _content_digest(path: Path) -> str | None:
    # Decoding through the backend finds values re-saved with other bytes (an
    # exported inline JSON value, an .npy written by another numpy). Formats
    # that could run code (pickle) and unknown files are never decoded.
    backend = registry.for_suffix(path.name)
    if backend.name == "raw" or backend.unsafe:
        return None
    try:
        value = backend.load(path, {}, mmap_mode="r" if backend.supports_mmap else None)
        return hashing.digest(value)
    except Exception:  # not a readable file of that format: no content match
        return None


# ------------------------------------------------------------------- export
class Named(Protocol):
    """What an export reads a name through: a Context."""

    @property
    def store(self) -> Store: ...

    def history(self, name: str) -> History: ...


def export(ctx: Named, name: str, dest: str | os.PathLike[str]) -> Path:
    """Copy the current value of *name* to *dest* in its standard format.

    The file's bytes are verified while copying. A JSON sidecar
    ``dest + ".provstore.json"`` records the lineage: name, scope, version,
    digests, format, creation, run, origin and producing call.
    :func:`which` on the exported file finds the artifact again.

    Returns
    -------
    Path
        The written file (inside *dest* when it is a directory).
    """
    h = ctx.history(name)
    v = h.latest
    if v.artifact_id is None:
        raise MissingKeyError(f"{v.path} was deleted (version {v.number}); nothing to export")
    row = ctx.store.artifact(v.artifact_id)
    suffix = row.suffix or (".json" if row.format == "json" else "")
    target = Path(dest)
    if target.is_dir():
        target = target / f"{v.name}{suffix}"
    if suffix and not target.name.lower().endswith(suffix):
        raise StoreError(f"{v.path} is stored as {row.format} ({suffix}); export it to a file "
                         f"name ending in {suffix}")
    partial = target.with_name(f".{target.name}.partial")
    try:
        if row.inline is not None:
            partial.write_bytes(row.inline)
        else:
            _copy_checked(ctx.store.objects.path(row.digest, row.suffix), partial,
                          row.file_digest, v.path)
        os.replace(partial, target)
        sidecar = target.with_name(target.name + ".provstore.json")
        sidecar.write_text(json.dumps(_lineage(ctx, h, row), indent=2, default=str) + "\n")
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise StoreError(f"cannot export {v.path} to {target}: {exc}") from exc
    return target


def _copy_checked(src: Path, dst: Path, expected: str | None, where: str) -> None:
    h = xxhash.xxh3_128()
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while chunk := fin.read(1 << 23):
                h.update(chunk)
                fout.write(chunk)
    except FileNotFoundError as exc:
        raise CorruptObjectError(f"{where}: its object file is missing; run `provstore "
                                 "verify`") from exc
    if h.hexdigest() != expected:
        dst.unlink(missing_ok=True)
        raise CorruptObjectError(f"{where}: its object file changed after it was stored; "
                                 "run `provstore verify`")


def _lineage(ctx: Named, h: History, row: Any) -> dict[str, Any]:
    v = h.latest
    run = v.run
    info: dict[str, Any] = {
        "name": v.name, "scope": v.scope, "path": v.path, "version": v.number,
        "algorithm": hashing.ALGORITHM, "digest": v.digest, "file_digest": row.file_digest,
        "format": v.format, "summary": v.summary, "size": v.size, "created": v.created,
        "run": None if run is None else {"id": run.id, "host": run.host, "pid": run.pid,
                                         "user": run.user, "started": run.started},
        "origin": v.origin, "store": str(ctx.store.root), "call": None,
    }
    call = getattr(h, "call", None)  # lineage may not expose calls in every version
    if call is not None:
        info["call"] = {
            "id": call.id, "function": call.function, "code_digest": call.code_digest,
            "key": call.key, "params": call.params, "started": call.started,
            "duration": call.duration,
            "inputs": {n: {"digest": i.digest, "artifact_id": i.artifact_id,
                           "file_path": i.file_path, "names": [str(b) for b in i.names]}
                       for n, i in call.inputs.items()},
        }
    return info


# --------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunSummary:
    """A run as ``provstore runs`` lists it; ``status`` reads ``crashed`` when stale."""

    id: int
    status: str
    started: Any
    ended: Any
    heartbeat: Any
    host: str
    pid: int
    user: str | None
    argv: list[str]
    git_commit: str | None
    git_dirty: bool | None
    hits: int | None = None  # tracked calls found in the store
    misses: int | None = None  # tracked calls computed
    saved_seconds: float | None = None  # the recorded compute time of the hits


def list_runs(store: Store, *, limit: int | None = None) -> list[RunSummary]:
    """The runs of *store*, newest first (at most *limit*)."""
    r = q.runs
    stmt = select(r).order_by(r.c.id.desc()).limit(limit)
    return [RunSummary(row.id, status_of(row.status, row.heartbeat, host=row.host, pid=row.pid),
                       row.started, row.ended, row.heartbeat, row.host, row.pid, row.user,
                       json.loads(row.argv or "[]"), row.git_commit, row.git_dirty, row.hits,
                       row.misses, row.saved_seconds)
            for row in store.query(stmt)]


