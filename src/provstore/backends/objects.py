"""User objects (dataclasses, attrs and plain classes) as HDF5 files, without pickle.

An object whose state is storable values — scalars, strings, arrays, lists,
tuples and dicts of those, and further such objects — is written as the
:mod:`~provstore.backends.hdf5` tree of its state, plus a manifest naming the
class of every object in the tree. Loading imports each class and rebuilds
the object with ``cls.__new__(cls)`` and its state (``__setstate__`` when the
class defines it), so no pickle is involved, and ``__init__`` is not called.

Two registries keep old files loadable and safe stores safe:

- :func:`rename` maps a class path that no longer exists to its new home;
  a class attribute ``__provstore_renames__ = {"old_attr": "new_attr"}``
  renames attributes of state written before a refactor.
- :func:`trust` lists the classes a store opened with ``safe=True`` may
  rebuild: any other class raises :class:`~provstore.errors.UnsafeLoadError`.
"""

from __future__ import annotations

import enum
import importlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, CorruptObjectError, UnsafeLoadError, UnsupportedTypeError
from .base import Backend
from .hdf5 import Hdf5Backend
from .hdf5_read import no_unpickling

__all__ = ["ObjectsBackend", "class_path", "is_trusted", "rename", "trust", "unrename",
           "untrust"]

MANIFEST = "PROVSTORE_OBJECTS"
"""Root attribute of the file: JSON list of ``{"path", "class", "state"}``."""
RENAMES_ATTRIBUTE = "__provstore_renames__"

_lock = threading.Lock()
_trusted: set[str] = set()
_renamed: dict[str, str] = {}
_LEAVES = (bool, int, float, complex, str, bytes, type(None))
_CONTAINERS = (dict, list, tuple)
_HDF5 = Hdf5Backend()
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set for classes created by class statements


