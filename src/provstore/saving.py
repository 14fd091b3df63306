"""Saving: a value, or an external file, turned into a published object.

A save hashes the value and publishes its object file (written to a
temporary file, fsynced and renamed into place by :mod:`provstore.objects`)
outside any transaction, so a 1 GB write never holds the database lock. The
result is a :class:`~provstore.records.Prepared` artifact whose row the store
commits later, with the binding or the call that uses it.

Ingesting a file (``ctx.name = provstore.File(path)``) reads it through the
backend its extension selects (which checks it is what it claims to be), keys
it by the canonical digest of its content, and copies it byte for byte into
the object directory, so ``which FILE`` finds the original bytes. Unchanged
files (same path, size, mtime, inode) are not read again: the ``files`` table
caches their digest, like git's index.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from . import hashing
from .backends.base import Backend, registry
from .backends.container import ContainerBackend, Leaf, element_files
from .backends.json import JsonBackend
from .errors import (
    BackendError,
    CorruptObjectError,
    ProvstoreError,
    StoreError,
    UnsafeLoadError,
    UnsupportedTypeError,
)
from .files import File, FileStat
from .objects import ObjectDir, storage_error
from .records import Prepared
from .store import Store

__all__ = ["prepare", "prepare_file", "publish_element"]


def prepare(store: Store, value: Any, *, format: str | None = None,
            **options: Any) -> Prepared:
    """Hash *value* and publish its object file; the row is committed by ``Store.bind``.

    Parameters
    ----------
    store : Store
        Where the object file goes.
    value : object
        A value, or a :class:`~provstore.files.File` to ingest.
    format : str, optional
        A backend name; chosen from the value's type by default.
    **options
        Passed to the backend's ``save``.

    Returns
    -------
    Prepared
        The artifact, its file published, its row not yet committed.
    """
    if isinstance(value, File):
        return prepare_file(store, value, format, options)
    if type(value) in _NUMBERS and not format and not options:
        scalar = _prepare_number(store, value)
        if scalar is not None:
            return scalar
    known = None if format or options else store.identity.known(value)
    if known is not None:
        row = store.artifact(known.artifact_id)
        return Prepared(digest=row.digest, backend=registry.get(row.format),
                        existing_id=row.id, call_id=known.call_id)
    backend = _backend_for(store, value, format)
    # A container is taken apart first: a bad element fails before anything is written.
    layout = backend.layout(value, options) if isinstance(backend, ContainerBackend) else None
    digest = hashing.digest(value)
    prepared = Prepared(digest=digest, backend=backend, summary=backend.describe(value),
                        call_id=store.identity.recent_call(digest))
    if backend.inline_for(value, options):
        # No early lookup: the write transaction finds an existing row anyway.
        prepared.inline, prepared.meta = backend.encode(value, **options)
        prepared.size = len(prepared.inline)
        return prepared
    prepared.existing_id = store.existing_artifact(digest, backend)
    if layout is not None and prepared.existing_id is not None \
            and not _elements_present(store, prepared.existing_id):
        prepared.existing_id = None  # an element file was lost: publish them all again
    if prepared.existing_id is None:  # skip rewriting a file that is already stored
        prepared.suffix = backend.suffix_for(value, options)
        if layout is not None:
            options = {**options, "files": [publish_element(store.objects, leaf)
                                             for leaf in layout.leaves]}
        _publish(store, prepared, lambda tmp: _write(backend, value, tmp, options))
    return prepared


# Exact types: what the JSON backend, first in line, always stores inline.
_NUMBERS = frozenset({int, float, bool, type(None)})
_JSON_INT = 1 << 63  # far below the digits beyond which JSON's encoder refuses an int


def _prepare_number(store: Store, value: Any) -> Prepared | None:
    """A number, bool or None, without asking each backend whether it can store it.

    A tracked call's most common small result: the JSON backend takes it
    (as :meth:`BackendRegistry.choose` would) and keeps it inline; None when
    that backend was replaced, which then chooses as usual.
    """
    if type(value) is int and not -_JSON_INT <= value < _JSON_INT:
        return None
    backend = registry.get("json")
    if type(backend) is not JsonBackend or not backend.auto:
        return None
    digest = hashing.digest(value)
    prepared = Prepared(digest=digest, backend=backend, summary=backend.describe(value),
                        call_id=store.identity.recent_call(digest))
    if type(value) is float:
        prepared.inline, prepared.meta = backend.encode(value)
    else:
        # JSON's text of an int is its repr (of True, False, None: their
        # literals): what the backend's encode writes, without an encoder.
        prepared.inline = repr(value).encode() if type(value) is int else _LITERALS[value]
        prepared.meta = {}
    prepared.size = len(prepared.inline)
    return prepared


_LITERALS = {True: b"true", False: b"false", None: b"null"}


def _elements_present(store: Store, artifact_id: int) -> bool:
    row = store.artifact(artifact_id)
    return all(store.objects.exists(f.digest, f.suffix) for f in element_files(row.meta))


def publish_element(objects: ObjectDir, leaf: Leaf) -> dict[str, Any]:
    """Write one element of a container into *objects*, named by the digest of its bytes.

    Returns the element's record for the container's manifest
    (``files=`` of :meth:`~provstore.backends.container.ContainerBackend.save`).

    Named by its bytes, an element file is shared by every container holding
    the same element and is only ever replaced by the same bytes. It is
    published afresh each time (a new inode and mtime), so a ``gc`` dropping
    another container that named it keeps it as young, or puts it back.
    If a later element fails, those published before it stay as orphans
    that ``gc`` removes: no row names them.
    """
    with objects.staging(leaf.suffix) as scratch:
        meta, file_digest, size = _write(leaf.backend, leaf.value, scratch, leaf.options)
        objects.publish(file_digest, leaf.suffix, lambda tmp: os.replace(scratch, tmp))
    return {"format": leaf.backend.name, "digest": file_digest, "suffix": leaf.suffix,
            "size": size, "meta": meta}


def _backend_for(store: Store, value: Any, format: str | None) -> Backend:
    if format is None:
        return registry.choose(value, allow_unsafe=not store.safe)
    backend = registry.get(format)
    if not backend.can_save(value):
        raise UnsupportedTypeError(
            f"the {format!r} backend cannot store a {type(value).__qualname__}; "
            "leave format unset to choose automatically"
        )
    return backend


def _write(backend: Backend, value: Any, tmp: Path,
           options: dict[str, Any]) -> tuple[dict[str, Any], str, int]:
    try:
        fast = None if options else backend.save_with_checksum(value, tmp)
        if fast is not None:
            return fast
        meta = backend.save(value, tmp, **options)
    except OSError:
        raise  # ObjectDir.publish names a filesystem fault with its path and errno
    except Exception as exc:
        if isinstance(exc, ProvstoreError) and not isinstance(exc, BackendError):
            raise
        fault = _filesystem_fault(exc, value, tmp)
        if fault is not None:
            raise storage_error(fault, "write", tmp) from exc
        if isinstance(exc, BackendError):
            raise
        raise BackendError(
            f"the {backend.name!r} backend failed to save a {type(value).__qualname__}: {exc}"
        ) from exc
    return meta, _hash_while_syncing(tmp), tmp.stat().st_size


# Less free space than this after a failed write means the write failed for it.
_NEARLY_FULL = 256 * 1024


def _filesystem_fault(exc: BaseException, value: Any, tmp: Path) -> OSError | None:
    """The filesystem error behind a backend's failure to save *value*, if there is one.

    Backends wrap an ``OSError`` in their own error (kept as its cause);
    HDF5 reports a full disk with no errno at all, so a failure while the
    filesystem has less room than the value needs is read as ENOSPC.
    """
    seen: BaseException | None = exc
    while seen is not None:  # causes only: an OSError handled on the way is no cause
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__
    try:
        st = os.statvfs(tmp.parent)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free < _NEARLY_FULL or _nbytes(value) >= free:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def _nbytes(value: Any) -> int:
    """A lower bound of the bytes *value* takes on disk (arrays and their containers)."""
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, (str, bytes)):
        return len(value)
    size = getattr(value, "nbytes", 0)
    return size if isinstance(size, int) else 0


def _publish(store: Store, prepared: Prepared,
             write_file: Callable[[Path], tuple[dict[str, Any], str, int]]) -> None:
    meta, file_digest, size = store.objects.publish(prepared.digest, prepared.suffix,
                                                    write_file)
    prepared.meta, prepared.file_digest, prepared.size = meta, file_digest, size


def prepare_file(store: Store, file: File, format: str | None,
                 options: dict[str, Any]) -> Prepared:
    """Read, hash and publish an external file; the row is committed by ``Store.bind``."""
    try:
        stat = file.stat()
    except FileNotFoundError as exc:
        raise StoreError(f"cannot ingest {file.path}: no such file") from exc
    except OSError as exc:
        raise storage_error(exc, "ingest", file.path) from exc
    backend = registry.get(format) if format else registry.for_suffix(file.name)
    if backend.unsafe and store.safe:
        raise UnsafeLoadError(
            f"ingesting {file.name} would unpickle it, and the store was opened with "
            "safe=True; convert the file to a standard format"
        )
    cached = _cached_file(store, stat, backend)
    if cached is not None:
        return cached
    try:
        file_digest = file.digest()
    except OSError as exc:
        raise storage_error(exc, "read", file.path) from exc
    record = {"path": stat.path, "size": stat.size, "mtime_ns": stat.mtime_ns,
              "inode": stat.inode, "algorithm": hashing.ALGORITHM, "digest": file_digest}
    value = _read_external(backend, file, store.safe)
    digest = file_digest if backend.name == "raw" else hashing.digest(value)
    prepared = Prepared(digest=digest, backend=backend, file_record=record)
    prepared.existing_id = store.existing_artifact(digest, backend)
    if prepared.existing_id is not None:
        return prepared
    prepared.summary = backend.describe(value)
    if backend.inline_for(value, options):
        prepared.inline, prepared.meta = backend.encode(value, **options)
        prepared.size = len(prepared.inline)
        return prepared
    prepared.suffix = (backend.suffix_for(file.path, options) if not backend.suffixes
                       else _matching_suffix(backend, file.name))
    _publish(store, prepared, lambda tmp: _copy_verified(file, tmp, file_digest))
    return prepared


def _cached_file(store: Store, stat: FileStat, backend: Backend) -> Prepared | None:
    # Like git's index: an unchanged (path, size, mtime, inode) needs no re-read.
    found = store.ingested_file(stat.path, stat.size, stat.mtime_ns, stat.inode)
    if found is None:
        return None
    row = store.artifact(found)
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


def _hash_while_syncing(path: Path) -> str:
    """Hash a just-written file while another thread flushes it to disk.

    fsync releases the GIL and mostly waits on the disk, while hashing reads
    the file back from the page cache: overlapping them hides most of the
    checksum's cost (the seal's own fsync then finds nothing left to flush).
    """
    fd = os.open(path, os.O_RDONLY)
    syncer = threading.Thread(target=os.fsync, args=(fd,), name="provstore-fsync")
    try:
        syncer.start()
        return hashing.file_digest(path)
    finally:
        syncer.join()
        os.close(fd)
