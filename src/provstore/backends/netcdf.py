"""xarray Datasets and DataArrays as netCDF-4 files (h5netcdf), opened lazily.

xarray, h5netcdf and h5py are optional dependencies (``pip install
"provstore[netcdf]"``), imported on first use only: provstore works where
they are not installed, and a store without xarray values never pays for them.
h5netcdf is the engine because it installs from wheels everywhere with h5py
and writes netCDF-4 files that the netCDF-C library, ncdump and
``xarray.open_dataset`` read.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, CorruptObjectError, UnsupportedTypeError
from .base import Backend

__all__ = ["NetcdfBackend"]

ENGINE = "h5netcdf"
INSTALL_HINT = 'the netcdf backend needs xarray and h5netcdf: pip install "provstore[netcdf]"'
DATAARRAY_VARIABLE = "__xarray_dataarray_variable__"
"""xarray's own name for the variable of an unnamed DataArray."""
# Attributes xarray reads as encoding (masking, scaling, CF time): a value
# carrying them would come back changed.
_ENCODING_ATTRS = frozenset({"_FillValue", "missing_value", "scale_factor", "add_offset",
                             "_Unsigned", "_Encoding", "calendar", "coordinates", "dtype",
                             "compress"})
_TIME_UNITS = frozenset({"s", "ms", "us", "ns"})


def _xarray() -> Any:
    # Optional dependency, imported on first use (see the module docstring).
    try:
        import h5netcdf  # noqa: F401  (the engine: fail here with the install hint)
        import xarray as xr
    except ImportError as exc:
        raise BackendError(INSTALL_HINT) from exc
    return xr


class NetcdfBackend(Backend):
    """xarray ``Dataset`` and ``DataArray`` in netCDF-4 (HDF5) files, through h5netcdf.

    Round-trips exactly (``xarray.testing.assert_identical``, dtypes and
    attribute types included): dimensions, coordinates, data variables,
    attributes, names; numeric, boolean, string (``U``, ``S``, object of
    ``str``), datetime and timedelta variables (any of the units s, ms, us,
    ns). A DataArray comes back as a DataArray with its name.

    Loading is lazy: variables are read from the file on first use
    (``.values``, ``.load()``, indexing reads only what it selects).
    ``xarray.open_dataset(path)`` opens the files directly.

    Refused (``can_save`` False, a later backend takes them): object
    variables of non-strings, complex numbers, non-string variable names,
    attributes netCDF cannot hold exactly (bools, None, dicts, mixed
    lists), attributes xarray would read as encoding (``units`` with a
    time, ``_FillValue``, ``scale_factor``...), multi-indexes.
    """

    name = "netcdf"
    suffixes = (".nc",)

    def can_save(self, obj: Any) -> bool:
        """Return whether *obj* is a Dataset or DataArray netCDF holds exactly."""
        # An object cannot be an xarray value unless xarray was imported:
        # checking first keeps provstore from importing it for every value.
        if "xarray" not in sys.modules:
            return False
        xr = sys.modules["xarray"]
        if type(obj) is xr.DataArray:
            if obj.name is not None and type(obj.name) is not str:
                return False
            obj = obj.to_dataset(name=_variable_name(obj.name))
        elif type(obj) is not xr.Dataset:
            return False
        return _exact_dataset(xr, obj)

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Write *obj* to *path* as netCDF-4.

        Returns
        -------
        dict
            ``{"kind": "Dataset" | "DataArray", "name", "dtypes", "attrs"}``:
            what netCDF does not say by itself (exact dtypes, attribute types).
        """
        if options:
            raise UnsupportedTypeError(
                f"the netcdf backend takes no options, got {sorted(options)}")
        if not self.can_save(obj):
            raise UnsupportedTypeError(
                f"the netcdf backend cannot store this {type(obj).__qualname__} exactly "
                "(no object or complex variables, plain attributes only)"
            )
        xr = _xarray()
        dataarray = type(obj) is xr.DataArray
        ds = obj.to_dataset(name=_variable_name(obj.name)) if dataarray else obj
        try:
            ds.to_netcdf(str(path), engine=ENGINE)
        except (ValueError, TypeError, OSError, RuntimeError) as exc:
            Path(path).unlink(missing_ok=True)
            raise BackendError(f"xarray failed to write {Path(path).name}: {exc}") from exc
        return {
            "kind": "DataArray" if dataarray else "Dataset",
            "name": obj.name if dataarray else None,
            "dtypes": {str(k): v.dtype.str for k, v in ds.variables.items()},
            "attrs": {"": _attr_kinds(ds.attrs),
                      **{str(k): _attr_kinds(v.attrs) for k, v in ds.variables.items()}},
        }

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             **options: Any) -> Any:
        """Open the file at *path* lazily, as it was saved (Dataset or DataArray).

        Raises
        ------
        CorruptObjectError
            If the file is missing or not a readable netCDF/HDF5 file.
        """
        if options:
            raise BackendError(f"the netcdf backend takes no load options, got {sorted(options)}")
        xr = _xarray()
        if not Path(path).is_file():
            raise CorruptObjectError(f"{path} is missing")
        dtypes: dict[str, str] = metadata.get("dtypes", {})
        try:
            ds = xr.open_dataset(str(path), engine=ENGINE, **_decoders(xr, dtypes))
            ds = _restore(ds, dtypes, metadata.get("attrs", {}))
        except Exception as exc:
            # h5py, h5netcdf and xarray's decoders fail on damaged files with
            # OSError, KeyError, ValueError, TypeError, IndexError... none of
            # which says more than "this file is damaged".
            raise CorruptObjectError(f"{path} is not a readable netCDF file: {exc!r}") from exc
        if metadata.get("kind") != "DataArray":
            return ds
        return ds[_variable_name(metadata.get("name"))].rename(metadata.get("name"))

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return ``{"type", "dims", "variables"}`` (the first 20 variable names)."""
        names = [str(obj.name)] if hasattr(obj, "to_dataset") else [str(k) for k in obj]
        return {"type": type(obj).__name__, "dims": {str(k): int(v) for k, v in obj.sizes.items()},
                "variables": names[:20]}


