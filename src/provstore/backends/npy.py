"""numpy arrays and scalars as ``.npy`` files, loaded as read-only memory maps."""

from __future__ import annotations

import importlib
import io
import os
from pathlib import Path
from tokenize import TokenError
from typing import Any, BinaryIO, Literal, cast

import numpy as np
import xxhash
from numpy.lib import format as npformat

from ..errors import BackendError, CorruptObjectError, UnsupportedTypeError
from .base import Backend

__all__ = ["NpyBackend"]

# Data is hashed and written in slices this big: small enough that the write
# copies from CPU cache what the hash has just read, big enough that the Python
# loop costs nothing (256 iterations per GB).
_SLICE = 1 << 22
# numpy refuses headers over 10 kB unless told otherwise (a guard against
# literal_eval abuse); structured dtypes with many fields legitimately exceed it.
_MAX_HEADER = 1 << 20
_MMAP_MODES = (None, "r", "c")


class NpyBackend(Backend):
    """numpy arrays (any non-object dtype) and numpy scalars in numpy's ``.npy`` format.

    Any shape (0-d and empty included), byte order, memory layout (C, Fortran,
    strided views), structured, datetime, string and complex dtypes. Files are
    byte-identical to what :func:`numpy.save` writes, so ``numpy.load`` reads
    them anywhere.

    Arrays load as read-only memory maps with ``mmap_mode="r"`` (the store's
    default), which costs O(1) whatever the size; ``mmap_mode=None`` reads an
    in-memory copy. numpy scalars are saved as 0-d arrays with metadata
    ``{"scalar": True}`` and load as numpy scalars of the same dtype.
    """

    name = "npy"
    suffixes = (".npy",)
    supports_mmap = True

    def can_save(self, obj: Any) -> bool:
        """Return whether *obj* is an ndarray (or memmap) or numpy scalar without objects."""
        if type(obj) is np.ndarray or type(obj) is np.memmap:
            return _plain_dtype(obj.dtype)
        return isinstance(obj, np.generic) and _plain_dtype(obj.dtype)

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Write *obj* to *path* in ``.npy`` format and return its metadata.

        Returns
        -------
        dict
            ``{"dtype": str, "shape": list, "scalar": bool}``.
        """
        _no_options(options)
        return self._write(obj, path, None)[0]

    def save_with_checksum(self, obj: Any, path: Path) -> tuple[dict[str, Any], str, int]:
        """Write *obj* like :meth:`save`, hashing the file's bytes in the same pass.

        The header and data are fed to xxh3-128 as they are written, so the
        store never reads the file back: the digest equals
        :func:`provstore.hashing.file_digest` of the written file.

        Returns
        -------
        metadata : dict
            As returned by :meth:`save`.
        digest : str
            xxh3-128 hex digest of the exact file bytes.
        size : int
            File size in bytes.
        """
        hasher = xxhash.xxh3_128()
        metadata, size = self._write(obj, path, hasher)
        return metadata, hasher.hexdigest(), size

    def _write(self, obj: Any, path: Path, hasher: Any) -> tuple[dict[str, Any], int]:
        if not self.can_save(obj):
            raise UnsupportedTypeError(
                f"the npy backend stores numpy arrays and scalars without Python objects, "
                f"not a {type(obj).__qualname__}"
                + (f" of dtype {obj.dtype}" if isinstance(obj, (np.ndarray, np.generic)) else "")
            )
        scalar = isinstance(obj, np.generic)
        arr: np.ndarray = np.asarray(obj)
        header = _header_bytes(arr)
        with open(path, "xb") as f:
            _emit(f, memoryview(header), hasher)
            size = len(header) + _write_data(f, arr, hasher)
        metadata = {"dtype": str(arr.dtype), "shape": list(arr.shape), "scalar": scalar}
        return metadata, size

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             **options: Any) -> Any:
        """Read the array at *path*; a read-only memory map when ``mmap_mode="r"``.

        Raises
        ------
        CorruptObjectError
            If the file is missing, is not ``.npy``, holds Python objects, or
            its size does not match its header (truncated or padded).
        """
        if mmap_mode not in _MMAP_MODES:
            raise BackendError(
                f"mmap_mode must be 'r', 'c' or None, not {mmap_mode!r}: stored artifacts "
                "are immutable; copy the array to modify it"
            )
        try:
            nbytes = _check_layout(path)
            if metadata.get("scalar"):
                return np.load(path, allow_pickle=False, max_header_size=_MAX_HEADER)[()]
            if mmap_mode is not None and nbytes > 0:
                mode = cast(Literal["r", "c"], mmap_mode)
                return np.load(path, mmap_mode=mode, allow_pickle=False,
                               max_header_size=_MAX_HEADER)
            # numpy cannot map a zero-length data segment; a plain read costs nothing here.
            arr = np.load(path, allow_pickle=False, max_header_size=_MAX_HEADER)
        except (ValueError, OSError, EOFError, SyntaxError, TokenError, OverflowError,
                TypeError, MemoryError, RecursionError) as exc:
            # numpy parses the header with tokenize and literal_eval: a damaged one
            # fails with any of these (TokenError, OverflowError for absurd shapes...).
            raise CorruptObjectError(f"{path} is not a readable .npy file: {exc}") from exc
        if mmap_mode == "r":
            arr.flags.writeable = False
        return arr

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return ``{"type", "dtype", "shape"}``."""
        kind = "ndarray" if isinstance(obj, np.ndarray) else type(obj).__name__
        return {"type": kind, "dtype": str(obj.dtype), "shape": list(np.shape(obj))}


