"""Reading HDF5 files for the hdf5 backend: whole values and lazy views.

Split from :mod:`provstore.backends.hdf5` (writing) to keep each module short.
Files are read without ever unpickling: provstore writes no pickled
attributes, and PyTables' own unpickling of attributes that look pickled is
refused for as long as provstore reads (see :func:`no_unpickling`), so an
HDF5 file from elsewhere cannot run code, whatever ``safe`` says.
"""

from __future__ import annotations

import ast
import contextvars
import json
import os
import pickle
import re
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from ..errors import BackendError, CorruptObjectError, ProvstoreError, UnsafeLoadError
from . import limits

__all__ = ["H5Array", "H5Group", "H5List", "no_unpickling"]

TYPE, DTYPE, SHAPE = "PROVSTORE_TYPE", "PROVSTORE_DTYPE", "PROVSTORE_SHAPE"
KEY, INDEX, FORMAT = "PROVSTORE_KEY", "PROVSTORE_INDEX", "PROVSTORE_FORMAT"
_MISSING_FILTER = re.compile(r"required filter '([^']*)' is not registered")
_refusing: contextvars.ContextVar[bool] = contextvars.ContextVar("provstore_h5", default=False)
_install_lock = threading.Lock()


class _GuardedPickle:
    """Stands in for the pickle module inside PyTables' attribute reader.

    PyTables unpickles any attribute whose bytes end in ``.`` when it is
    read. While provstore reads, ``loads`` refuses; PyTables then keeps the
    raw bytes (it treats a failed unpickling as "not a pickle").
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)

    def loads(self, data: bytes, *args: Any, **kwargs: Any) -> Any:
        if _refusing.get():
            raise UnsafeLoadError("provstore never unpickles HDF5 attributes")
        return pickle.loads(data, *args, **kwargs)


@contextmanager
def no_unpickling() -> Iterator[None]:
    """Refuse PyTables' attribute unpickling in this thread/task for the block."""
    import tables.attributeset as attributeset

    with _install_lock:
        if not isinstance(attributeset.pickle, _GuardedPickle):
            attributeset.pickle = _GuardedPickle()
    token = _refusing.set(True)
    try:
        yield
    finally:
        _refusing.reset(token)


def packed(dt: np.dtype[Any]) -> np.dtype[Any]:
    """*dt* without padding and in native order (how PyTables stores records)."""
    if dt.names is not None:
        return np.dtype([(n, packed(dt.fields[n][0])) for n in dt.names])  # type: ignore[index]
    if dt.subdtype is not None:
        return np.dtype((packed(dt.subdtype[0]), dt.subdtype[1]))
    return dt.newbyteorder("=") if dt.byteorder in "<>" else dt


