"""Canonical, type-tagged content hashing.

Every value is fed to an xxh3-128 hasher as a deterministic byte stream: a
one-byte type tag, then a length-prefixed payload. The encoding never depends
on ``hash()``, object identity, dict order or pickle internals for the types
listed in :func:`feed`, so a digest is the same in every process and run.

Arrays are hashed in place (no copy) when C-contiguous, at memory bandwidth
(~24 GB/s measured here for xxh3-128, against 0.65 GB/s for md5); other
layouts are streamed through bounded C-order chunks.

Digests are written ``<hex>`` and stored next to the name of their algorithm
(:data:`ALGORITHM`) so the algorithm can change later without ambiguity.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from .errors import UnsupportedTypeError

__all__ = ["ALGORITHM", "Hasher", "array_digest", "digest", "file_digest"]

ALGORITHM = "xxh3_128"
_CHUNK = 1 << 24  # bytes per C-order chunk when an array must be re-laid out
_READ = 1 << 23  # file read buffer
_warned_types: set[str] = set()


class Hasher:
    """Feed values into one xxh3-128 stream with type tags."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = xxhash.xxh3_128()

    def raw(self, data: bytes | memoryview) -> None:
        """Feed bytes with no tag (callers add their own framing)."""
        self._h.update(data)

    def tagged(self, tag: bytes, payload: bytes) -> None:
        """Feed a tag, the payload length, then the payload."""
        self._h.update(tag + struct.pack("<Q", len(payload)) + payload)

    def hexdigest(self) -> str:
        """Return the 32-character hex digest of everything fed so far."""
        return self._h.hexdigest()


def digest(obj: Any) -> str:
    """Return the canonical content digest (hex) of *obj*.

    Parameters
    ----------
    obj : object
        Any value; see :func:`feed` for how each type is encoded.

    Returns
    -------
    str
        32 hexadecimal characters (xxh3-128).
    """
    oneshot = _ONESHOT.get(type(obj))
    if oneshot is not None:  # the common scalar argument: one call into xxhash
        return xxhash.xxh3_128_hexdigest(oneshot(obj))
    h = Hasher()
    feed(h, obj)
    return h.hexdigest()


