"""Hypothesis round trips: json values, npy arrays of many dtypes and layouts, hdf5 trees."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from provstore.backends import registry
from provstore.hashing import file_digest
from provstore.testing import assert_values_equal

JSON, NPY, HDF5 = registry.get("json"), registry.get("npy"), registry.get("hdf5")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)

DTYPES = ["<f8", ">f8", "<f4", ">i4", "<i2", "u1", "?", ">c16", "<c8", "<M8[s]", ">m8[ms]",
          "<U4", ">U2", "S3", "<f2"]
arrays = hnp.arrays(
    dtype=st.sampled_from(DTYPES).map(np.dtype),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)


def _layout(arr: np.ndarray, how: str) -> np.ndarray:
    if how == "F":
        return np.asfortranarray(arr)
    if how == "strided" and arr.ndim:
        return arr[::-1, ...][::2]
    return arr


@settings(max_examples=50, deadline=None)
@given(json_values)
def test_json_round_trip(value: Any) -> None:
    assert JSON.can_save(value)
    assert_values_equal(JSON.decode(*JSON.encode(value)), value)


@settings(max_examples=50, deadline=None)
@given(arrays, st.sampled_from(["C", "F", "strided"]))
def test_npy_round_trip(arr: np.ndarray, how: str) -> None:
    arr = _layout(arr, how)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.npy"
        meta, digest, size = NPY.save_with_checksum(arr, path)
        assert digest == file_digest(path) and size == path.stat().st_size
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        assert path.read_bytes() == buf.getvalue()
        for mode in ("r", None):
            assert_values_equal(NPY.load(path, meta, mmap_mode=mode), arr)


hdf5_leaves = (arrays | st.integers() | st.floats() | st.text() | st.binary(max_size=8)
               | st.none() | st.booleans() | st.complex_numbers())
hdf5_trees = st.recursive(
    hdf5_leaves,
    lambda children: st.lists(children, max_size=3) | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)


def _has_nul_key(value: Any) -> bool:
    if isinstance(value, dict):
        return any("\x00" in k or _has_nul_key(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul_key(v) for v in value)
    return False


@settings(max_examples=30, deadline=None)
@given(hdf5_trees)
def test_hdf5_round_trip(value: Any) -> None:
    # Arbitrary keys: empty, "/", ".", reserved prefixes, NUL (refused), any Unicode.
    if not HDF5.can_save(value):
        assert _has_nul_key(value)  # the only thing HDF5 names cannot hold
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.h5"
        HDF5.save(value, path)
        assert_values_equal(HDF5.load(path, {}, mmap_mode=None), value)