def _plain_dtype(dtype: np.dtype[Any]) -> bool:
    # Object fields and new-style dtypes (StringDType) would need pickle in .npy.
    return not dtype.hasobject and getattr(type(dtype), "_legacy", True)


def _no_options(options: dict[str, Any]) -> None:
    if options:
        raise UnsupportedTypeError(f"the npy backend takes no options, got {sorted(options)}")


def _header_bytes(arr: np.ndarray) -> bytes:
    """Return the header :func:`numpy.save` writes for *arr* (oldest fitting version)."""
    d = npformat.header_data_from_array_1_0(arr)
    buf = io.BytesIO()
    try:
        npformat.write_array_header_1_0(buf, d)
    except ValueError:  # header longer than 64 kB: version 2.0 has a 4-byte length
        buf = io.BytesIO()
        try:
            npformat.write_array_header_2_0(buf, d)
        except UnicodeEncodeError:
            # Field names outside latin-1 need version 3.0 (UTF-8), which numpy
            # only writes through the private helper np.save itself calls.
            buf = io.BytesIO()
            _private_format()._write_array_header(buf, d, (3, 0))
    return buf.getvalue()


def _private_format() -> Any:
    try:
        return importlib.import_module("numpy.lib._format_impl")  # numpy >= 2
    except ImportError:  # numpy 1.x kept everything in numpy.lib.format
        return npformat


def _write_data(f: BinaryIO, arr: np.ndarray, hasher: Any) -> int:
    """Write the array's data in the order its header announces; return the byte count."""
    if arr.nbytes == 0:
        return 0
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        arr = arr.T  # header says fortran_order: the bytes are those of the transpose, in C order
    if arr.flags.c_contiguous:
        # A flat byte view of the array's own memory: nothing is copied.
        _emit(f, arr.reshape(-1).view(np.uint8).data, hasher)
        return arr.nbytes
    # A strided view: stream C-order chunks through a bounded buffer, as np.save does.
    chunk_items = max(_SLICE // arr.itemsize, 1)
    for chunk in np.nditer(arr, flags=["external_loop", "buffered", "zerosize_ok"],
                           buffersize=chunk_items, order="C"):
        _emit(f, np.ascontiguousarray(chunk).view(np.uint8).data, hasher)
    return arr.nbytes


def _emit(f: BinaryIO, data: memoryview, hasher: Any) -> None:
    for start in range(0, len(data), _SLICE):
        piece = data[start:start + _SLICE]
        if hasher is not None:
            hasher.update(piece)
        f.write(piece)


def _check_layout(path: Path) -> int:
    """Parse the header of *path*; return the data size, checking the file holds exactly it."""
    with open(path, "rb") as fp:
        version = npformat.read_magic(fp)
        # Version 3.0 differs from 2.0 only in the header's text encoding (UTF-8
        # instead of latin-1), which changes field names but never sizes.
        read = npformat.read_array_header_1_0 if version == (1, 0) else \
            npformat.read_array_header_2_0
        shape, _fortran, dtype = read(fp, max_header_size=_MAX_HEADER)
        if dtype.hasobject:
            raise ValueError("it holds pickled Python objects, which are never loaded")
        offset = fp.tell()
        size = os.fstat(fp.fileno()).st_size
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != offset + nbytes:
        raise ValueError(f"file has {size} bytes where its header announces {offset + nbytes}")
    return nbytes