def _framed(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("<Q", len(payload)) + payload


# The exact bytes feed() would stream for these types (so digests agree).
_ONESHOT: dict[type, Callable[[Any], bytes]] = {
    type(None): lambda _: b"N",
    bool: lambda v: b"T" if v else b"F",
    int: lambda v: _framed(b"i", str(v).encode()),
    float: lambda v: b"f" + struct.pack("<d", v),
    str: lambda v: _framed(b"s", v.encode("utf-8", "surrogatepass")),
    bytes: lambda v: _framed(b"b", v),
}


def array_digest(arr: np.ndarray) -> str:
    """Return the canonical digest of an array (dtype, shape, C-order bytes)."""
    h = Hasher()
    _feed_array(h, arr)
    return h.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """Return the xxh3-128 hex digest of a file's bytes, streamed."""
    h = xxhash.xxh3_128()
    buf = bytearray(_READ)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def feed(h: Hasher, obj: Any) -> None:
    """Feed the canonical encoding of *obj* into *h*.

    Encoded exactly: None, bool, int, float (IEEE bits), complex, str, bytes,
    tuple, list, dict (order-independent), set/frozenset, numpy arrays and
    scalars, nibabel images, pandas objects, dataclasses, :class:`provstore.File`, and objects
    with a ``__provstore_hash__()`` method. Anything else is pickled, with a
    warning once per type, since pickle bytes are not guaranteed canonical.
    """
    handler = _EXACT.get(type(obj))
    if handler is not None:
        handler(h, obj)
        return
    _feed_other(h, obj)


def _feed_none(h: Hasher, obj: None) -> None:
    h.raw(b"N")


def _feed_bool(h: Hasher, obj: bool) -> None:
    h.raw(b"T" if obj else b"F")


def _feed_int(h: Hasher, obj: int) -> None:
    h.tagged(b"i", str(obj).encode())


def _feed_float(h: Hasher, obj: float) -> None:
    h.raw(b"f" + struct.pack("<d", obj))


def _feed_complex(h: Hasher, obj: complex) -> None:
    h.raw(b"c" + struct.pack("<dd", obj.real, obj.imag))


def _feed_str(h: Hasher, obj: str) -> None:
    h.tagged(b"s", obj.encode("utf-8", "surrogatepass"))


def _feed_bytes(h: Hasher, obj: bytes | bytearray | memoryview) -> None:
    h.tagged(b"b", bytes(obj))


def _feed_seq(tag: bytes) -> Callable[[Hasher, Any], None]:
    def feeder(h: Hasher, obj: Any) -> None:
        h.raw(tag + struct.pack("<Q", len(obj)))
        for item in obj:
            feed(h, item)

    return feeder


def _sub_digest(obj: Any) -> bytes:
    sub = Hasher()
    feed(sub, obj)
    return bytes.fromhex(sub.hexdigest())


def _feed_dict(h: Hasher, obj: dict[Any, Any]) -> None:
    h.raw(b"{" + struct.pack("<Q", len(obj)))
    if all(type(k) is str for k in obj):
        for key in sorted(obj):
            _feed_str(h, key)
            feed(h, obj[key])
        return
    # Mixed key types have no natural order: sort the pairs by their digests.
    for pair in sorted(_sub_digest(k) + _sub_digest(v) for k, v in obj.items()):
        h.raw(pair)


def _feed_set(h: Hasher, obj: set[Any] | frozenset[Any]) -> None:
    h.raw(b"S" + struct.pack("<Q", len(obj)))
    for item in sorted(_sub_digest(x) for x in obj):
        h.raw(item)


def _dtype_text(dtype: np.dtype[Any]) -> bytes:
    return repr(np.lib.format.dtype_to_descr(dtype)).encode()


def _feed_array(h: Hasher, arr: np.ndarray) -> None:
    if arr.dtype.hasobject:
        h.tagged(b"O", repr(arr.shape).encode())
        for item in arr.flat:
            feed(h, item)
        return
    h.tagged(b"a", _dtype_text(arr.dtype) + b"|" + repr(tuple(arr.shape)).encode())
    if arr.size == 0:
        return
    if arr.flags.c_contiguous:
        h.raw(arr.reshape(-1).view(np.uint8).data)
        return
    # Re-lay out bounded slabs along the first axis: their C-order bytes,
    # concatenated, are the C-order bytes of the whole array.
    rows = max(1, _CHUNK // max(1, arr[0].nbytes)) if arr.ndim else 1
    for start in range(0, arr.shape[0], rows):
        slab = np.ascontiguousarray(arr[start : start + rows])
        h.raw(slab.reshape(-1).view(np.uint8).data)


def _feed_generic(h: Hasher, obj: np.generic) -> None:
    arr = np.asarray(obj)
    h.tagged(b"g", _dtype_text(arr.dtype) + b"|" + arr.tobytes())


def _feed_nifti(h: Hasher, img: Any) -> None:
    # Header fields that nibabel rewrites on save (vox_offset, dtype...) are
    # synchronised first, so an image and its reload hash alike.
    img.update_header()
    h.tagged(b"I", type(img).__name__.encode())
    h.tagged(b"H", bytes(img.header.binaryblock))
    _feed_array(h, np.asarray(img.affine, dtype=np.float64))
    _feed_array(h, np.asanyarray(img.dataobj))


def _feed_pandas(h: Hasher, obj: Any) -> None:
    # Names, dtypes and pandas' own deterministic row hashes (fixed key, index
    # included): equal frames hash alike whatever their memory layout.
    import pandas as pd

    h.tagged(b"p", type(obj).__name__.encode())
    feed(h, tuple(obj.shape))
    if isinstance(obj, pd.DataFrame):
        feed(h, [str(c) for c in obj.columns])
        feed(h, [str(t) for t in obj.dtypes])
    elif isinstance(obj, pd.Series):
        feed(h, (str(obj.name), str(obj.dtype)))
    else:
        feed(h, (str(getattr(obj, "name", None)), str(getattr(obj, "dtype", ""))))
    index = not isinstance(obj, pd.Index)
    _feed_array(h, np.asarray(pd.util.hash_pandas_object(obj, index=index), dtype=np.uint64))


def _is_nibabel_image(obj: Any) -> bool:
    mod = type(obj).__module__
    return mod.startswith("nibabel.") and hasattr(obj, "dataobj") and hasattr(obj, "header")


def _feed_other(h: Hasher, obj: Any) -> None:
    custom = getattr(type(obj), "__provstore_hash__", None)
    if custom is not None:
        h.tagged(b"U", type(obj).__qualname__.encode())
        feed(h, custom(obj))
    elif isinstance(obj, np.ndarray):
        _feed_array(h, obj)
    elif isinstance(obj, np.generic):
        _feed_generic(h, obj)
    elif _is_nibabel_image(obj):
        _feed_nifti(h, obj)
    elif type(obj).__module__.partition(".")[0] == "pandas" and hasattr(obj, "shape"):
        _feed_pandas(h, obj)
    elif isinstance(obj, Path):
        h.tagged(b"P", os.fspath(obj).encode("utf-8", "surrogatepass"))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.tagged(b"D", f"{type(obj).__module__}.{type(obj).__qualname__}".encode())
        feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    else:
        for base, handler in _EXACT.items():  # subclasses of the basic types
            if isinstance(obj, base) and base is not bool:
                handler(h, obj)
                return
        _feed_pickle(h, obj)


def _feed_pickle(h: Hasher, obj: Any) -> None:
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if name not in _warned_types:
        _warned_types.add(name)
        warnings.warn(
            f"provstore hashes {name} through pickle, which is not guaranteed to be "
            "deterministic; define __provstore_hash__() on the class to return a "
            "canonical value",
            stacklevel=4,
        )
    buf = io.BytesIO()
    try:
        pickle.Pickler(buf, protocol=5).dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise UnsupportedTypeError(
            f"cannot hash a {name}: it is not picklable ({exc}); define "
            "__provstore_hash__() on the class to return a canonical value"
        ) from exc
    h.tagged(b"K", buf.getvalue())


_EXACT: dict[type, Callable[[Hasher, Any], None]] = {
    type(None): _feed_none,
    bool: _feed_bool,
    int: _feed_int,
    float: _feed_float,
    complex: _feed_complex,
    str: _feed_str,
    bytes: _feed_bytes,
    bytearray: _feed_bytes,
    tuple: _feed_seq(b"("),
    list: _feed_seq(b"["),
    dict: _feed_dict,
    set: _feed_set,
    frozenset: _feed_set,
    np.ndarray: _feed_array,
    np.memmap: _feed_array,
}

