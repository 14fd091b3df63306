"""Nested dicts, lists and tuples of arrays and scalars as HDF5 files (PyTables).

Layout, chosen to look natural from MATLAB, h5py and PyTables::

    {"W": W, "b": b, "meta": {"name": "aam"}}    ->   /W  /b  /meta/name
    [x, y]                                        ->   /0  /1

A dict, list or tuple is a group; an array is a contiguous dataset (a chunked
``CArray`` with ``chunked=True`` or ``compress=...``); a scalar is a 0-d
dataset; a ``str`` is a UTF-8 byte string. What HDF5 cannot say by itself is
written in string attributes (never pickled): ``PROVSTORE_TYPE`` (``dict``,
``list``, ``tuple``, ``none``, ``ndarray``, ``numpy_scalar``, ``int``,
``float``, ``bool``, ``complex``, ``str``, ``bytes``), ``PROVSTORE_DTYPE``
(the numpy dtype, as in ``.npy`` headers), ``PROVSTORE_INDEX`` (a dict key's
position, so key order survives), and ``PROVSTORE_KEY`` (the original key
when it is no valid node name, e.g. contains ``/``). Numpy types HDF5 lacks
are mapped: unicode -> UTF-8 bytes, datetime64 -> int64, structured ->
table (or raw bytes when a field has no HDF5 type).

Files written elsewhere load too: untagged groups become dicts, datasets
arrays, tables structured arrays, variable-length arrays lists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from ..errors import BackendError, UnsupportedTypeError
from .base import Backend
from .hdf5_read import (
    DTYPE,
    FORMAT,
    INDEX,
    KEY,
    SHAPE,
    TYPE,
    H5Array,
    H5Group,
    H5List,
    Handle,
    packed,
    quiet,
    read_lazy,
    read_node,
    reading,
    tag_of,
)

__all__ = ["H5Array", "H5Group", "H5List", "Hdf5Backend"]

FORMAT_VERSION = "1"
_ESCAPED = "PROVSTORE_KEY_"
_HIDDEN = re.compile(r"_[cfgvpi]_")  # PyTables reserves or hides names with these prefixes
_SCALARS: dict[type, str] = {bool: "bool", int: "int", float: "float", complex: "complex",
                             str: "str", bytes: "bytes", type(None): "none"}
_CONTAINERS: dict[type, str] = {dict: "dict", list: "list", tuple: "tuple"}
_OPTIONS = frozenset({"compress", "complib", "shuffle", "chunked"})
MAX_NODES = 10_000  # groups and datasets in one file; see _few_nodes
_TABLE_KINDS = frozenset("biufcS")
_I64 = np.iinfo(np.int64)


class Hdf5Backend(Backend):
    """Nested containers of arrays and scalars in one HDF5 file, through PyTables.

    Values: ``dict`` (``str`` keys), ``list`` and ``tuple`` nesting numpy
    arrays (not object dtype), numpy scalars, and Python ``int``, ``float``,
    ``bool``, ``complex``, ``str``, ``bytes`` and ``None``. They load back
    with the same types, keys in the same order, arrays in memory; or, with
    ``lazy=True``, as views that read nodes on access.

    Save options: ``chunked=True`` stores arrays chunked; ``compress=True``
    (or a level 1-9) compresses them with ``complib`` (default ``"zlib"``,
    which every HDF5 reader has; ``"blosc2:zstd"`` is faster but needs the
    Blosc2 filter plugin outside PyTables) and ``shuffle`` (default True).
    """

    name = "hdf5"
    suffixes = (".h5", ".hdf5")

    def can_save(self, obj: Any) -> bool:
        """Return whether *obj* is a (nested) value this backend stores exactly."""
        try:
            return _few_nodes(obj, MAX_NODES) and _storable(obj, set())
        except RecursionError:
            return False

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Write *obj* to a new HDF5 file at *path*.

        Returns
        -------
        dict
            ``{"type": "dict" | "list" | "tuple" | <leaf tag>}``.
        """
        import tables

        filters = _filters(options)
        if not self.can_save(obj):
            raise UnsupportedTypeError(
                f"the hdf5 backend cannot store a {type(obj).__qualname__} exactly: it takes "
                "dicts with str keys, lists and tuples of numpy arrays/scalars and Python "
                "scalars, str, bytes and None"
            )
        try:
            with quiet(), tables.open_file(str(path), "w") as f:
                root = f.root
                root._v_attrs[FORMAT] = FORMAT_VERSION
                if type(obj) in _CONTAINERS:
                    _fill(f, root, obj, filters)
                    tag = _CONTAINERS[type(obj)]
                else:
                    tag = str(tag_of(_write(f, root, "value", obj, filters)))
                    root._v_attrs[TYPE] = "value"
        except (tables.HDF5ExtError, OSError, ValueError, TypeError) as exc:
            Path(path).unlink(missing_ok=True)
            raise BackendError(f"PyTables failed to write {Path(path).name}: {exc}") from exc
        return {"type": tag}

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             lazy: bool = False, **options: Any) -> Any:
        """Read the value at *path* (``mmap_mode`` is ignored: HDF5 is read, not mapped).

        Parameters
        ----------
        path : Path
            An HDF5 file, written by this backend or not.
        metadata : dict
            Metadata from :meth:`save` (unused: the file describes itself).
        mmap_mode : str or None
            Ignored.
        lazy : bool
            Return an :class:`H5Group` / :class:`H5List` view that keeps the
            file open and reads nodes on access (arrays as :class:`H5Array`,
            sliceable). Close it, or use it as a context manager.

        Raises
        ------
        CorruptObjectError
            If the file is missing, truncated or not HDF5.
        BackendError
            If the file holds nodes this backend cannot read (external links,
            variable-length strings...).
        """
        import tables

        if options:
            raise BackendError(f"unknown hdf5 load options {sorted(options)}; only lazy=True")
        # reading() also refuses PyTables' unpickling of attributes.
        with reading(path):
            handle = Handle(tables.open_file(str(path), "r"))
        if not lazy:
            try:
                with reading(path):
                    return read_node(handle.file.root, set())
            finally:
                handle.close()
        with reading(path):
            root = handle.file.root
            if tag_of(root) == "value":
                return read_lazy(handle, root._f_get_child("value"), set())
            return read_lazy(handle, root, set())

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return ``{"type"}`` plus the first keys (dict) or the length (list, tuple)."""
        summary: dict[str, Any] = {"type": type(obj).__qualname__}
        if type(obj) is dict:
            summary["keys"] = list(obj)[:20]
            summary["len"] = len(obj)
        elif type(obj) in (list, tuple):
            summary["len"] = len(obj)
        elif isinstance(obj, (np.ndarray, np.generic)):
            summary.update(dtype=str(obj.dtype), shape=list(np.shape(obj)))
        return summary


# ----------------------------------------------------------------------------- checks
def _few_nodes(obj: Any, limit: int) -> bool:
    """Whether *obj* makes at most *limit* HDF5 nodes.

    Every element of a list becomes a node, and PyTables spends ~0.1 ms per
    node: a 300,000-element list of floats would take a minute to write and
    more to read. Such values belong in an array (or JSON), not a tree.
    """
    stack, count = [obj], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return False
        if type(item) is dict:
            stack.extend(item.values())
        elif type(item) in (list, tuple):
            stack.extend(item)
    return True


def _storable(obj: Any, active: set[int]) -> bool:
    kind = type(obj)
    if kind in _SCALARS:
        return True
    if kind is np.ndarray or kind is np.memmap or isinstance(obj, np.generic):
        dt = obj.dtype
        return not dt.hasobject and getattr(type(dt), "_legacy", True) and dt.itemsize > 0
    if kind not in _CONTAINERS or id(obj) in active:
        return False  # unknown type, or a cycle
    active.add(id(obj))
    try:
        if kind is dict:
            return all(_valid_key(k) and _storable(v, active) for k, v in obj.items())
        return all(_storable(item, active) for item in obj)
    finally:
        active.discard(id(obj))


def _valid_key(key: Any) -> bool:
    # HDF5 names are NUL-terminated UTF-8: a key with NUL or a lone surrogate has no name.
    if type(key) is not str or "\x00" in key:
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain_name(key: str) -> bool:
    """Whether *key* can be a node name as is (others are escaped).

    A name ending in "." is valid HDF5, but PyTables then lists no child of
    the group at all (found by hypothesis): it is escaped too.
    """
    return bool(key) and "/" not in key and not key.endswith(".") and key != "__members__" \
        and not _HIDDEN.match(key) and not key.startswith(_ESCAPED)


def _filters(options: dict[str, Any]) -> Any:
    import tables

    unknown = set(options) - _OPTIONS
    if unknown:
        raise UnsupportedTypeError(
            f"unknown hdf5 option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}"
        )
    compress = options.get("compress", False)
    if not compress and not options.get("chunked"):
        return None
    if not compress:
        return tables.Filters()
    level = 1 if compress is True else compress
    if type(level) is not int or not 1 <= level <= 9:
        raise UnsupportedTypeError(f"compress must be True or a level 1-9, not {compress!r}")
    complib = options.get("complib", "zlib")
    if complib not in tables.filters.all_complibs or not tables.which_lib_version(
        complib.partition(":")[0]
    ):
        raise UnsupportedTypeError(f"compression library {complib!r} is not available here")
    return tables.Filters(complevel=level, complib=complib, shuffle=options.get("shuffle", True))


# ----------------------------------------------------------------------------- writing
def _fill(f: Any, group: Any, value: Any, filters: Any) -> None:
    group._v_attrs[TYPE] = _CONTAINERS[type(value)]
    if type(value) is not dict:
        for i, item in enumerate(value):
            _write(f, group, str(i), item, filters)
        return
    for i, (key, item) in enumerate(value.items()):
        plain = _plain_name(key)
        node = _write(f, group, key if plain else f"{_ESCAPED}{i}", item, filters)
        node._v_attrs[INDEX] = i
        if not plain:
            node._v_attrs[KEY] = key


def _write(f: Any, group: Any, name: str, value: Any, filters: Any) -> Any:
    kind = type(value)
    if kind in _CONTAINERS:
        node = f.create_group(group, name)
        _fill(f, node, value, filters)
        return node
    if value is None:
        node = f.create_group(group, name)
        node._v_attrs[TYPE] = "none"
        return node
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        node = _write_array(f, group, name, arr, filters)
        node._v_attrs[DTYPE] = repr(npformat.dtype_to_descr(arr.dtype))
        node._v_attrs[TYPE] = "ndarray" if isinstance(value, np.ndarray) else "numpy_scalar"
        return node
    node = f.create_array(group, name, obj=_scalar_array(value))
    node._v_attrs[TYPE] = _SCALARS[kind]
    return node


def _scalar_array(value: Any) -> np.ndarray:
    if type(value) is int and not _I64.min <= value <= _I64.max:
        return np.array(hex(value).encode())  # hex: no digit limit, unlike str(int)
    if type(value) in (str, bytes):
        raw = value.encode("utf-8", "surrogatepass") if type(value) is str else value
        # numpy drops trailing NULs from byte strings: keep those as uint8 instead.
        return np.frombuffer(raw, np.uint8) if raw.endswith(b"\x00") else np.array(raw)
    return np.array(value)


def _write_array(f: Any, group: Any, name: str, arr: np.ndarray, filters: Any) -> Any:
    stored, table = _to_stored(arr)
    if table:
        node = f.create_table(group, name, obj=stored)
        node._v_attrs[SHAPE] = json.dumps(list(arr.shape))
    elif filters is not None and stored.ndim > 0 and stored.size > 0:
        node = f.create_carray(group, name, obj=stored, filters=filters)
    else:
        node = f.create_array(group, name, obj=stored)
    return node


def _to_stored(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """Map *arr* to a dtype PyTables stores; True when it must become a table."""
    dt = arr.dtype
    if dt.kind == "U":
        return np.char.encode(arr, "utf-8", "surrogatepass").reshape(arr.shape), False
    if dt.kind in "Mm":
        return arr.view(np.dtype("i8").newbyteorder(dt.byteorder)), False
    if dt.names is not None and _table_ok(dt):
        # Tables need one byte order and no gaps; the exact dtype is restored on load.
        return arr.astype(packed(dt)).reshape(-1), True
    if dt.kind == "V":  # fields HDF5 cannot type, or opaque void: keep the bytes
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        return flat.reshape((*arr.shape, dt.itemsize)), False
    return arr, False


def _table_ok(dt: np.dtype[Any]) -> bool:
    if dt.names is not None:
        return all(_valid_key(n) and _plain_name(n) and _table_ok(dt.fields[n][0])  # type: ignore[index]
                   for n in dt.names)
    if dt.subdtype is not None:
        return _table_ok(dt.subdtype[0])
    return dt.kind in _TABLE_KINDS and dt.itemsize > 0


