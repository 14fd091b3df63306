"""npy specifics: byte-identical to np.save, one-pass checksum, no copies, memmap rules."""

from __future__ import annotations

import io
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from backend_samples import numpy_scalars, tricky_arrays

from provstore.backends import registry
from provstore.errors import BackendError, CorruptObjectError, UnsupportedTypeError
from provstore.hashing import file_digest
from provstore.testing import assert_values_equal

BACKEND = registry.get("npy")


def _np_save_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Stored array in format 2.0/3.0"
        np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _wide_dtype(names: list[str]) -> np.dtype[Any]:
    return np.dtype([(n, "<f4") for n in names])


HEADER_VERSIONS = [
    np.zeros(2, _wide_dtype([f"field_{i:05d}" for i in range(3000)])),  # header > 64 kB: v2.0
    np.zeros(2, _wide_dtype(["日本", "Δ"])),  # non-latin-1 field names: v3.0
]


@pytest.mark.parametrize("value", [*tricky_arrays(), *numpy_scalars(), *HEADER_VERSIONS],
                         ids=lambda v: f"{type(v).__name__}{v.dtype.str}{np.shape(v)}")
def test_file_is_np_save_and_checksum_is_of_its_bytes(value: Any, tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    meta, digest, size = BACKEND.save_with_checksum(value, path)
    data = path.read_bytes()
    assert data == _np_save_bytes(np.asarray(value))
    assert digest == file_digest(path)
    assert size == len(data)
    assert meta["scalar"] == isinstance(value, np.generic)
    assert_values_equal(np.load(path, allow_pickle=False, max_header_size=1 << 20),
                        np.asarray(value))
    assert_values_equal(BACKEND.load(path, meta, mmap_mode="r"), value)


def test_save_and_save_with_checksum_write_the_same_file(tmp_path: Path) -> None:
    arr = np.asfortranarray(np.arange(24.0).reshape(2, 3, 4))
    BACKEND.save(arr, tmp_path / "a.npy")
    BACKEND.save_with_checksum(arr, tmp_path / "b.npy")
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_save_does_not_copy_the_array(layout: str, tmp_path: Path) -> None:
    base = np.ones((2048, 2048))  # 32 MiB
    arr = {"C": base, "F": np.asfortranarray(base), "strided": base[:, ::2]}[layout]
    tracemalloc.start()
    try:
        BACKEND.save_with_checksum(arr, tmp_path / "a.npy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Contiguous layouts are written from the array's own memory; a strided
    # view goes through bounded chunks. A full copy would be 16-32 MiB.
    assert peak < 12 * 2**20


def test_memmap_modes(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    meta = BACKEND.save(np.arange(6.0), path)
    mapped = BACKEND.load(path, meta, mmap_mode="r")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    copy = BACKEND.load(path, meta, mmap_mode=None)
    assert not isinstance(copy, np.memmap) and copy.flags.writeable
    private = BACKEND.load(path, meta, mmap_mode="c")
    private[0] = 99.0  # copy-on-write: the file is untouched
    assert BACKEND.load(path, meta, mmap_mode=None)[0] == 0.0
    with pytest.raises(BackendError, match="immutable"):
        BACKEND.load(path, meta, mmap_mode="r+")


@pytest.mark.parametrize("value", [np.zeros((0, 4)), np.zeros(0, dtype="U3"), np.zeros((3, 0))])
def test_empty_arrays_load_read_only_without_a_map(value: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    meta = BACKEND.save(value, path)
    loaded = BACKEND.load(path, meta, mmap_mode="r")
    assert_values_equal(loaded, value)
    assert not loaded.flags.writeable


def test_scalars_come_back_as_scalars(tmp_path: Path) -> None:
    for i, scalar in enumerate(numpy_scalars()):
        path = tmp_path / f"{i}.npy"
        meta = BACKEND.save(scalar, path)
        loaded = BACKEND.load(path, meta, mmap_mode="r")
        assert type(loaded) is type(scalar)
        assert_values_equal(loaded, scalar)


class Sub(np.ndarray):
    pass


@pytest.mark.parametrize("value", [
    np.array([1, "a"], dtype=object), np.zeros(2, dtype=[("o", object)]), np.ma.masked_array([1]),
    np.zeros(3).view(Sub), [1, 2], 3.0, np.array(["x"], dtype=np.dtypes.StringDType()),
])
def test_refuses_what_npy_cannot_hold_without_pickle(value: Any, tmp_path: Path) -> None:
    assert not BACKEND.can_save(value)
    with pytest.raises(UnsupportedTypeError):
        BACKEND.save_with_checksum(value, tmp_path / "a.npy")
    assert list(tmp_path.iterdir()) == []


def test_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTypeError, match="compress"):
        BACKEND.save(np.zeros(2), tmp_path / "a.npy", compress=True)


def test_trailing_bytes_are_corruption(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    meta = BACKEND.save(np.arange(4), path)
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(CorruptObjectError, match="announces"):
        BACKEND.load(path, meta, mmap_mode="r")


def test_pickled_object_arrays_are_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CorruptObjectError, match="pickled"):
        BACKEND.load(path, {}, mmap_mode="r")


def test_ingested_file_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(5, dtype=">i2"))
    loaded = BACKEND.load(path, {}, mmap_mode="r")
    assert loaded.dtype == np.dtype(">i2") and loaded.tolist() == [0, 1, 2, 3, 4]
