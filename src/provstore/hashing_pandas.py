"""Type-exact canonical encoding of pandas objects (part of :mod:`provstore.hashing`).

Labels, names and object values are fed with :func:`provstore.hashing.feed`,
so ``1`` and ``'1'`` differ; numeric values as their exact bytes, so ``-0.0``
and ``0.0`` differ; dtypes by class and parameters (a categorical's categories
and ``ordered``), never through ``str()``. Equal objects hash alike whatever
their memory layout (blocks, copies, column order of the blocks).

Imported by :mod:`provstore.hashing` only when a pandas object is hashed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .hashing import Hasher, class_name, feed, feed_array

__all__ = ["feed_pandas"]


def feed_pandas(h: Hasher, obj: Any) -> bool:
    """Feed *obj* if it is a pandas object this module encodes; return whether it was."""
    if isinstance(obj, pd.DataFrame):
        _feed_class(h, obj)
        _feed_index(h, obj.columns)
        _feed_index(h, obj.index)
        for _, column in obj.items():  # by position: duplicate labels are fine
            _feed_values(h, column.array)
    elif isinstance(obj, pd.Series):
        _feed_class(h, obj)
        feed(h, obj.name)
        _feed_index(h, obj.index)
        _feed_values(h, obj.array)
    elif isinstance(obj, pd.Index):
        _feed_index(h, obj)
    elif isinstance(obj, pd.api.extensions.ExtensionArray):
        _feed_values(h, obj)
    elif isinstance(obj, pd.api.extensions.ExtensionDtype):
        _feed_dtype(h, obj)
    elif obj is pd.NA or obj is pd.NaT:
        _feed_class(h, obj)
    else:
        return False
    return True


def _feed_class(h: Hasher, obj: Any) -> None:
    h.tagged(b"C", class_name(type(obj)).encode())


def _feed_index(h: Hasher, index: pd.Index) -> None:
    _feed_class(h, index)
    if isinstance(index, pd.MultiIndex):
        feed(h, list(index.names))
        h.raw(len(index.levels).to_bytes(8, "little"))
        for level, codes in zip(index.levels, index.codes):
            _feed_index(h, level)
            feed_array(h, np.asarray(codes))
    elif isinstance(index, pd.RangeIndex):  # a range, not its materialised values
        feed(h, (index.name, index.start, index.stop, index.step))
    else:
        feed(h, index.name)
        _feed_values(h, index.array)


def _feed_dtype(h: Hasher, dtype: Any) -> None:
    _feed_class(h, dtype)
    if isinstance(dtype, np.dtype):
        feed(h, dtype)
    elif isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories
        feed(h, None) if categories is None else _feed_index(h, categories)
        feed(h, dtype.ordered)
    else:
        # Extension dtypes are fully named by their name (unit, tz, subtype,
        # closed side, fill value...); the storage of string dtypes is not in it.
        feed(h, (dtype.name, getattr(dtype, "storage", None)))


def _feed_values(h: Hasher, values: Any) -> None:
    """Feed the values of a column or an index (an ExtensionArray)."""
    _feed_class(h, values)
    _feed_dtype(h, values.dtype)
    if isinstance(values, pd.arrays.NumpyExtensionArray):
        feed_array(h, np.asarray(values))  # no copy: the column's own buffer
    elif isinstance(values, pd.Categorical):
        feed_array(h, np.asarray(values.codes))  # categories are in the dtype
    elif isinstance(values, pd.arrays.DatetimeArray) and values.tz is not None:
        feed_array(h, np.asarray(values.tz_convert(None)))  # UTC instants; tz is in the dtype
    elif isinstance(values, (pd.arrays.DatetimeArray, pd.arrays.TimedeltaArray)):
        feed_array(h, np.asarray(values))
    elif isinstance(values, pd.arrays.PeriodArray):  # ordinals; the frequency is in the dtype
        feed_array(h, np.asarray(values.asi8))
    else:
        _feed_masked(h, values)


def _feed_masked(h: Hasher, values: Any) -> None:
    # Nullable and other extension arrays: which entries are missing, then the others.
    missing = np.asarray(values.isna(), dtype=bool)
    feed_array(h, missing)
    numpy_dtype = getattr(values.dtype, "numpy_dtype", None)
    if isinstance(numpy_dtype, np.dtype) and numpy_dtype.kind in "biufc":
        filled = values.to_numpy(dtype=numpy_dtype, na_value=numpy_dtype.type(0))
        feed_array(h, np.asarray(filled))
        return
    present = values.to_numpy(dtype=object)[~missing]
    feed_array(h, present)