# ----------------------------------------------------------------------------- registries
def class_path(cls: type) -> str:
    """Return the path recorded for *cls*: ``"module:Qualified.Name"``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _path_of(cls: type | str) -> str:
    if isinstance(cls, str):
        if ":" not in cls:
            raise ValueError(f"a class path looks like 'package.module:Class', not {cls!r}")
        return cls
    return class_path(cls)


def trust(*classes: type | str) -> None:
    """Let stores opened with ``safe=True`` rebuild objects of *classes*.

    Parameters
    ----------
    *classes : type or str
        Classes, or their paths ``"package.module:Class"`` (a path needs no
        import). Trust is per process and applies to every store; call it
        before loading, e.g. next to the class definition.
    """
    with _lock:
        _trusted.update(_path_of(c) for c in classes)


def untrust(*classes: type | str) -> None:
    """Undo :func:`trust` for *classes* (unknown ones are ignored)."""
    with _lock:
        _trusted.difference_update(_path_of(c) for c in classes)


def is_trusted(cls: type | str) -> bool:
    """Return whether :func:`trust` was called for *cls* (or its path)."""
    return _path_of(cls) in _trusted


def rename(old_path: str, new_path: type | str) -> None:
    """Load objects stored as class *old_path* as *new_path* (a moved or renamed class).

    Parameters
    ----------
    old_path : str
        The path recorded in old files, ``"oldpackage.module:OldName"``.
    new_path : type or str
        The class now, or its path. Trust (:func:`trust`) is checked
        against the new class.
    """
    with _lock:
        _renamed[_path_of(old_path)] = _path_of(new_path)


def unrename(old_path: str) -> None:
    """Undo :func:`rename` for *old_path* (unknown paths are ignored)."""
    with _lock:
        _renamed.pop(_path_of(old_path), None)


# ----------------------------------------------------------------------------- backend
class ObjectsBackend(Backend):
    """Instances of user classes whose state is storable values, in HDF5 (PyTables).

    Taken: instances of importable (module-level) classes that use the
    default ``__reduce__`` and either have a ``__dict__`` and/or
    ``__slots__``, or define ``__getstate__`` (and then ``__setstate__``
    rebuilds them); and lists, tuples, dicts holding such objects. Their
    state may hold what the hdf5 backend stores and further such objects
    (nested; an object shared twice comes back as two copies; no cycles).
    Refused, for a later backend: enums, classes defined inside functions,
    classes with a custom ``__reduce__``, and state holding anything else
    (functions, sets, open files...).

    The file is an ordinary provstore HDF5 file of the state tree (each
    object a group of its attributes) with a root attribute
    ``PROVSTORE_OBJECTS`` listing the classes: ``tables.open_file`` and
    h5py open it. Loading never unpickles; under ``safe=True`` only classes
    passed to :func:`trust` are rebuilt.
    """

    name = "objects"
    suffixes = (".h5",)
    checks_trust = True

    def can_save(self, obj: Any) -> bool:
        """Return whether *obj* is a user object (or a list, tuple, dict holding some)
        whose whole state is storable."""
        if not (_is_user_object(obj) or type(obj) in _CONTAINERS):
            return False
        try:
            tree, manifest = _flatten(obj)
        except (_NotStorable, RecursionError):
            return False
        return bool(manifest) and _HDF5.can_save(tree)

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Write the state tree of *obj* and its class manifest to *path*.

        Returns
        -------
        dict
            ``{"class": path of obj's class, "classes": every class path}``.
        """
        if not self.can_save(obj):
            raise UnsupportedTypeError(
                f"the objects backend cannot store a {type(obj).__qualname__}: it takes "
                "instances of module-level classes whose state holds only arrays, scalars, "
                "strings, lists/tuples/dicts of those and further such objects"
            )
        tree, manifest = _flatten(obj)
        _HDF5.save(tree, path, **options)
        try:
            import tables  # PyTables is a core dependency, imported lazily like hdf5 does

            with tables.open_file(str(path), "a") as f:
                f.root._v_attrs[MANIFEST] = json.dumps(manifest)
        except (tables.HDF5ExtError, OSError, ValueError) as exc:
            Path(path).unlink(missing_ok=True)
            raise BackendError(f"PyTables failed to write {Path(path).name}: {exc}") from exc
        return {"class": class_path(type(obj)),
                "classes": sorted({entry["class"] for entry in manifest})}

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             safe: bool = True, **options: Any) -> Any:
        """Rebuild the object stored at *path*, importing its classes.

        Parameters
        ----------
        safe : bool
            Rebuild only classes passed to :func:`trust` (the store passes
            its own ``safe`` flag; callers that do not say get the safe
            behaviour).

        Raises
        ------
        UnsafeLoadError
            If *safe* and a class in the file is not trusted.
        BackendError
            If a class cannot be imported or rejects its state.
        CorruptObjectError
            If the file is missing, damaged or not written by this backend.
        """
        if options:
            raise BackendError(f"the objects backend takes no load options, got {sorted(options)}")
        manifest = _read_manifest(Path(path))
        classes = _resolve(manifest, Path(path), safe)
        tree = _HDF5.load(path, {}, mmap_mode=None)
        entries = {tuple(e["path"]): (classes[e["class"]], e["state"]) for e in manifest}
        try:
            return _rebuild(tree, (), entries)
        except (KeyError, IndexError, TypeError) as exc:
            raise CorruptObjectError(f"{path}: the object manifest does not match the data "
                                     f"({exc!r})") from exc

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return ``{"type": "module:Class"}``."""
        return {"type": class_path(type(obj))}


# ----------------------------------------------------------------------------- saving
class _NotStorable(Exception):
    """Raised inside the walk when a value has no storable form."""


def _is_user_object(obj: Any) -> bool:
    kind = type(obj)
    if kind in _LEAVES or kind in _CONTAINERS or isinstance(obj, (np.ndarray, np.generic, type)):
        return False
    if isinstance(obj, enum.Enum) or kind.__module__ == "builtins":
        return False
    if "<locals>" in kind.__qualname__:
        return False  # no path to import it from when loading
    if not all(klass is object or _python_class(klass) for klass in kind.__mro__):
        return False  # a dict/list/int/exception subclass keeps data outside __dict__
    # A class with its own __reduce__ follows pickle's protocol, which we do not replay.
    if _overrides_object(kind, "__reduce_ex__") or _overrides_object(kind, "__reduce__"):
        return False
    if _custom_getstate(kind):
        return True
    return hasattr(obj, "__dict__") or bool(_slot_names(kind))


def _python_class(klass: type) -> bool:
    """Whether *klass* is a class statement's (its instances' data is in __dict__/slots).

    Built-in and C extension types (not heap types) keep their data in C
    fields that neither ``__dict__`` nor ``__slots__`` show.
    """
    return bool(klass.__flags__ & _HEAPTYPE) and klass.__module__ != "builtins"


def _overrides_object(kind: type, name: str) -> bool:
    """Whether *kind* (or a base) replaces ``object``'s method *name*.

    Looked up on the class, as pickle does: an inherited method is the very
    object ``object`` holds, an override any other. (``getattr`` because
    typing sees ``kind.__reduce__`` as bound and ``object.__reduce__`` as
    unbound, which could never be the same object.)
    """
    return getattr(kind, name) is not getattr(object, name)


def _custom_getstate(kind: type) -> bool:
    default = getattr(object, "__getstate__", None)  # Python >= 3.11 has a default
    own = getattr(kind, "__getstate__", None)
    return own is not None and own is not default


def _slot_names(kind: type) -> list[str]:
    names: list[str] = []
    for klass in kind.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in [slots] if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and name not in names:
                names.append(name)
    return names


def _state(obj: Any) -> tuple[Any, str]:
    kind = type(obj)
    if _custom_getstate(kind):
        if not hasattr(kind, "__setstate__"):
            raise _NotStorable("__getstate__ without __setstate__")
        return obj.__getstate__(), "setstate"
    state = dict(getattr(obj, "__dict__", {}))
    for name in _slot_names(kind):
        if hasattr(obj, name):
            state[name] = getattr(obj, name)
    return state, "attributes"


def _flatten(obj: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Return (state tree, manifest): objects replaced by their state, listed by path."""
    manifest: list[dict[str, Any]] = []
    tree = _walk(obj, [], manifest, set())
    return tree, manifest


