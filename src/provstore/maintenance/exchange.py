"""Bridging files and the store: which, export; and listing runs."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import xxhash
from sqlalchemy import select

from .. import hashing
from ..backends.base import registry
from ..backends.container import FORMAT as CONTAINER
from ..backends.container import element_files
from ..db import queries as q
from ..errors import CorruptObjectError, MissingKeyError, ProvstoreError, StoreError
from ..lineage import History
from ..objects import storage_error
from ..runs import status_of
from ..store import Store
from .common import (
    BindingRef,
    bindings_of,
)
from .retention import CONTAINER_MANIFESTS


# -------------------------------------------------------------------- which
@dataclass(frozen=True)
class Match:
    """An artifact a file's content matches.

    ``how`` is ``bytes`` (the object file has these bytes), ``ingested`` (the
    artifact was ingested from a file with these bytes), ``content`` (the
    file decodes to a value with the artifact's canonical digest) or
    ``element`` (an element file of a stored container, such as one image of
    a list, has these bytes; ``element`` says which).
    """

    artifact_id: int
    digest: str
    format: str
    how: str
    bindings: tuple[BindingRef, ...]
    files: tuple[str, ...] = ()
    element: str | None = None  # with how == "element": its place in the container ("[0]")


def which(store: Store, path: str | os.PathLike[str]) -> list[Match]:
    """Find the artifacts whose content is the file at *path*.

    Returns
    -------
    list of Match
        Empty when the content is not in the store.

    Raises
    ------
    StoreError
        *path* is missing, unreadable or not a regular file (a FIFO or a
        device would block or never end).
    """
    _check_readable(Path(path))
    try:
        byte_digest = hashing.file_digest(path)
    except OSError as exc:
        raise storage_error(exc, "read", path) from exc
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
    elements = _containers_holding(store, byte_digest)
    bindings = bindings_of(store, [*found, *elements])
    matches = []
    for artifact_id, (how, paths) in sorted(found.items()):
        row = store.artifact(artifact_id)
        matches.append(Match(artifact_id, row.digest, row.format, how,
                             tuple(bindings.get(artifact_id, ())), tuple(sorted(set(paths)))))
    for artifact_id, where in sorted(elements.items()):
        row = store.artifact(artifact_id)
        matches.append(Match(artifact_id, row.digest, row.format, "element",
                             tuple(bindings.get(artifact_id, ())), element=where))
    return matches


def _containers_holding(store: Store, byte_digest: str) -> dict[int, str]:
    """Container artifact → the place of its element file with these bytes."""
    a = q.artifacts
    # Element files are named by the digest of their bytes, which the manifest
    # (kept as metadata) spells out: a substring match finds the few candidates.
    stmt = CONTAINER_MANIFESTS.where(a.c.meta.contains(byte_digest, autoescape=True))
    found: dict[int, str] = {}
    for r in store.query(stmt):
        with contextlib.suppress(CorruptObjectError, ValueError):
            for f in element_files(json.loads(r.meta)):
                if f.digest == byte_digest:
                    found.setdefault(r.id, f.where)
    return found


def _check_readable(path: Path) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StoreError(f"cannot look up {path}: no such file") from None
    except OSError as exc:
        raise storage_error(exc, "read", path) from exc
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"cannot look up {path}: it is not a regular file")


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


def export(ctx: Named, name: str, dest: str | os.PathLike[str], *,
           force: bool = False) -> Path:
    """Copy the current value of *name* to *dest* in its standard format.

    The file's bytes are verified while copying; a container (a list,
    tuple or dict of images) becomes a directory (:func:`export_container`).
    A JSON sidecar
    ``dest + ".provstore.json"`` records the lineage: name, scope, version,
    digests, format, creation, run, origin and producing call.
    :func:`which` on the exported file finds the artifact again.

    Both files are written to unpredictably named temporaries created with
    ``O_EXCL|O_NOFOLLOW`` in the destination's directory, then moved into
    place: a link planted at the destination, the sidecar or a temporary name
    is never followed, only replaced (with *force*).

    Parameters
    ----------
    force : bool
        Replace an existing destination or sidecar (the default refuses).

    Returns
    -------
    Path
        The written file (inside *dest* when it is a directory).

    Raises
    ------
    StoreError
        The destination's directory is missing, or the destination or its
        sidecar exists and *force* is not set.
    StorageError
        Writing failed (a full disk: ``StorageFullError``); nothing is left.
    """
    h = ctx.history(name)
    v = h.latest
    if v.artifact_id is None:
        raise MissingKeyError(f"{v.path} was deleted (version {v.number}); nothing to export")
    row = ctx.store.artifact(v.artifact_id)
    if row.format == CONTAINER:
        return export_container(ctx, h, row, dest, force=force)
    suffix = row.suffix or (".json" if row.format == "json" else "")
    target = Path(dest)
    if target.is_dir():  # a directory the caller names, through a link or not
        target = target / f"{v.name}{suffix}"
    if suffix and not target.name.lower().endswith(suffix):
        raise StoreError(f"{v.path} is stored as {row.format} ({suffix}); export it to a file "
                         f"name ending in {suffix}")
    sidecar = target.with_name(target.name + ".provstore.json")
    _check_destination(target, v.path, force)
    _check_destination(sidecar, v.path, force)
    lineage = json.dumps(_lineage(ctx, h, row), indent=2, default=str) + "\n"
    source = None if row.inline is not None else ctx.store.objects.path(row.digest, row.suffix)

    def write_value(fout: BinaryIO) -> None:
        if row.inline is not None:
            fout.write(row.inline)
        else:
            assert source is not None
            _copy_checked(source, fout, row.file_digest, v.path)

    placed = write_new_file(target, write_value, force=force)
    try:
        write_new_file(sidecar, lambda f: f.write(lineage.encode()), force=force)
    except BaseException:
        _unlink_if_same(target, placed)  # the sidecar failed: take back our file
        raise
    return target


def export_container(ctx: Named, h: History, row: Any, dest: str | os.PathLike[str], *,
                     force: bool = False) -> Path:
    """Export a stored container as a directory of standard files.

    Each element file is copied (verified) to a path built from its place:
    list and tuple positions and dict keys, nested as directories
    (``subject/runs/0.nii``); a key that is not a plain file name
    (``[A-Za-z0-9][A-Za-z0-9_.-]*``) is replaced by ``_`` and its position.
    ``container.json`` keeps the structure, the scalars and each element's
    relative path. The directory is assembled under a temporary name and
    renamed into place; the sidecar is ``<directory>.provstore.json``.
    Arguments and errors as :func:`export`.
    """
    v = h.latest
    target = Path(dest)
    if target.is_dir() and not target.is_symlink():
        target = target / v.name
    sidecar = target.with_name(target.name + ".provstore.json")
    _check_destination(sidecar, v.path, force)
    if not target.parent.is_dir():
        raise StoreError(f"cannot export {v.path} to {target}: the directory {target.parent} "
                         "does not exist; create it first")
    if os.path.lexists(target) and not force:
        raise StoreError(f"cannot export {v.path}: {target} is already there; choose another "
                         "name, remove it, or pass --force (force=True) to replace it")
    source = ctx.store.objects.path(row.digest, row.suffix)
    try:
        manifest = json.loads(source.read_text(encoding="utf-8"))
        files = element_files(manifest)
    except (OSError, ValueError) as exc:
        raise CorruptObjectError(f"{v.path}: its container manifest cannot be read ({exc}); "
                                 "run `provstore verify`") from exc
    names: list[str] = []
    layout = {"provstore": CONTAINER, "kind": manifest["kind"],
              "value": _export_tree(manifest["value"], (), files, names)}
    try:
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name[:100]}.",
                                        suffix=".partial"))
    except OSError as exc:
        raise storage_error(exc, "create a directory in", target.parent) from exc
    try:
        for f, name in zip(files, names):
            out = staging / name
            out.parent.mkdir(parents=True, exist_ok=True)
            write_new_file(out, _copier(ctx.store.objects.path(f.digest, f.suffix), f.digest,
                                        f"{v.path} element {f.where}"))
        text = json.dumps(layout, indent=2, ensure_ascii=False) + "\n"
        write_new_file(staging / "container.json", lambda fout: fout.write(text.encode()))
        _place_directory(staging, target, force)
    except OSError as exc:
        raise storage_error(exc, "write", exc.filename or target) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone once placed
    lineage = json.dumps(_lineage(ctx, h, row), indent=2, default=str) + "\n"
    write_new_file(sidecar, lambda f: f.write(lineage.encode()), force=force)
    return target


def _copier(src: Path, digest: str, where: str) -> Callable[[BinaryIO], None]:
    return lambda fout: _copy_checked(src, fout, digest, where)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _export_tree(node: dict[str, Any], parts: tuple[str, ...], files: list[Any],
                 names: list[str]) -> dict[str, Any]:
    """*node* with each element replaced by its exported path (appended to *names*)."""
    (kind, body), = node.items()
    if kind == "file":
        names.append("/".join(parts) + files[body].suffix)
        return {"file": names[-1]}
    if kind == "dict":
        return {"dict": [[k, _export_tree(item, (*parts, _part(k, i)), files, names)]
                         for i, (k, item) in enumerate(body)]}
    if kind in ("list", "tuple"):
        return {kind: [_export_tree(item, (*parts, str(i)), files, names)
                       for i, item in enumerate(body)]}
    return dict(node)


def _part(key: str, position: int) -> str:
    plain = _PLAIN_NAME.fullmatch(key) and key != "container.json"
    return key if plain else f"_{position}"


def _place_directory(staging: Path, target: Path, force: bool) -> None:
    if os.path.lexists(target):
        if not force:
            raise StoreError(f"{target} appeared while it was being written; nothing was "
                             "replaced: pass --force (force=True) to replace it")
        if target.is_dir() and not target.is_symlink():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name[:100]}.old."))
            os.replace(target, old / "x")
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
            return
        target.unlink()
    os.rename(staging, target)


def _check_destination(path: Path, what: str, force: bool) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise StoreError(f"cannot export {what} to {path}: the directory {parent} does not "
                         "exist; create it first")
    if os.path.lexists(path) and not force:
        kind = "a symbolic link" if path.is_symlink() else "a file"
        raise StoreError(f"cannot export {what}: {path} is already {kind}; choose another "
                         "name, remove it, or pass --force (force=True) to replace it")
    if path.is_dir() and not path.is_symlink():
        raise StoreError(f"cannot export {what} to {path}: it is a directory")


def write_new_file(path: Path, write: Callable[[BinaryIO], object], *,
                   force: bool = False) -> tuple[int, int]:
    """Create *path* with the bytes *write* puts in a file, never following links.

    The data goes to a temporary file created with ``O_EXCL|O_NOFOLLOW`` and
    an unpredictable name in *path*'s directory (:func:`tempfile.mkstemp`),
    is fsynced, then linked into place, which fails if anything (a file, a
    link, a dangling link) is at *path*. With *force* it is renamed over
    *path* instead, which replaces a link itself, never its target. Nothing
    is left on failure.

    Returns
    -------
    tuple of int
        The (device, inode) of the file placed, to recognise it later.

    Raises
    ------
    StoreError
        *path* exists and *force* is false.
    StorageError
        The filesystem failed (``StorageFullError`` when full).
    """
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.",
                                        suffix=".partial")
    except OSError as exc:
        raise storage_error(exc, "create a file in", path.parent) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fout:
            write(fout)
            fout.flush()
            os.fchmod(fout.fileno(), 0o666 & ~_umask())
            os.fsync(fout.fileno())
            st = os.fstat(fout.fileno())
        _place(tmp, path, force)
    except ProvstoreError:
        raise
    except OSError as exc:
        raise storage_error(exc, "write", exc.filename or path) from exc
    finally:
        with contextlib.suppress(OSError):  # never hide the error being raised
            tmp.unlink(missing_ok=True)
    return st.st_dev, st.st_ino


def _place(tmp: Path, path: Path, force: bool) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise StoreError(f"{path} appeared while it was being written; nothing was "
                         "replaced: pass --force (force=True) to replace it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # A filesystem without hard links (FAT, some network shares): check,
        # then rename; the window between the two is the best it allows.
        if os.path.lexists(path):
            raise StoreError(f"{path} appeared while it was being written; pass --force "
                             "(force=True) to replace it") from None
        os.rename(tmp, path)


def _unlink_if_same(path: Path, identity: tuple[int, int]) -> None:
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == identity:
            path.unlink()


def _umask() -> int:
    # os.umask can only be read by setting it, which races with other
    # threads creating files; Linux shows it in /proc.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _copy_checked(src: Path, fout: BinaryIO, expected: str | None, where: str) -> None:
    h = xxhash.xxh3_128()
    try:
        with open(src, "rb") as fin:
            while chunk := fin.read(1 << 23):
                h.update(chunk)
                fout.write(chunk)
    except FileNotFoundError as exc:
        raise CorruptObjectError(f"{where}: its object file is missing; run `provstore "
                                 "verify`") from exc
    if h.hexdigest() != expected:
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