def _variable_name(name: Any) -> str:
    return DATAARRAY_VARIABLE if name is None else str(name)


# ----------------------------------------------------------------------------- checks
def _exact_dataset(xr: Any, ds: Any) -> bool:
    if any(type(k) is not str for k in ds.variables) or not _exact_attrs(ds.attrs):
        return False
    if any(type(d) is not str for d in ds.dims):
        return False
    if any(type(index).__name__ == "PandasMultiIndex" for index in ds.xindexes.values()):
        return False
    return all(_exact_variable(v) for v in ds.variables.values())


def _exact_variable(variable: Any) -> bool:
    if set(variable.attrs) & _ENCODING_ATTRS or not _exact_attrs(variable.attrs):
        return False
    dtype = variable.dtype
    if not isinstance(dtype, np.dtype):
        return False
    if "units" in variable.attrs and (dtype.kind in "Mm" or " since " in str(
            variable.attrs["units"])):
        return False  # xarray writes its own units for times, and decodes "X since Y"
    if dtype.kind in "biufSU":
        return True
    if dtype.kind in "Mm":
        return np.datetime_data(dtype)[0] in _TIME_UNITS
    if dtype.kind == "O":
        # Strings only, no missing values: netCDF strings have no null.
        return all(type(v) is str for v in np.asarray(variable.values).ravel())
    return False


def _exact_attrs(attrs: dict[Any, Any]) -> bool:
    return all(type(k) is str and _attr_kind(v) is not None for k, v in attrs.items())


def _attr_kind(value: Any) -> str | None:
    """How an attribute comes back, or None when netCDF cannot hold it exactly."""
    kind = type(value)
    if kind is str:
        return "str"
    if kind in (int, float):
        return kind.__name__  # read back as numpy scalars
    if isinstance(value, np.generic):
        return "numpy" if value.dtype.kind in "iuf" else None
    if kind is np.ndarray:
        ok = value.ndim == 1 and value.size > 0 and value.dtype.kind in "iuf" \
            and value.dtype.isnative
        return None if not ok else "array1" if value.size == 1 else "array"
    if kind is list and value:
        kinds = {type(v) for v in value}
        if kinds == {str}:
            return "str_list"
        if kinds in ({int}, {float}):
            return "list"
    return None


def _attr_kinds(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes whose type netCDF changes: name -> how to restore it."""
    kinds: dict[str, Any] = {}
    for key, value in attrs.items():
        kind = _attr_kind(value)
        if kind in ("int", "float", "list"):
            kinds[key] = kind
        elif kind == "array1":
            kinds[key] = ["array1", value.dtype.str]
    return kinds


# ----------------------------------------------------------------------------- loading
def _decoders(xr: Any, dtypes: dict[str, str]) -> dict[str, Any]:
    """Decode times exactly where the saved variable was a time, nowhere else."""
    if not dtypes:
        return {}  # a file from elsewhere: xarray's defaults
    times: dict[str, Any] = {}
    deltas: dict[str, Any] = {}
    for name, code in dtypes.items():
        dtype = np.dtype(code)
        unit = np.datetime_data(dtype)[0] if dtype.kind in "Mm" else None
        times[name] = xr.coders.CFDatetimeCoder(time_unit=unit) if dtype.kind == "M" else False
        deltas[name] = xr.coders.CFTimedeltaCoder(time_unit=unit) if dtype.kind == "m" else False
    return {"decode_times": times, "decode_timedelta": deltas}


def _restore(ds: Any, dtypes: dict[str, str], attrs: dict[str, Any]) -> Any:
    """Give back the exact dtypes and attribute types netCDF does not keep."""
    changed = {name: code for name, code in dtypes.items()
               if name in ds.variables and ds.variables[name].dtype.str != code}
    for name, code in changed.items():
        # Only these variables are read now (object strings, byte order): the rest stay lazy.
        restored = ds[name].astype(np.dtype(code))
        ds = ds.assign_coords({name: restored}) if name in ds.coords \
            else ds.assign({name: restored})
    _restore_attrs(ds.attrs, attrs.get("", {}))
    for name, kinds in attrs.items():
        if name and name in ds.variables:
            _restore_attrs(ds.variables[name].attrs, kinds)
    return ds


def _restore_attrs(attrs: dict[str, Any], kinds: dict[str, Any]) -> None:
    for key, kind in kinds.items():
        value = attrs[key]
        if kind in ("int", "float"):
            attrs[key] = int(value) if kind == "int" else float(value)
        elif kind == "list":
            attrs[key] = np.atleast_1d(value).tolist()
        else:  # ["array1", dtype]: a one-element array comes back as a scalar
            attrs[key] = np.array([value], dtype=np.dtype(kind[1]))