def _walk(value: Any, path: list[Any], manifest: list[dict[str, Any]], active: set[int]) -> Any:
    kind = type(value)
    if kind in _LEAVES or isinstance(value, (np.ndarray, np.generic)):
        return value
    if id(value) in active:
        raise _NotStorable("a cycle")
    active.add(id(value))
    try:
        if kind is dict:
            if not all(type(k) is str for k in value):
                raise _NotStorable("non-str keys")
            return {k: _walk(v, [*path, k], manifest, active) for k, v in value.items()}
        if kind in (list, tuple):
            return kind(_walk(v, [*path, i], manifest, active) for i, v in enumerate(value))
        if not _is_user_object(value):
            raise _NotStorable(kind.__qualname__)
        state, how = _state(value)
        if _is_user_object(state):
            raise _NotStorable("__getstate__ returned an object")  # one class per path
        manifest.append({"path": path, "class": class_path(kind), "state": how})
        return _walk(state, path, manifest, active)
    finally:
        active.discard(id(value))


# ----------------------------------------------------------------------------- loading
def _read_manifest(path: Path) -> list[dict[str, Any]]:
    import tables  # core dependency, imported lazily like the hdf5 backend does

    try:
        with no_unpickling(), tables.open_file(str(path), "r") as f:
            attrs = f.root._v_attrs
            raw = attrs._g_getattr(attrs._v_node, MANIFEST) \
                if MANIFEST in attrs._v_attrnames else None
    except FileNotFoundError as exc:
        raise CorruptObjectError(f"{path} is missing") from exc
    except (tables.HDF5ExtError, OSError, ValueError, EOFError) as exc:
        raise CorruptObjectError(f"{path} is not a readable HDF5 file: {exc}") from exc
    if raw is None:
        raise CorruptObjectError(f"{path} has no {MANIFEST} attribute: it was not written "
                                 "by the objects backend")
    try:
        manifest = json.loads(str(raw.decode() if isinstance(raw, bytes) else raw))
        if not all(isinstance(e["path"], list) and isinstance(e["class"], str)
                   and e["state"] in ("setstate", "attributes") for e in manifest):
            raise ValueError("unexpected entries")
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptObjectError(f"{path}: its {MANIFEST} attribute is damaged ({exc})") from exc
    return list(manifest)


def _resolve(manifest: list[dict[str, Any]], path: Path, safe: bool) -> dict[str, type]:
    recorded = {e["class"] for e in manifest}
    current = {old: _renamed.get(old, old) for old in recorded}
    if safe:
        untrusted = sorted(new for new in current.values() if new not in _trusted)
        if untrusted:
            listed = ", ".join(untrusted)
            raise UnsafeLoadError(
                f"{path.name} holds objects of {listed}, not trusted while the store is opened "
                f"with safe=True; call provstore.backends.objects.trust(<class>) for each "
                f"(e.g. trust({untrusted[0]!r})) if you trust them"
            )
    return {old: _import_class(new, old) for old, new in current.items()}


def _import_class(new: str, old: str) -> type:
    module_name, _, qualname = new.partition(":")
    hint = f"; if {old} moved, call provstore.backends.objects.rename({old!r}, NewClass)"
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise BackendError(f"cannot import class {new} ({exc}){hint}") from exc
    if not isinstance(found, type):
        raise BackendError(f"{new} is not a class{hint}")
    return found


def _rebuild(value: Any, path: tuple[Any, ...], entries: dict[tuple[Any, ...], Any]) -> Any:
    kind = type(value)
    if kind is dict:
        value = {k: _rebuild(v, (*path, k), entries) for k, v in value.items()}
    elif kind in (list, tuple):
        value = kind(_rebuild(v, (*path, i), entries) for i, v in enumerate(value))
    entry = entries.get(path)
    if entry is None:
        return value
    cls, how = entry
    return _instantiate(cls, value, how)


def _instantiate(cls: type, state: Any, how: str) -> Any:
    try:
        obj: Any = cls.__new__(cls)  # type: ignore[call-overload]
        if how == "setstate":
            obj.__setstate__(state)
            return obj
        renames = getattr(cls, RENAMES_ATTRIBUTE, {})
        slots = set(_slot_names(cls))
        for key, item in state.items():
            key = renames.get(key, key)
            if key in slots or not hasattr(obj, "__dict__"):
                object.__setattr__(obj, key, item)
            else:
                obj.__dict__[key] = item
    except (TypeError, AttributeError, ValueError) as exc:
        raise BackendError(f"cannot rebuild a {class_path(cls)} from its stored state ({exc}); "
                           f"give the class __setstate__ or {RENAMES_ATTRIBUTE}") from exc
    return obj
