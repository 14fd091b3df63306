"""Lists, tuples and dicts holding nibabel images: one standard file per element.

A container is stored as a small JSON *manifest* (the artifact's own file)
and one object file per element that is not a plain scalar: each nibabel
image a ``.nii``/``.nii.gz`` through the nifti backend, each array an
``.npy``, any other element in the format it would get on its own (pickle
never). Plain scalars (``None``, ``bool``, ``int``, ``float``, ``str``) stay
in the manifest. Element files are named by the digest of their bytes, so
identical elements share one file and a file is never replaced by other
bytes; the manifest lists them with their format, size and metadata, and
records the container kind (list, tuple, dict with its keys in order), so
the value comes back as it went in.

The store publishes the element files (:mod:`provstore.saving`) before the
manifest, and reads them through the object directory it passes to
:meth:`ContainerBackend.load`. ``gc`` and ``verify`` read the manifests kept
in the artifacts' metadata (:func:`element_files`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import hashing
from ..errors import BackendError, CorruptObjectError, ProvstoreError, UnsupportedTypeError
from ..objects import ObjectDir
from .base import Backend, registry

__all__ = ["FORMAT", "MAX_DEPTH", "ContainerBackend", "ElementFile", "Layout", "Leaf",
           "element_files"]

FORMAT = "container"
VERSION = 1
MAX_DEPTH = 32
"""Deepest nesting of lists, tuples and dicts taken."""
MAX_ITEMS = 1 << 20
"""Most items (containers, elements and scalars) one container may hold."""

_KINDS: dict[type, str] = {list: "list", tuple: "tuple", dict: "dict"}
_SCALARS = (type(None), bool, int, float, str)
_OPTIONS = frozenset({"compress"})
_PICKLE_HINT = ("; store it with format='pickle' if you trust whoever loads it (never in a "
                "safe=True store), or convert that element")


@dataclass(frozen=True)
class Leaf:
    """An element of a container that becomes its own object file."""

    where: str  # its place, as Python would index it: "[0]['a']"
    value: Any
    backend: Backend
    suffix: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """A container taken apart: its JSON tree (elements as ``{"file": i}``) and its leaves."""

    kind: str
    tree: dict[str, Any]
    leaves: list[Leaf]


@dataclass(frozen=True)
class ElementFile:
    """An element file a stored container names (read back from its metadata)."""

    where: str
    format: str
    digest: str  # of the file's bytes, which also name it
    suffix: str
    size: int


class ContainerBackend(Backend):
    """Lists, tuples and str-keyed dicts holding at least one nibabel image.

    Taken: exact ``list``, ``tuple`` and ``dict`` values, nested up to
    :data:`MAX_DEPTH`, holding a nibabel image somewhere. Elements may be
    images, numpy arrays and scalars, plain scalars, further lists, tuples
    and dicts, and anything another open format stores (a DataFrame, a
    dataclass...). A container of this kind that cannot be stored so (a key
    that is not a ``str``, a cycle, an element only pickle takes) raises
    :class:`~provstore.errors.UnsupportedTypeError` naming the element,
    rather than being pickled silently; ``format="pickle"`` pickles it.

    :meth:`save` writes the manifest only: the store publishes the element
    files first and passes their records as ``files=``. :meth:`load` needs
    the store's object directory (``objects=``), which the store passes
    (:attr:`reads_objects`).
    """

    name = FORMAT
    suffixes = ()  # manifests are never ingested from files
    supports_mmap = True  # handed on to the elements
    checks_trust = True  # handed on to elements that check it (objects, skops)
    reads_objects = True

    def can_save(self, obj: Any) -> bool:
        """Return whether *obj* is a list, tuple or dict holding a nibabel image."""
        if type(obj) not in _KINDS or "nibabel" not in sys.modules:
            return False  # no image without nibabel imported: it costs no walk
        return any(_is_image(v) for v in _walk_values(obj))

    def suffix_for(self, obj: Any, options: dict[str, Any]) -> str:
        """Return ``".json"``: the manifest is a JSON file."""
        return ".json"

    def layout(self, obj: Any, options: dict[str, Any]) -> Layout:
        """Take *obj* apart into its tree and the elements stored as files.

        Raises
        ------
        UnsupportedTypeError
            An unknown option, a key that is not a ``str``, a cycle, nesting
            beyond :data:`MAX_DEPTH`, or an element that only pickle stores;
            the message names the element.
        """
        unknown = set(options) - _OPTIONS
        if unknown:
            raise UnsupportedTypeError(f"the container backend takes only 'compress', "
                                       f"got {sorted(unknown)}")
        leaves: list[Leaf] = []
        tree = _take_apart(obj, "", leaves, set(), dict(options))
        return Layout(_KINDS[type(obj)], tree, leaves)

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Write the manifest of *obj* to *path*; return it (kept as the artifact's metadata).

        Parameters
        ----------
        files : list of dict
            One record per element file, in :meth:`layout` order, as the
            store published them: ``{"format", "digest", "suffix", "size",
            "meta"}``.
        compress : bool, optional
            Write images as ``.nii.gz`` (decided in :meth:`layout`).
        """
        files = options.pop("files", None)
        layout = self.layout(obj, options)
        if not isinstance(files, list) or len(files) != len(layout.leaves):
            raise BackendError("the container backend saves a manifest only after the store "
                               "published its element files (files=...)")
        manifest = {
            "provstore": FORMAT, "version": VERSION, "kind": layout.kind, "value": layout.tree,
            "files": [{"where": leaf.where, **record}
                      for leaf, record in zip(layout.leaves, files)],
        }
        Path(path).write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
        return manifest

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             objects: ObjectDir | None = None, safe: bool = True, verify: bool = False,
             **options: Any) -> Any:
        """Rebuild the container whose manifest is at *path* from its element files.

        Parameters
        ----------
        objects : ObjectDir
            The store's object directory, where the element files are.
        safe : bool
            Handed to elements whose backend checks trust.
        verify : bool
            Hash every element file and compare it with its name.

        Raises
        ------
        CorruptObjectError
            The manifest is damaged, or an element file is missing, has
            another size, or (with *verify*) other bytes; the message names
            the element.
        """
        if options:
            raise BackendError(f"containers take no load options, got {sorted(options)}")
        manifest = _read_manifest(Path(path))  # a damaged manifest says so in any case
        if objects is None:
            raise BackendError(f"{Path(path).name} is a container manifest: it is read "
                               "through its store, which holds its element files")
        files = manifest["files"]
        loaded = [_load_element(objects, f, mmap_mode, safe, verify) for f in files]
        try:
            return _rebuild(manifest["value"], loaded, 0)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptObjectError(f"{path}: its manifest is damaged ({exc!r})") from exc

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return ``{"type", "length"}``."""
        return {"type": type(obj).__name__, "length": len(obj)}


# ----------------------------------------------------------------------------- saving
def _is_image(value: Any) -> bool:
    import nibabel as nib  # only called once nibabel is imported (see can_save)

    return isinstance(value, nib.Nifti1Image)


def _walk_values(obj: Any) -> Iterator[Any]:
    """Every value inside *obj* (at most :data:`MAX_ITEMS`, cycles skipped).

    Not bounded in depth: a container too deep to store is still claimed,
    so that :meth:`ContainerBackend.layout` refuses it clearly rather than
    letting pickle take it.
    """
    stack = [obj]
    seen: set[int] = set()
    count = 0
    while stack and count < MAX_ITEMS:
        value = stack.pop()
        count += 1
        if type(value) not in _KINDS:
            yield value
        elif id(value) not in seen:
            seen.add(id(value))
            stack.extend(value.values() if type(value) is dict else value)


def _take_apart(value: Any, where: str, leaves: list[Leaf], active: set[int],
                options: dict[str, Any]) -> dict[str, Any]:
    kind = type(value)
    if kind in _SCALARS:
        return {"value": value}
    if kind not in _KINDS:
        return {"file": _leaf(value, where or "[]", leaves, options)}
    if id(value) in active:
        raise UnsupportedTypeError(f"element {where or 'the value'} contains itself (a cycle), "
                                   "which no file can hold")
    if len(active) >= MAX_DEPTH:
        raise UnsupportedTypeError(f"element {where} nests lists/tuples/dicts deeper than "
                                   f"{MAX_DEPTH} levels" + _PICKLE_HINT)
    active.add(id(value))
    try:
        if kind is dict:
            bad = next((k for k in value if type(k) is not str), None)
            if bad is not None:
                raise UnsupportedTypeError(
                    f"a dict holding nibabel images is stored with str keys only; "
                    f"{where or 'the value'} has the key {bad!r} ({type(bad).__name__})"
                    + _PICKLE_HINT)
            return {"dict": [[k, _take_apart(v, f"{where}[{k!r}]", leaves, active, options)]
                             for k, v in value.items()]}
        return {_KINDS[kind]: [_take_apart(v, f"{where}[{i}]", leaves, active, options)
                               for i, v in enumerate(value)]}
    finally:
        active.discard(id(value))


def _leaf(value: Any, where: str, leaves: list[Leaf], options: dict[str, Any]) -> int:
    if len(leaves) >= MAX_ITEMS:
        raise UnsupportedTypeError(f"a container holds at most {MAX_ITEMS} element files")
    backend = _element_backend(value)
    if backend is None:
        raise UnsupportedTypeError(
            f"element {where} is a {type(value).__qualname__}, which no open format stores"
            + _PICKLE_HINT)
    own = {"compress": True} if options.get("compress") and backend.name == "nifti" else {}
    leaves.append(Leaf(where, value, backend, backend.suffix_for(value, own), own))
    return len(leaves) - 1


def _element_backend(value: Any) -> Backend | None:
    """The backend *value* would get on its own, pickle and inline values excepted."""
    for backend in registry:
        if backend.name in (FORMAT, "json") or not backend.auto or backend.unsafe:
            continue
        if backend.can_save(value) and not backend.inline_for(value, {}):
            return backend
    return None


# ----------------------------------------------------------------------------- loading
def element_files(meta: dict[str, Any]) -> list[ElementFile]:
    """The element files a container's metadata (its manifest) names.

    Raises
    ------
    CorruptObjectError
        The metadata is not a container manifest.
    """
    try:
        return [ElementFile(str(f["where"]), str(f["format"]), str(f["digest"]),
                            str(f["suffix"]), int(f["size"])) for f in meta["files"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptObjectError(f"the container manifest is damaged ({exc!r})") from exc


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("provstore") != FORMAT or not isinstance(manifest.get("files"), list):
            raise ValueError("not a provstore container manifest")
        element_files(manifest)
    except FileNotFoundError as exc:
        raise CorruptObjectError(f"{path} is missing") from exc
    except (OSError, ValueError, AttributeError, CorruptObjectError, RecursionError) as exc:
        raise CorruptObjectError(f"{path} is not a readable container manifest: {exc}") from exc
    return dict(manifest)


def _load_element(objects: ObjectDir, record: dict[str, Any], mmap_mode: str | None,
                  safe: bool, verify: bool) -> Any:
    where = record["where"]
    try:
        path = objects.path(record["digest"], record["suffix"])
    except ProvstoreError as exc:  # a name no provstore writes: the manifest was altered
        raise CorruptObjectError(f"element {where}: {exc}") from exc
    rel = objects.relative(record["digest"], record["suffix"])
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise CorruptObjectError(f"element {where}: its file {rel} is missing: it was deleted "
                                 "outside provstore; bind the value again") from exc
    if size != record["size"] or (verify and hashing.file_digest(path) != record["digest"]):
        raise CorruptObjectError(f"element {where}: its file {rel} was changed or truncated "
                                 "after it was stored; bind the value again")
    backend = registry.get(record["format"])
    if backend.unsafe or backend.inline:
        raise CorruptObjectError(f"element {where} claims the format {backend.name!r}, which "
                                 "containers never write: the manifest was altered")
    options = {"safe": safe} if backend.checks_trust else {}
    try:
        return backend.load(path, record.get("meta") or {},
                            mmap_mode=mmap_mode if backend.supports_mmap else None, **options)
    except CorruptObjectError as exc:
        raise CorruptObjectError(f"element {where}: {exc}") from exc


def _rebuild(node: dict[str, Any], loaded: list[Any], depth: int) -> Any:
    if depth > MAX_DEPTH + 1:
        raise ValueError("nested deeper than any container provstore writes")
    (kind, body), = node.items()
    if kind == "value":
        if type(body) not in _SCALARS:
            raise TypeError(f"a {type(body).__name__} where a scalar belongs")
        return body
    if kind == "file":
        return loaded[body]
    if kind == "dict":
        return {str(k): _rebuild(v, loaded, depth + 1) for k, v in body}
    if kind in ("list", "tuple"):
        items = [_rebuild(v, loaded, depth + 1) for v in body]
        return items if kind == "list" else tuple(items)
    raise ValueError(f"unknown node {kind!r}")
