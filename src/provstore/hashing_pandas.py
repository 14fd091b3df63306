"""Type-exact canonical encoding of pandas objects (part of :mod:`provstore.hashing`).

Labels, names and object values are fed with :func:`provstore.hashing.feed`,
so ``1`` and ``'1'`` differ; numeric values as their exact bytes, so ``-0.0``
and ``0.0`` differ; dtypes by class and parameters (a categorical's categories
and ``ordered``), never through ``str()``. Equal objects hash alike whatever
their memory layout (blocks, copies, column order of the blocks).

Imported by :mod:`provstore.hashing` only when a pandas object is hashed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from .hasher import Hasher
from .hashing_callables import qualified_name

__all__ = ["feed_pandas"]

Feed = Callable[[Hasher, Any], None]


def feed_pandas(h: Hasher, obj: Any, feed: Feed,
                feed_array: Callable[[Hasher, np.ndarray], None]) -> bool:
    """Feed *obj* if it is a pandas object this module encodes; return whether it was.

    *feed* and *feed_array* are :func:`provstore.hashing.feed` and
    :func:`~provstore.hashing.feed_array`, passed in so that this optional
    module needs nothing of the dispatcher that imports it.
    """
    return _Encoder(feed, feed_array).encode(h, obj)


class _Encoder:
    """The pandas encoders, with the generic ``feed`` they recurse into."""

    def __init__(self, feed: Feed, feed_array: Callable[[Hasher, np.ndarray], None]) -> None:
        self.feed = feed
        self.feed_array = feed_array

    def encode(self, h: Hasher, obj: Any) -> bool:
        """Feed *obj* if it is a pandas object this module encodes; return whether it was."""
        if isinstance(obj, pd.DataFrame):
            self.class_of(h, obj)
            self.index(h, obj.columns)
            self.index(h, obj.index)
            for _, column in obj.items():  # by position: duplicate labels are fine
                self.values(h, column.array)
        elif isinstance(obj, pd.Series):
            self.class_of(h, obj)
            self.feed(h, obj.name)
            self.index(h, obj.index)
            self.values(h, obj.array)
        elif isinstance(obj, pd.Index):
            self.index(h, obj)
        elif isinstance(obj, pd.api.extensions.ExtensionArray):
            self.values(h, obj)
        elif isinstance(obj, pd.api.extensions.ExtensionDtype):
            self.dtype(h, obj)
        elif obj is pd.NA or obj is pd.NaT:
            self.class_of(h, obj)
        else:
            return False
        return True

    def class_of(self, h: Hasher, obj: Any) -> None:
        h.tagged(b"C", qualified_name(type(obj)).encode())

    def index(self, h: Hasher, index: pd.Index) -> None:
        self.class_of(h, index)
        if isinstance(index, pd.MultiIndex):
            self.feed(h, list(index.names))
            h.raw(len(index.levels).to_bytes(8, "little"))
            for level, codes in zip(index.levels, index.codes):
                self.index(h, level)
                self.feed_array(h, np.asarray(codes))
        elif isinstance(index, pd.RangeIndex):  # a range, not its materialised values
            self.feed(h, (index.name, index.start, index.stop, index.step))
        else:
            self.feed(h, index.name)
            self.values(h, index.array)

    def dtype(self, h: Hasher, dtype: Any) -> None:
        self.class_of(h, dtype)
        if isinstance(dtype, np.dtype):
            self.feed(h, dtype)
        elif isinstance(dtype, pd.CategoricalDtype):
            categories = dtype.categories
            self.feed(h, None) if categories is None else self.index(h, categories)
            self.feed(h, dtype.ordered)
        else:
            # Extension dtypes are fully named by their name (unit, tz, subtype,
            # closed side, fill value...); the storage of string dtypes is not in it.
            self.feed(h, (dtype.name, getattr(dtype, "storage", None)))

    def values(self, h: Hasher, values: Any) -> None:
        """Feed the values of a column or an index (an ExtensionArray)."""
        self.class_of(h, values)
        self.dtype(h, values.dtype)
        if isinstance(values, pd.arrays.NumpyExtensionArray):
            self.feed_array(h, np.asarray(values))  # no copy: the column's own buffer
        elif isinstance(values, pd.Categorical):
            self.feed_array(h, np.asarray(values.codes))  # categories are in the dtype
        elif isinstance(values, pd.arrays.DatetimeArray) and values.tz is not None:
            # UTC instants; the time zone is in the dtype
            self.feed_array(h, np.asarray(values.tz_convert(None)))
        elif isinstance(values, (pd.arrays.DatetimeArray, pd.arrays.TimedeltaArray)):
            self.feed_array(h, np.asarray(values))
        elif isinstance(values, pd.arrays.PeriodArray):  # ordinals; the frequency is in the dtype
            self.feed_array(h, np.asarray(values.asi8))
        else:
            self.masked(h, values)

    def masked(self, h: Hasher, values: Any) -> None:
        # Nullable and other extension arrays: which entries are missing, then the others.
        missing = np.asarray(values.isna(), dtype=bool)
        self.feed_array(h, missing)
        numpy_dtype = getattr(values.dtype, "numpy_dtype", None)
        if isinstance(numpy_dtype, np.dtype) and numpy_dtype.kind in "biufc":
            filled = values.to_numpy(dtype=numpy_dtype, na_value=numpy_dtype.type(0))
            self.feed_array(h, np.asarray(filled))
            return
        present = values.to_numpy(dtype=object)[~missing]
        self.feed_array(h, present)
