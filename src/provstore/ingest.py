"""Ingesting files: ``ctx.name = provstore.File(path)``.

The file is read through the backend its extension selects (which checks it
is what it claims to be), keyed by the canonical digest of its content, and
copied byte for byte into the object directory, so ``which FILE`` finds the
original bytes. Unchanged files (same path, size, mtime, inode) are not read
again: the ``files`` table caches their digest, like git's index.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from . import hashing
from .backends.base import Backend, registry
from .db import queries as q
from .errors import CorruptObjectError, StoreError, UnsafeLoadError
from .files import File
from .records import Prepared

if TYPE_CHECKING:
    from .store import Store

__all__ = ["prepare_file"]


def prepare_file(store: Store, file: File, format: str | None,
                 options: dict[str, Any]) -> Prepared:
    """Read, hash and publish an external file; the row is committed by ``Store.bind``."""
    try:
        stat = file.stat()
    except FileNotFoundError as exc:
        raise StoreError(f"cannot ingest {file.path}: no such file") from exc
    backend = registry.get(format) if format else registry.for_suffix(file.name)
    if backend.unsafe and store.safe:
        raise UnsafeLoadError(
            f"ingesting {file.name} would unpickle it, and the store was opened with "
            "safe=True; convert the file to a standard format"
        )
    cached = _cached_file(store, stat, backend)
    if cached is not None:
        return cached
    file_digest = file.digest()
    record = {"path": stat.path, "size": stat.size, "mtime_ns": stat.mtime_ns,
              "inode": stat.inode, "algorithm": hashing.ALGORITHM, "digest": file_digest}
    value = _read_external(backend, file, store.safe)
    digest = file_digest if backend.name == "raw" else hashing.digest(value)
    prepared = Prepared(digest=digest, backend=backend, file_record=record)
    prepared.existing_id = store._existing(digest, backend)
    if prepared.existing_id is not None:
        return prepared
    prepared.summary = backend.describe(value)
    if backend.inline_for(value, options):
        prepared.inline, prepared.meta = backend.encode(value, **options)
        prepared.size = len(prepared.inline)
        return prepared
    prepared.suffix = (backend.suffix_for(file.path, options) if not backend.suffixes
                       else _matching_suffix(backend, file.name))
    store._publish(prepared, lambda tmp: _copy_verified(file, tmp, file_digest))
    return prepared


def _cached_file(store: Store, stat: Any, backend: Backend) -> Prepared | None:
    # Like git's index: an unchanged (path, size, mtime, inode) needs no re-read.
    found = store._query(q.FILE_BY_STAT, {
        "path": stat.path, "size": stat.size, "mtime_ns": stat.mtime_ns, "inode": stat.inode,
    }).first()
    if found is None or found.artifact_id is None:
        return None
    row = store.artifact(found.artifact_id)
    if row.format != backend.name:
        return None  # ingested before through another backend
    if row.inline is None and not store.objects.exists(row.digest, row.suffix):
        return None
    return Prepared(digest=row.digest, backend=backend, existing_id=row.id)


def _read_external(backend: Backend, file: File, safe: bool) -> Any:
    if backend.name == "raw":
        return file.path
    options = {"safe": safe} if backend.checks_trust else {}
    try:
        return backend.load(file.path, {}, mmap_mode="r" if backend.supports_mmap else None,
                            **options)
    except CorruptObjectError as exc:
        raise CorruptObjectError(
            f"{file.path} cannot be read as {backend.name}: {exc}; pass format=... "
            "to choose another backend"
        ) from exc


def _matching_suffix(backend: Backend, filename: str) -> str:
    lowered = filename.lower()
    matches = [s for s in backend.suffixes if lowered.endswith(s)]
    return max(matches, key=len) if matches else (backend.suffixes[0] if backend.suffixes else "")


def _copy_verified(file: File, tmp: Path, expected: str) -> tuple[dict[str, Any], str, int]:
    # Hash what is actually copied: a file rewritten while being ingested must
    # not be recorded under the digest of its earlier content.
    h = xxhash.xxh3_128()
    size = 0
    with open(file.path, "rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 23):
            h.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    if h.hexdigest() != expected:
        raise StoreError(f"{file.path} changed while it was being ingested; try again")
    return {}, expected, size
