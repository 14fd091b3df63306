"""pandas DataFrames and Series as Parquet files (pyarrow).

pyarrow and pandas are optional dependencies (``pip install "provstore[parquet]"``),
so they are imported on first use only: a store that never holds a DataFrame
never pays for them, and provstore works where they are not installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, CorruptObjectError, UnsupportedTypeError
from .base import Backend

__all__ = ["ParquetBackend"]

META_KEY = b"provstore"
"""Schema metadata key of what Parquet cannot say by itself (JSON)."""
SERIES_COLUMN = "__provstore_series__"
"""Column name of a Series whose own name is not a string."""
INSTALL_HINT = 'the parquet backend needs pyarrow and pandas: pip install "provstore[parquet]"'

_NUMERIC_KINDS = frozenset("biuf")
_TIME_UNITS = frozenset({"s", "ms", "us", "ns"})
_MASKED = ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
           "Float32", "Float64", "boolean")


def _pandas() -> Any:
    # Optional dependency, imported on first use (see the module docstring).
    try:
        import pandas as pd
    except ImportError as exc:
        raise BackendError(INSTALL_HINT) from exc
    return pd


def _pyarrow() -> tuple[Any, Any]:
    # Optional dependency, imported on first use (see the module docstring).
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise BackendError(INSTALL_HINT) from exc
    return pa, pq


class ParquetBackend(Backend):
    """pandas ``DataFrame`` and ``Series`` in Apache Parquet, through pyarrow.

    Round-trips exactly (``pandas.testing.assert_frame_equal`` with
    ``check_exact=True``): the index (``RangeIndex``, ``MultiIndex``, a
    ``DatetimeIndex`` and its ``freq``), index and column names, numeric and
    boolean dtypes, nullable integer/float/boolean and string dtypes,
    categoricals of strings (``ordered`` included), datetimes with or without
    a time zone, timedeltas, object columns of ``str`` (``None`` for missing)
    or of ``bytes``, and ``attrs`` that are plain JSON. A Series comes back as
    a Series with its name. What Parquet would change is refused instead
    (``can_save`` is False), so a later backend takes the value: object
    columns of mixed types, column labels of mixed types (pyarrow would
    stringify them), duplicate labels, complex numbers, big-endian data,
    period/interval/sparse columns.

    The file is plain Parquet with pandas' usual schema metadata:
    ``pandas.read_parquet(path)`` reads it. What Parquet lacks (object
    columns, seconds units, the Series name, ``freq``, ``attrs``) is kept in
    the schema metadata under ``b"provstore"``, so the file describes itself.
    """

    name = "parquet"
    suffixes = (".parquet",)

    def can_save(self, obj: Any) -> bool:
        """Return whether *obj* is a DataFrame or Series that Parquet holds exactly."""
        # An object cannot be a DataFrame unless pandas was imported: checking
        # first keeps provstore from importing pandas for every value.
        if "pandas" not in sys.modules:
            return False
        pd = sys.modules["pandas"]
        if type(obj) is pd.Series:
            return _valid_series_name(obj.name) and _json_exact(obj.attrs) and _exact_frame(
                pd, obj.to_frame(name=_series_column(obj.name)), series=True)
        return type(obj) is pd.DataFrame and _exact_frame(pd, obj, series=False)

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Write *obj* to *path* as Parquet; return ``{"type", "shape"}``.

        Raises
        ------
        UnsupportedTypeError
            If *obj* is not something :meth:`can_save` accepts, or options are given.
        """
        if options:
            raise UnsupportedTypeError(
                f"the parquet backend takes no options, got {sorted(options)}")
        if not self.can_save(obj):
            raise UnsupportedTypeError(
                f"the parquet backend cannot store this {type(obj).__qualname__} exactly "
                "(DataFrame/Series with str or int labels, no mixed-type object columns, "
                "no complex, period or interval columns)"
            )
        pd = _pandas()
        pa, pq = _pyarrow()
        series = type(obj) is pd.Series
        frame = obj.to_frame(name=_series_column(obj.name)) if series else obj
        extra: dict[str, Any] = {"series": series, "name": obj.name if series else None,
                                 "columns": _restorations(pd, frame),
                                 "index": _index_restorations(pd, frame.index),
                                 "attrs": obj.attrs}
        try:
            table = pa.Table.from_pandas(frame, preserve_index=None)
            metadata = dict(table.schema.metadata or {})
            metadata[META_KEY] = json.dumps(extra).encode()
            pq.write_table(table.replace_schema_metadata(metadata), str(path))
        except (pa.ArrowException, ValueError, TypeError, OSError) as exc:
            Path(path).unlink(missing_ok=True)
            raise BackendError(f"pyarrow failed to write {Path(path).name}: {exc}") from exc
        return {"type": "Series" if series else "DataFrame", "shape": list(obj.shape)}

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             **options: Any) -> Any:
        """Read the DataFrame (or Series) at *path* into memory.

        Raises
        ------
        CorruptObjectError
            If the file is missing, truncated or not Parquet.
        """
        if options:
            raise BackendError(f"the parquet backend takes no load options, got {sorted(options)}")
        pd = _pandas()
        pa, pq = _pyarrow()
        try:
            table = pq.read_table(str(path))
            extra = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
            frame = table.to_pandas()
            return _restore(pd, frame, extra)
        except FileNotFoundError as exc:
            raise CorruptObjectError(f"{path} is missing") from exc
        except (pa.ArrowException, OSError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, OverflowError, MemoryError, RecursionError) as exc:
            # Damaged files fail inside pyarrow (Arrow errors) or in pandas'
            # reading of the schema metadata (KeyError, TypeError...).
            raise CorruptObjectError(f"{path} is not a readable Parquet file: {exc!r}") from exc

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return ``{"type", "shape", "columns"}`` (the first 20 column labels)."""
        summary: dict[str, Any] = {"type": type(obj).__name__, "shape": list(obj.shape)}
        if hasattr(obj, "columns"):
            summary["columns"] = [str(c) for c in list(obj.columns)[:20]]
        return summary


# ----------------------------------------------------------------------------- checks
def _valid_series_name(name: Any) -> bool:
    return name is None or type(name) in (str, int)


def _series_column(name: Any) -> Any:
    return name if type(name) is str else SERIES_COLUMN


def _exact_frame(pd: Any, frame: Any, *, series: bool) -> bool:
    """Whether every label, dtype and value of *frame* survives Parquet unchanged."""
    columns = frame.columns
    if not series and not _exact_labels(pd, columns):
        return False
    if not _json_exact(frame.attrs):
        return False
    if not all(_exact_values(pd, frame.iloc[:, i]) for i in range(frame.shape[1])):
        return False
    return _exact_index(pd, frame.index)


def _exact_labels(pd: Any, columns: Any) -> bool:
    # pyarrow stringifies labels of mixed types and refuses duplicates.
    if columns.has_duplicates or type(columns) not in (pd.Index, pd.RangeIndex, pd.MultiIndex):
        return False
    if not all(n is None or type(n) is str for n in columns.names):
        return False
    if type(columns) is pd.MultiIndex:
        return all(type(label) is str for level in columns.levels for label in level)
    kinds = {type(label) for label in columns}
    return kinds <= {str} or kinds <= {int}


def _exact_index(pd: Any, index: Any) -> bool:
    if type(index) is pd.RangeIndex:
        return index.name is None or type(index.name) is str
    if not all(n is None or type(n) is str for n in index.names):
        return False
    if type(index) is pd.MultiIndex:
        return all(_exact_values(pd, index.get_level_values(i)) for i in range(index.nlevels))
    freq = getattr(index, "freq", None)
    if freq is not None and type(index) not in (pd.DatetimeIndex, pd.TimedeltaIndex):
        return False
    return _exact_values(pd, index)


def _exact_values(pd: Any, values: Any) -> bool:
    """Whether a column or index level of this dtype and content survives Parquet."""
    dtype = values.dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind in _NUMERIC_KINDS:
            return dtype.isnative
        if dtype.kind in "Mm":
            return dtype.isnative and np.datetime_data(dtype)[0] in _TIME_UNITS
        if dtype.kind == "O":
            return _exact_objects(values)
        return False
    if isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories
        return (categories.dtype == object or isinstance(categories.dtype, pd.StringDtype)) \
            and all(type(c) is str for c in categories)
    if isinstance(dtype, pd.DatetimeTZDtype):
        return dtype.unit in _TIME_UNITS
    return isinstance(dtype, pd.StringDtype) or str(dtype) in _MASKED


def _exact_objects(values: Any) -> bool:
    # Parquet has one type per column: all str (None for missing), or all bytes.
    kinds = {type(v) for v in values}
    return kinds <= {str, type(None)} or kinds <= {bytes}


def _json_exact(value: Any) -> bool:
    try:
        return json.loads(json.dumps(value)) == value and _no_tuples(value)
    except (TypeError, ValueError, RecursionError):
        return False


def _no_tuples(value: Any) -> bool:
    if type(value) is dict:
        return all(type(k) is str and _no_tuples(v) for k, v in value.items())
    if type(value) is list:
        return all(_no_tuples(v) for v in value)
    return type(value) in (str, int, float, bool, type(None))


# ----------------------------------------------------------------------------- restoring
def _restorations(pd: Any, frame: Any) -> dict[str, str]:
    """Column position -> the dtype pyarrow would not give back by itself."""
    fixes: dict[str, str] = {}
    for i in range(frame.shape[1]):
        dtype = frame.iloc[:, i].dtype
        fix = _restoration(pd, dtype)
        if fix is not None:
            fixes[str(i)] = fix
    return fixes


def _restoration(pd: Any, dtype: Any) -> str | None:
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        return "object"
    if isinstance(dtype, np.dtype) and dtype.kind == "M" and np.datetime_data(dtype)[0] == "s":
        return str(dtype)
    if isinstance(dtype, pd.DatetimeTZDtype) and dtype.unit == "s":
        return str(dtype)
    if isinstance(dtype, pd.CategoricalDtype) and dtype.categories.dtype == object:
        return "category-object"
    return None


def _index_restorations(pd: Any, index: Any) -> dict[str, Any]:
    levels = {}
    for i in range(index.nlevels):
        fix = _restoration(pd, index.get_level_values(i).dtype)
        if fix is not None:
            levels[str(i)] = fix
    freq = getattr(index, "freq", None) if type(index) is not pd.MultiIndex else None
    return {"levels": levels, "freq": None if freq is None else freq.freqstr}


def _restore(pd: Any, frame: Any, extra: dict[str, Any]) -> Any:
    """Undo what Parquet changed, as recorded in the file's ``provstore`` metadata."""
    for position, fix in extra.get("columns", {}).items():
        i = int(position)
        frame.isetitem(i, _restored(pd, frame.iloc[:, i], fix))
    index_fixes = extra.get("index", {})
    if index_fixes.get("levels") or index_fixes.get("freq"):
        frame.index = _restored_index(pd, frame.index, index_fixes)
    if extra.get("attrs"):
        frame.attrs = extra["attrs"]
    if not extra.get("series"):
        return frame
    return frame.iloc[:, 0].rename(extra.get("name"))


