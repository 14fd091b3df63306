"""Bounds on what a file may make a reader allocate, for files from anywhere.

A header is a promise about the data that follows; a hostile or damaged file
can promise terabytes in a few bytes. Readers check the promise before they
allocate or decompress anything: against :data:`MAX_DATA_BYTES`, and for
compressed data against what the compressed bytes can possibly hold
(:data:`MAX_EXPANSION`). Both are module attributes, so a user with genuinely
bigger or more compressible data raises them::

    import provstore.backends.limits as limits
    limits.MAX_DATA_BYTES = 256 * 2**30
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from ..errors import CorruptObjectError, UnsupportedTypeError

__all__ = ["MAX_DATA_BYTES", "MAX_EXPANSION", "check_declared", "declared_bytes"]

MAX_DATA_BYTES = 64 * 2**30
"""Largest data size (bytes) a file's header may declare: 64 GiB."""
MAX_EXPANSION = 500
"""Largest ratio of declared data to compressed file size.

Deflate cannot exceed about 1032:1 at all; real images, even mostly-zero
masks, stay well under 500:1, while decompression bombs sit near the limit.
"""


def declared_bytes(shape: Iterable[int], itemsize: int) -> int:
    """Return the byte size of *shape* items of *itemsize*, in exact integers.

    Python integers do not overflow, so an absurd shape gives an absurd
    number (rejected by :func:`check_declared`) rather than a wrapped one.

    Raises
    ------
    ValueError
        If a dimension is negative.
    """
    dims = [int(n) for n in shape]
    if any(n < 0 for n in dims):
        raise ValueError(f"negative dimension in shape {dims}")
    return math.prod(dims) * int(itemsize)


def check_declared(path: Path | str, declared: int, *, compressed_size: int | None = None,
                   what: str = "data") -> None:
    """Refuse a file whose header declares more data than is sane.

    Parameters
    ----------
    path : Path or str
        The file, for the message.
    declared : int
        Bytes of data its header announces.
    compressed_size : int, optional
        Size of the compressed bytes that must hold that data, if compressed.
    what : str
        What is declared, for the message.

    Raises
    ------
    UnsupportedTypeError
        If *declared* exceeds :data:`MAX_DATA_BYTES`.
    CorruptObjectError
        If *declared* exceeds what *compressed_size* bytes can expand to.
    """
    if declared > MAX_DATA_BYTES:
        raise UnsupportedTypeError(
            f"{path} declares {declared:,} bytes of {what}, more than the limit of "
            f"{MAX_DATA_BYTES:,}; if the file is genuine, raise "
            "provstore.backends.limits.MAX_DATA_BYTES"
        )
    if compressed_size is not None and declared > max(compressed_size, 1) * MAX_EXPANSION:
        raise CorruptObjectError(
            f"{path} declares {declared:,} bytes of {what} in {compressed_size:,} compressed "
            f"bytes, an expansion over {MAX_EXPANSION}:1 (a damaged header or a "
            "decompression bomb); if the file is genuine, raise "
            "provstore.backends.limits.MAX_EXPANSION"
        )