# ----------------------------------------------------------------------------- reading
@contextmanager
def quiet() -> Iterator[None]:
    """Silence PyTables' warnings about names, flavors and node types it cannot map.

    Names like ``"0"`` are valid HDF5 but not Python identifiers, and
    foreign files trigger flavor/index/unimplemented-node warnings that this
    module turns into values or clear errors itself.
    """
    import tables

    with warnings.catch_warnings():
        for category in (tables.NaturalNameWarning, tables.FlavorWarning,
                         tables.PerformanceWarning, tables.DataTypeWarning,
                         tables.OldIndexWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("ignore", "problems loading leaf", UserWarning)
        warnings.filterwarnings("ignore", "Unsupported type for attribute", UserWarning)
        yield


@contextmanager
def reading(path: Any, *, strict: bool = True) -> Iterator[None]:
    """Map PyTables/HDF5 failures to CorruptObjectError.

    *strict* (opening, whole reads) also maps ValueError and friends, which
    garbled metadata raises; a lazy view's indexing does not, because there
    they mean a bad index from the caller.
    """
    import tables

    failures: tuple[type[BaseException], ...] = (tables.HDF5ExtError, OSError)
    if strict:
        # Damaged metadata also surfaces as SystemError (a negative size in
        # PyTables' C code), OverflowError, KeyError, TypeError or MemoryError.
        failures += (EOFError, ValueError, SyntaxError, tables.NoSuchNodeError, SystemError,
                     OverflowError, KeyError, TypeError, MemoryError, RecursionError)
    try:
        with quiet(), no_unpickling():
            yield
    except UnsafeLoadError as exc:
        for handler in list(tables.file._open_files.get_handlers_by_name(str(path))):
            handler.close()  # PyTables leaves a file open when its open_file fails
        raise UnsafeLoadError(
            f"{path} stores attributes pickled (PyTables 1.x files do), and provstore never "
            "unpickles; convert it with `ptrepack` from a trusted environment"
        ) from exc
    except ProvstoreError:
        raise  # already says what is wrong (a limit, a corrupt node)
    except failures as exc:
        missing = _MISSING_FILTER.search(str(exc))
        if missing:  # a compression plugin (lzo, szip...) is absent: the file is fine
            raise BackendError(
                f"{path} uses the HDF5 filter {missing[1]!r}, which is not installed here; "
                "install its plugin or re-save the file without it"
            ) from exc
        raise CorruptObjectError(f"{path} is not a readable HDF5 file: {exc}") from exc


class Handle:
    """One open file shared by lazy views; closed by close() or when none is left."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self._finalizer = weakref.finalize(self, file.close)

    def close(self) -> None:
        self._finalizer()

    def check(self) -> None:
        if not self.file.isopen:
            raise BackendError("the lazy HDF5 view was closed")


def _attr(node: Any, name: str) -> Any:
    """Return attribute *name* of *node* as stored, or None.

    ``node._v_attrs[name]`` would unpickle a value that looks pickled; a file
    from elsewhere must never get to run code through our tags.
    """
    attrs = node._v_attrs
    if name not in attrs._v_attrnames:
        return None
    return attrs._g_getattr(attrs._v_node, name)


def tag_of(node: Any) -> str | None:
    value = _attr(node, TYPE)
    return None if value is None else str(value)


def _children(group: Any) -> list[tuple[str, Any]]:
    """(key, node) pairs of *group*, in dict order when recorded, else by name."""
    import tables

    entries: list[tuple[str, Any, int | None]] = []
    for name, node in group._v_children.items():
        if isinstance(node, tables.link.Link):
            entries.append((name, node, None))
            continue
        key, index = _attr(node, KEY), _attr(node, INDEX)
        entries.append((name if key is None else str(key), node,
                        None if index is None else int(index)))
    entries.sort(key=lambda e: (e[2] is None, e[2] or 0, e[0]))
    return [(key, node) for key, node, _ in entries]


def _items(group: Any) -> list[Any]:
    nodes = {int(name): node for name, node in group._v_children.items() if name.isdigit()}
    if sorted(nodes) != list(range(len(group._v_children))):
        raise BackendError(f"{group._v_pathname} is tagged as a sequence but has other children")
    return [nodes[i] for i in range(len(nodes))]


def _deref(node: Any, active: set[str]) -> Any:
    """Follow soft links (refusing cycles); refuse external links."""
    import tables

    if isinstance(node, tables.link.ExternalLink):
        raise BackendError(f"{node._v_pathname} is an external link to {node.target}, which "
                           "is not followed; copy the target into the file")
    if isinstance(node, tables.link.SoftLink):
        target = node()
        if target is None:
            raise BackendError(f"{node._v_pathname} is a dangling soft link to {node.target}")
        node = target
    if node._v_pathname in active:
        raise BackendError(f"{node._v_pathname} links back to a group that contains it")
    return node


def read_node(node: Any, active: set[str]) -> Any:
    import tables

    node = _deref(node, active)
    tag = tag_of(node)
    if not isinstance(node, tables.Group):
        return _read_leaf(node, tag, None)
    if tag == "none":
        return None
    if tag == "value":
        return read_node(node._f_get_child("value"), active)
    active = active | {node._v_pathname}
    if tag in ("list", "tuple"):
        items = [read_node(child, active) for child in _items(node)]
        return items if tag == "list" else tuple(items)
    return {key: read_node(child, active) for key, child in _children(node)}


def _read_leaf(node: Any, tag: str | None, key: Any) -> Any:
    """Read a dataset (all of it, or ``node[key]``) and restore its Python type."""
    import tables

    if isinstance(node, tables.UnImplemented) or not isinstance(
        node, (tables.Array, tables.Table, tables.VLArray)
    ):
        raise BackendError(f"{node._v_pathname} is a {type(node).__name__} node, which "
                           "PyTables cannot read; use lazy=True to read the other nodes")
    if isinstance(node, tables.VLArray):
        return node.read() if key is None else node[key]
    if isinstance(node, tables.Table) and _nested_gaps(node.dtype):
        raise BackendError(f"{node._v_pathname} is a table whose nested records have gaps, "
                           "which PyTables reads past its buffer (memory corruption)")
    if key is None:
        _check_declared(node)
    raw = np.asarray(node.read() if key is None else node[key])
    if tag not in (None, "ndarray", "numpy_scalar"):
        return _python_scalar(raw, tag, node)
    arr = _restore(raw, node)
    # Indexing down to one element gives a numpy scalar, as it would in memory.
    return arr[()] if tag == "numpy_scalar" or (key is not None and arr.ndim == 0) else arr


def _check_declared(node: Any) -> None:
    """Refuse to read a dataset whose declared size the file cannot plausibly hold.

    Chunked datasets may be compressed, or not written at all (HDF5 then
    returns the fill value): a few bytes can declare terabytes.
    """
    filename = node._v_file.filename
    declared = limits.declared_bytes(node.shape, node.dtype.itemsize)
    chunked = getattr(node, "chunkshape", None) is not None
    limits.check_declared(f"{filename}:{node._v_pathname}", declared, what="array data",
                          compressed_size=os.path.getsize(filename) if chunked else None)


def _nested_gaps(dt: np.dtype[Any]) -> bool:
    """Whether a record nested in *dt* has padding (top-level padding is fine)."""
    for name in dt.names or ():
        sub = dt.fields[name][0]  # type: ignore[index]
        base = sub.subdtype[0] if sub.subdtype is not None else sub
        if base.names is not None and (base.itemsize != packed(base).itemsize
                                       or _nested_gaps(base)):
            return True
    return False


def _python_scalar(raw: np.ndarray, tag: str, node: Any) -> Any:
    if tag in ("str", "bytes"):
        data = raw.tobytes() if raw.dtype == np.uint8 else bytes(raw[()])
        return data.decode("utf-8", "surrogatepass") if tag == "str" else data
    if tag == "int":
        return int(bytes(raw[()]), 16) if raw.dtype.kind == "S" else int(raw[()])
    converters = {"float": float, "bool": bool, "complex": complex}
    if tag not in converters:
        raise BackendError(f"{node._v_pathname} has type tag {tag!r}, unknown to this "
                           "provstore; upgrade provstore")
    return converters[tag](raw[()])


def _saved_dtype(node: Any) -> np.dtype[Any] | None:
    descr = _attr(node, DTYPE)
    return None if descr is None else npformat.descr_to_dtype(ast.literal_eval(str(descr)))


def _saved_shape(node: Any) -> list[int] | None:
    """The array shape of a table-backed structured array (tables are 1-d)."""
    shape = _attr(node, SHAPE)
    return None if shape is None else [int(n) for n in json.loads(str(shape))]


def _restore(raw: np.ndarray, node: Any) -> np.ndarray:
    """Undo :func:`_to_stored`: give *raw* back the exact dtype recorded in the file."""
    want = _saved_dtype(node)
    if want is None:
        return raw
    if want.kind == "U":
        return np.char.decode(raw, "utf-8", "surrogatepass").astype(want).reshape(raw.shape)
    if want.kind in "Mm":
        return raw.astype(np.dtype("i8").newbyteorder(want.byteorder)).view(want)
    shape = _saved_shape(node)
    if shape is not None:
        return raw.astype(want).reshape(shape)
    if want.kind == "V":
        return np.ascontiguousarray(raw).reshape(-1).view(want).reshape(raw.shape[:-1])
    return raw.astype(want, copy=False)


# ----------------------------------------------------------------------------- lazy views
def read_lazy(handle: Handle, node: Any, active: set[str]) -> Any:
    import tables

    node = _deref(node, active)
    tag = tag_of(node)
    if isinstance(node, tables.Group):
        if tag in ("list", "tuple"):
            return H5List(handle, node, active)
        if tag == "none":
            return None
        return H5Group(handle, node, active)
    if tag in ("ndarray", None) and isinstance(node, (tables.Array, tables.Table)) \
            and not isinstance(node, tables.UnImplemented):
        return H5Array(handle, node)
    return _read_leaf(node, tag, None)


class _View:
    """Shared part of the lazy views: the open file and context-manager protocol."""

    def __init__(self, handle: Handle, node: Any) -> None:
        self._handle = handle
        self._node = node

    @property
    def path(self) -> str:
        """The node's path inside the file (``"/meta/name"``)."""
        return str(self._node._v_pathname)

    def close(self) -> None:
        """Close the file: every view on it stops working."""
        self._handle.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _reading(self) -> Any:
        self._handle.check()
        return reading(self._handle.file.filename, strict=False)


class H5Group(_View, Mapping[str, Any]):
    """Read-only mapping view of an HDF5 group; children are read when accessed."""

    def __init__(self, handle: Handle, node: Any, active: set[str]) -> None:
        super().__init__(handle, node)
        self._active = active | {node._v_pathname}
        self._entries = dict(_children(node))

    def __getitem__(self, key: str) -> Any:
        node = self._entries[key]
        with self._reading():
            return read_lazy(self._handle, node, self._active)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<H5Group {self.path} keys={list(self._entries)}>"


class H5List(_View, Sequence[Any]):
    """Read-only sequence view of a group written from a list or tuple."""

    def __init__(self, handle: Handle, node: Any, active: set[str]) -> None:
        super().__init__(handle, node)
        self._active = active | {node._v_pathname}
        self._items = _items(node)
        self.container_type = list if tag_of(node) == "list" else tuple

    def __getitem__(self, index: Any) -> Any:
        nodes = self._items[index]
        with self._reading():
            if isinstance(index, slice):
                return [read_lazy(self._handle, n, self._active) for n in nodes]
            return read_lazy(self._handle, nodes, self._active)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<H5List {self.path} ({self.container_type.__name__}) len={len(self)}>"


class H5Array(_View):
    """An array left on disk: ``a[10:20]`` reads only those rows, ``np.asarray(a)`` all.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
        The dtype :meth:`read` returns (as saved, byte order included).
    """

    def __init__(self, handle: Handle, node: Any) -> None:
        super().__init__(handle, node)
        saved = _saved_dtype(node)
        self.dtype: np.dtype[Any] = node.dtype if saved is None else saved
        table_shape = _saved_shape(node)
        opaque = saved is not None and saved.kind == "V" and table_shape is None
        # Structured arrays are stored as flat tables, opaque ones as bytes with
        # an extra axis: indexing those reads the whole array first.
        self._whole = table_shape is not None or opaque
        shape = table_shape if table_shape is not None else node.shape[:-1] if opaque \
            else node.shape
        self.shape = tuple(int(n) for n in shape)

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def read(self) -> np.ndarray:
        """Read the whole array into memory."""
        with self._reading():
            return np.asarray(_read_leaf(self._node, tag_of(self._node), None))

    def __getitem__(self, key: Any) -> Any:
        if self._whole:
            return self.read()[key]
        with self._reading():
            return _read_leaf(self._node, tag_of(self._node), key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.read()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        return f"<H5Array {self.path} shape={self.shape} dtype={self.dtype}>"