def _restored(pd: Any, values: Any, fix: str) -> Any:
    if fix == "object":
        data = np.array([None if v is None or v is pd.NA or (isinstance(v, float) and v != v)
                         else v for v in values.to_numpy(dtype=object)], dtype=object)
        return _like(pd, values, data, object)
    if fix == "category-object":
        categories = pd.Index(list(values.dtype.categories), dtype=object)
        cat = pd.Categorical.from_codes(np.asarray(values.codes if isinstance(values, pd.Index)
                                                   else values.cat.codes),
                                        categories=categories, ordered=values.dtype.ordered)
        return _like(pd, values, cat, None)
    return values.astype(fix)


def _like(pd: Any, values: Any, data: Any, dtype: Any) -> Any:
    """A Series or Index like *values* (same name, same index) holding *data*."""
    if isinstance(values, pd.Index):
        return pd.Index(data, name=values.name, dtype=dtype)
    return pd.Series(data, index=values.index, name=values.name, dtype=dtype)


def _restored_index(pd: Any, index: Any, fixes: dict[str, Any]) -> Any:
    levels = fixes.get("levels", {})
    if type(index) is pd.MultiIndex:
        arrays = [_restored(pd, pd.Index(index.get_level_values(i)), levels[str(i)])
                  if str(i) in levels else index.get_level_values(i)
                  for i in range(index.nlevels)]
        return pd.MultiIndex.from_arrays(arrays, names=index.names)
    if "0" in levels:
        index = _restored(pd, index, levels["0"])
    if fixes.get("freq"):
        index = type(index)(index, freq=fixes["freq"], name=index.name)
    return index
