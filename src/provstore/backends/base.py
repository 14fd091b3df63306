"""The backend interface: a stateless codec between a value and a file.

A backend knows a file format and nothing else: no database, no hashing, no
atomic publication (the store owns those). It saves a value to a path the
store chooses and loads it back. Backends are found through a registry that
holds the built-in ones and anything registered under the entry-point group
``provstore.backends``, loaded lazily on first use.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ..errors import BackendError, UnsupportedTypeError

__all__ = ["Backend", "BackendRegistry", "registry"]

ENTRY_POINT_GROUP = "provstore.backends"

# Built-ins are listed here too, so an editable checkout whose entry points were
# not (re)installed still works. Order is the automatic-choice priority.
_BUILTINS: dict[str, str] = {
    "json": "provstore.backends.json:JsonBackend",
    "npy": "provstore.backends.npy:NpyBackend",
    "nifti": "provstore.backends.nifti:NiftiBackend",
    "hdf5": "provstore.backends.hdf5:Hdf5Backend",
    "container": "provstore.backends.container:ContainerBackend",
    "parquet": "provstore.backends.parquet:ParquetBackend",
    "netcdf": "provstore.backends.netcdf:NetcdfBackend",
    "skops": "provstore.backends.skops:SkopsBackend",
    "objects": "provstore.backends.objects:ObjectsBackend",
    "raw": "provstore.backends.raw:RawBackend",
    "pickle": "provstore.backends.pickle:PickleBackend",
}


class Backend(ABC):
    """A codec between in-memory values and one standard file format.

    Subclasses set the class attributes and implement :meth:`can_save`,
    :meth:`save` and :meth:`load`. Inline backends (``inline = True``) keep the
    value in the database and implement :meth:`encode` / :meth:`decode`
    instead of :meth:`save` / :meth:`load`.

    Attributes
    ----------
    name : str
        Registry name, recorded with every artifact (``"npy"``).
    suffixes : tuple of str
        File suffixes this backend writes and ingests, the default first
        (``(".nii", ".nii.gz")``). An inline backend lists the suffixes it
        ingests from files (json: ``(".json",)``).
    supports_mmap : bool
        Whether :meth:`load` honours ``mmap_mode``.
    inline : bool
        Whether values live in the database rather than in object files.
    unsafe : bool
        Whether loading may execute code (pickle). Refused with ``safe=True``.
    auto : bool
        Whether automatic format choice may pick this backend.
    checks_trust : bool
        Whether the file names code to import (classes) that the backend
        itself checks against an allow-list: :meth:`load` then takes
        ``safe=`` (the store's flag) and raises
        :class:`~provstore.errors.UnsafeLoadError` for untrusted content
        when it is true (skops, objects).
    reads_objects : bool
        Whether :meth:`load` reads further object files of the store: it
        then takes ``objects=`` (the store's
        :class:`~provstore.objects.ObjectDir`) and ``verify=``, set by the
        store (container).
    """

    name: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    supports_mmap: ClassVar[bool] = False
    inline: ClassVar[bool] = False
    unsafe: ClassVar[bool] = False
    auto: ClassVar[bool] = True
    checks_trust: ClassVar[bool] = False
    reads_objects: ClassVar[bool] = False

    @abstractmethod
    def can_save(self, obj: Any) -> bool:
        """Return whether :meth:`save` can store *obj* faithfully."""

    def inline_for(self, obj: Any, options: dict[str, Any]) -> bool:
        """Return whether *obj* is kept in the database rather than in a file.

        Defaults to :attr:`inline`; a backend may keep small values inline and
        write big ones to files (json does, above 1 MiB).
        """
        return self.inline

    def suffix_for(self, obj: Any, options: dict[str, Any]) -> str:
        """Return the file suffix for *obj* saved with *options*."""
        return self.suffixes[0] if self.suffixes else ""

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Write *obj* to *path* (which does not exist yet).

        Returns JSON-able metadata recorded with the artifact and handed back
        to :meth:`load` (dtype, shape, container type...). Must not fsync or
        rename: the store does both.
        """
        raise BackendError(f"backend {self.name!r} does not write files")

    def save_with_checksum(self, obj: Any, path: Path) -> tuple[dict[str, Any], str, int] | None:
        """Optional fast path: save and hash the file's bytes in one pass.

        Returns ``(metadata, xxh3_128 hex digest of the file, size)``, or None
        when the backend has no such path; the store then hashes the file
        after :meth:`save`. Only called when no save options are given.
        """
        return None

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             **options: Any) -> Any:
        """Read the value stored at *path*.

        ``options`` come from ``ctx.get(name, **options)`` (hdf5:
        ``lazy=True``); backends with :attr:`checks_trust` also get
        ``safe=``, set by the store after the caller's options. Raise
        :class:`~provstore.errors.CorruptObjectError` when the file is
        truncated or not in this format.
        """
        raise BackendError(f"backend {self.name!r} does not read files")

    def encode(self, obj: Any, **options: Any) -> tuple[bytes, dict[str, Any]]:
        """Inline backends: return the bytes kept in the database and metadata."""
        raise BackendError(f"backend {self.name!r} is not inline")

    def decode(self, data: bytes, metadata: dict[str, Any]) -> Any:
        """Inline backends: rebuild the value from :meth:`encode`'s bytes."""
        raise BackendError(f"backend {self.name!r} is not inline")

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return a short JSON-able summary of *obj* for listings (type, dtype, shape)."""
        return {"type": type(obj).__qualname__}


class BackendRegistry:
    """Name → backend, with lazy loading of built-ins and entry points."""

    def __init__(self) -> None:
        self._specs: dict[str, str] = dict(_BUILTINS)
        self._loaded: dict[str, Backend] = {}
        self._discovered = False

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        # Imported here: importlib.metadata costs ~20 ms of every start-up,
        # and only a format that is not built in needs the plugins' list.
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self._specs.setdefault(ep.name, ep.value)

    def register(self, backend: Backend | type[Backend]) -> None:
        """Register a backend instance or class under its ``name``."""
        instance = backend() if isinstance(backend, type) else backend
        if not instance.name:
            raise BackendError(f"{type(instance).__qualname__} has no name")
        self._loaded[instance.name] = instance
        self._specs.setdefault(instance.name, "")

    def names(self) -> list[str]:
        """Return every known backend name in automatic-choice priority order."""
        self._discover()
        return list(self._specs)

    def get(self, name: str) -> Backend:
        """Return the backend called *name*, importing it on first use."""
        if name in self._loaded:
            return self._loaded[name]
        if not self._specs.get(name):
            # Only for names not built in: scanning the installed packages'
            # entry points costs ~15 ms, which a hit on a built-in format (a
            # fresh process loading one result) need not pay, and a built-in
            # name always wins over an entry point's anyway.
            self._discover()
        spec = self._specs.get(name)
        if not spec:
            known = ", ".join(self.names())
            raise UnsupportedTypeError(f"no backend called {name!r}; known backends: {known}")
        module_name, _, attr = spec.partition(":")
        try:
            # A spec names a Backend subclass: the built-ins' and the entry-point contract.
            cls: type[Backend] = getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            raise BackendError(
                f"backend {name!r} needs a package that is not installed ({exc.name}); "
                f"install it, e.g. `pip install {exc.name}`"
            ) from exc
        instance = cls()
        self._loaded[name] = instance
        return instance

    def __iter__(self) -> Iterator[Backend]:
        for name in self.names():
            try:
                yield self.get(name)
            except BackendError:
                continue  # an optional plugin whose dependency is missing

    def choose(self, obj: Any, *, allow_unsafe: bool = True) -> Backend:
        """Return the first automatic backend that can save *obj*."""
        for backend in self:
            if not backend.auto or (backend.unsafe and not allow_unsafe):
                continue
            if backend.can_save(obj):
                return backend
        hint = (
            "the store was opened with safe=True, which never pickles; "
            if not allow_unsafe
            else ""
        )
        raise UnsupportedTypeError(
            f"no backend can store a {type(obj).__qualname__}; {hint}"
            "convert it to arrays/dicts, or register a backend (entry point "
            f"group {ENTRY_POINT_GROUP!r})"
        )

    def for_suffix(self, filename: str) -> Backend:
        """Return the backend that ingests files named like *filename*."""
        lowered = filename.lower()
        best: tuple[int, Backend] | None = None
        for backend in self:
            for suffix in backend.suffixes:
                if lowered.endswith(suffix) and (best is None or len(suffix) > best[0]):
                    best = (len(suffix), backend)
        return best[1] if best else self.get("raw")


registry = BackendRegistry()
