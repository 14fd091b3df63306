"""netCDF: xarray values round-trip exactly and open lazily; xarray opens the files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from store_files import only_file, stored_files

import provstore
from provstore.backends import registry
from provstore.errors import BackendError
from provstore.testing import BackendConformance

BACKEND = registry.get("netcdf")
RNG = np.random.default_rng(17)
# xarray values are hashed through pickle (provstore.hashing warns once per type).
HASHED_BY_PICKLE = pytest.mark.filterwarnings("ignore:provstore hashes .* through pickle")


def values() -> list[Any]:
    rng = np.random.default_rng(17)  # the same values on every call
    time = pd.date_range("2024-01-01", periods=4, freq="D")  # microseconds under pandas 3
    ds = xr.Dataset(
        {
            "temperature": (("time", "x"), rng.normal(size=(4, 3)),
                            {"units": "degC", "long_name": "T", "valid": np.array([-50.0, 60.0])}),
            "count": ("time", np.array([1, 2, 3, -4], dtype=np.int16)),
            "big": ("x", np.array([0, 1, 2**64 - 1], dtype=np.uint64)),
            "flag": ("x", np.array([True, False, True])),
            "half": ("x", np.array([1, 2, 3], dtype=np.float16)),
            "label": ("x", np.array(["a", "bb", "naïve Δ"], dtype=object)),
            "code": ("x", np.array([b"x", b"yz", b""])),
            "fixed": ("x", np.array(["u", "vw", ""])),
            "when_s": ("x", np.array(["2020-01-01T00:00:01"] * 3, dtype="M8[s]")),
            "when_ns": ("x", np.array(["2020-01-01T00:00:00.000000001", "NaT", "1970-01-01"],
                                      dtype="M8[ns]")),
            "delay": ("x", np.array([1, 2, 3], dtype="m8[ms]")),
            "swapped": ("x", np.arange(3, dtype=">i4")),
            "special": ("x", np.array([np.nan, -0.0, np.inf])),
            "scalar": ((), 2.5, {"n": 3, "ratio": 0.5, "one": np.array([7.0], dtype=np.float32),
                                 "names": ["a", "b"], "ints": [1, 2]}),
        },
        coords={"time": time, "x": [10, 20, 30], "station": ("x", ["s1", "s2", "s3"])},
        attrs={"title": "provstore", "version": 2, "numpy": np.int32(5)},
    )
    return [
        ds,
        xr.Dataset(),
        xr.DataArray(rng.normal(size=(2, 3)), dims=("a", "b"), name="signal",
                     coords={"a": ["p", "q"]}, attrs={"units": "V"}),
        xr.DataArray(np.arange(4.0), dims="t"),  # unnamed
        xr.DataArray(np.array(["2000-01-01"], dtype="M8[us]"), dims="t", name="dates"),
    ]


def assert_same(actual: Any, expected: Any) -> None:
    """Identical (names, coords, attrs), and dtypes and attribute types exactly equal."""
    assert type(actual) is type(expected)
    xr.testing.assert_identical(actual, expected)
    if isinstance(expected, xr.DataArray):
        actual, expected = actual.to_dataset(name="v"), expected.to_dataset(name="v")
    _same_attr_types(actual.attrs, expected.attrs, "attrs")
    for name, variable in expected.variables.items():
        assert actual.variables[name].dtype == variable.dtype, name
        _same_attr_types(actual.variables[name].attrs, variable.attrs, str(name))


def _same_attr_types(actual: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    for key, value in expected.items():
        assert type(actual[key]) is type(value), f"{where}.{key}: {type(actual[key])}"
        if isinstance(value, (np.ndarray, np.generic)):
            assert actual[key].dtype == value.dtype, f"{where}.{key}"


class TestNetcdf(BackendConformance):
    backend = BACKEND

    def sample_values(self) -> list[Any]:
        return values()

    def large_sample(self) -> Any:
        return xr.Dataset({"field": (("t", "y", "x"), RNG.normal(size=(64, 128, 128)))})

    def assert_equal(self, actual: Any, expected: Any) -> None:
        assert_same(actual, expected)


def declined() -> list[Any]:
    return [
        xr.Dataset({"mixed": ("x", np.array(["a", 1], dtype=object))}),
        xr.Dataset({"missing": ("x", np.array(["a", None], dtype=object))}),
        xr.Dataset({"z": ("x", np.array([1 + 2j]))}),
        xr.Dataset(attrs={"flag": True}),
        xr.Dataset(attrs={"nothing": None}),
        xr.Dataset(attrs={"nested": {"a": 1}}),
        xr.Dataset(attrs={"mixed": [1, "a"]}),
        xr.Dataset({"t": ("x", np.array([0.0]), {"units": "days since 2000-01-01"})}),
        xr.Dataset({"v": ("x", np.array([1.0]), {"_FillValue": -1.0})}),
        xr.Dataset({7: ("x", np.array([1.0]))}),
        xr.DataArray([1.0], dims="x", name=("tuple", "name")),
    ]


@pytest.mark.parametrize("value", declined(), ids=lambda v: type(v).__name__)
def test_inexact_values_are_declined(value: Any) -> None:
    assert not BACKEND.can_save(value)


@HASHED_BY_PICKLE
@pytest.mark.parametrize("index", range(len(values())))
def test_store_round_trip_and_xarray_opens_the_file(ctx: provstore.Context, index: int) -> None:
    value = values()[index]
    ctx.field = value
    loaded = ctx.field
    assert_same(loaded, value)
    assert not stored_files(ctx, ".pkl")
    path = only_file(ctx, ".nc")
    with xr.open_dataset(path) as plain:  # no engine named: xarray finds one
        assert set(plain.dims) == set(value.dims)


@HASHED_BY_PICKLE
def test_load_is_lazy(ctx: provstore.Context) -> None:
    ctx.field = values()[0]
    loaded = ctx.field
    assert not loaded["temperature"].variable._in_memory
    np.testing.assert_array_equal(loaded["temperature"].values, values()[0]["temperature"].values)


@HASHED_BY_PICKLE
def test_safe_store_reads_xarray_values(store_dir: Path) -> None:
    safe = provstore.open(store_dir, safe=True)
    safe.field = values()[2]
    assert_same(safe.field, values()[2])


def test_missing_h5netcdf_says_how_to_install(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ds.nc"
    BACKEND.save(values()[1], path)
    monkeypatch.setitem(sys.modules, "h5netcdf", None)  # what an absent package looks like
    with pytest.raises(BackendError, match=r'pip install "provstore\[netcdf\]"'):
        BACKEND.load(path, {}, mmap_mode=None)


@HASHED_BY_PICKLE
def test_ingest_a_netcdf_file_written_by_xarray(ctx: provstore.Context, tmp_path: Path) -> None:
    path = tmp_path / "field.nc"
    ds = xr.Dataset({"v": (("t", "x"), np.arange(6.0).reshape(2, 3))}, coords={"x": [1, 2, 3]},
                    attrs={"title": "from elsewhere"})
    ds.to_netcdf(path)
    ctx.field_file = provstore.File(path)
    xr.testing.assert_identical(ctx.field_file, ds)
