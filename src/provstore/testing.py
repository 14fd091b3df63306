"""The conformance suite every storage backend passes, built-in or third-party.

Subclass :class:`BackendConformance` in a pytest module, under a name pytest
collects, give it the backend and the values it must round-trip::

    from provstore.testing import BackendConformance

    class TestZarrBackend(BackendConformance):
        backend = ZarrBackend()

        def sample_values(self):
            return [zarr.zeros(3), zarr.ones((2, 2), dtype=">f4")]

Every test takes pytest's ``tmp_path``; each sample value becomes one
parametrized case (``test_round_trip[3-ndarray>f8(5,)]``). Requires pytest.
"""

from __future__ import annotations

import json
import math
import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from .backends.base import Backend
from .errors import CorruptObjectError, UnsupportedTypeError

__all__ = ["BackendConformance", "assert_values_equal"]


class BackendConformance:
    """Generic tests for a :class:`~provstore.backends.base.Backend`.

    Attributes
    ----------
    backend : Backend
        The backend instance under test (set by the subclass).
    save_options : dict
        Options passed to every save/encode (``{"compress": True}``).
    rejects_arbitrary_objects : bool
        Whether ``can_save(object())`` must be False (not for pickle or raw).
    detects_corruption : bool
        Whether truncated or garbage files must raise
        :class:`~provstore.errors.CorruptObjectError` at load (not for raw,
        where every byte string is valid).
    """

    backend: ClassVar[Backend]
    save_options: ClassVar[dict[str, Any]] = {}
    rejects_arbitrary_objects: ClassVar[bool] = True
    detects_corruption: ClassVar[bool] = True
    _sample_cache: ClassVar[list[Any]]

    # ------------------------------------------------------------------ hooks
    def sample_values(self) -> list[Any]:
        """Return the values the backend must round-trip exactly (override)."""
        raise NotImplementedError("a BackendConformance subclass must define sample_values()")

    def large_sample(self) -> Any:
        """Return one large value (tens of MB) round-tripped once, or None to skip."""
        return None

    def corruptible_sample(self) -> Any:
        """Return the value whose file the corruption tests truncate and garble."""
        return self._samples()[0]

    def assert_equal(self, actual: Any, expected: Any) -> None:
        """Fail unless *actual* (loaded) is exactly *expected* (saved)."""
        assert_values_equal(actual, expected)

    # ---------------------------------------------------------------- helpers
    @classmethod
    def _samples(cls) -> list[Any]:
        # Built once per class: collection parametrizes several tests with them.
        if "_sample_cache" not in cls.__dict__:
            cls._sample_cache = cls().sample_values()
        return cls._sample_cache

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """Parametrize every test taking ``sample`` with :meth:`sample_values`."""
        if "sample" not in metafunc.fixturenames:
            return
        reason = self._not_applicable(metafunc.definition.name)
        if reason:  # one skipped case rather than one per sample
            metafunc.parametrize("sample", [pytest.param(None, marks=pytest.mark.skip(reason))],
                                 ids=["n/a"])
            return
        values = self._samples()
        metafunc.parametrize("sample", values, ids=[_sample_id(i, v) for i, v in
                                                    enumerate(values)])

    def _not_applicable(self, test_name: str) -> str | None:
        backend = self.backend
        if test_name == "test_round_trip_mmap" and not backend.supports_mmap:
            return f"{backend.name} does not memory-map"
        if test_name == "test_suffix_is_registered" and (backend.inline or not backend.suffixes):
            return f"{backend.name} has no fixed file suffixes"
        return None

    def store(self, value: Any, directory: Path) -> tuple[Path | None, dict[str, Any], bytes]:
        """Save *value* as the store would: into *directory* or inline.

        Returns the file path (None for inline backends), the metadata after
        a JSON round trip (the store keeps it as JSON) and the inline bytes.
        """
        backend = self.backend
        if backend.inline:
            data, meta = backend.encode(value, **self.save_options)
            return None, json.loads(json.dumps(meta)), data
        path = directory / ("object" + backend.suffix_for(value, dict(self.save_options)))
        meta = backend.save(value, path, **self.save_options)
        return path, json.loads(json.dumps(meta)), b""

    def fetch(self, path: Path | None, meta: dict[str, Any], data: bytes,
              mmap_mode: str | None = None) -> Any:
        """Load what :meth:`store` saved."""
        if path is None:
            return self.backend.decode(data, meta)
        return self.backend.load(path, meta, mmap_mode=mmap_mode)

    def _corruptible_file(self, directory: Path) -> tuple[Path, dict[str, Any]]:
        value = self.corruptible_sample()
        path, meta, data = self.store(value, directory)
        if path is None:  # inline backend that also ingests files: its file is its encoding
            if not self.backend.suffixes:
                pytest.skip("inline backend without a file format")
            path = directory / ("object" + self.backend.suffixes[0])
            path.write_bytes(data)
        return path, meta

    def _mmap_modes(self) -> list[str | None]:
        return [None, "r"] if self.backend.supports_mmap else [None]

    # ------------------------------------------------------------------ tests
    def test_can_save_sample(self, sample: Any) -> None:
        assert self.backend.can_save(sample)

    def test_round_trip(self, sample: Any, tmp_path: Path) -> None:
        path, meta, data = self.store(sample, tmp_path)
        if path is not None:
            assert sorted(tmp_path.iterdir()) == [path], "save left other files behind"
        self.assert_equal(self.fetch(path, meta, data), sample)

    def test_round_trip_mmap(self, sample: Any, tmp_path: Path) -> None:
        path, meta, data = self.store(sample, tmp_path)
        loaded = self.fetch(path, meta, data, mmap_mode="r")
        self.assert_equal(loaded, sample)
        for arr in _arrays(loaded):
            if _is_mapped(arr):
                assert not arr.flags.writeable, "a memory map of a stored object is writeable"
                with pytest.raises(ValueError, match="read-only"):
                    arr[...] = arr

    def test_large_round_trip(self, tmp_path: Path) -> None:
        value = self.large_sample()
        if value is None:
            pytest.skip("no large sample")
        path, meta, data = self.store(value, tmp_path)
        mode = "r" if self.backend.supports_mmap else None
        self.assert_equal(self.fetch(path, meta, data, mmap_mode=mode), value)

    def test_metadata_and_description_are_json(self, sample: Any, tmp_path: Path) -> None:
        summary = self.backend.describe(sample)
        assert isinstance(summary, dict)
        assert json.loads(json.dumps(summary)) == summary
        _, meta, _ = self.store(sample, tmp_path)
        assert isinstance(meta, dict)

    def test_suffix_is_registered(self, sample: Any) -> None:
        assert self.backend.suffix_for(sample, dict(self.save_options)) in self.backend.suffixes

    def test_truncated_file(self, tmp_path: Path) -> None:
        if not self.detects_corruption:
            pytest.skip(f"every byte string is a valid {self.backend.name} file")
        path, meta = self._corruptible_file(tmp_path)
        full = path.read_bytes()
        for cut in sorted({0, 1, len(full) // 2, len(full) - 1}):
            path.write_bytes(full[:cut])
            for mode in self._mmap_modes():
                with pytest.raises(CorruptObjectError):
                    self.backend.load(path, meta, mmap_mode=mode)

    def test_garbage_file(self, tmp_path: Path) -> None:
        if not self.detects_corruption:
            pytest.skip(f"every byte string is a valid {self.backend.name} file")
        path, meta = self._corruptible_file(tmp_path)
        garbage = [np.random.default_rng(20240611).bytes(4096),
                   b"this is not what the file should contain\n" * 20]
        for content in garbage:
            path.write_bytes(content)
            for mode in self._mmap_modes():
                with pytest.raises(CorruptObjectError):
                    self.backend.load(path, meta, mmap_mode=mode)

    def test_missing_file(self, tmp_path: Path) -> None:
        if self.backend.inline and not self.backend.suffixes:
            pytest.skip("inline backend without a file format")
        suffix = self.backend.suffixes[0] if self.backend.suffixes else ""
        with pytest.raises(CorruptObjectError):
            self.backend.load(tmp_path / f"missing{suffix}", {}, mmap_mode=None)

    def test_rejects_arbitrary_object(self, tmp_path: Path) -> None:
        if not self.rejects_arbitrary_objects:
            pytest.skip(f"{self.backend.name} accepts any object")
        assert not self.backend.can_save(object())
        with pytest.raises(UnsupportedTypeError):
            self.store(object(), tmp_path)
        assert list(tmp_path.iterdir()) == [], "a refused save wrote a file"


# ---------------------------------------------------------------------- comparison
def assert_values_equal(actual: Any, expected: Any, where: str = "value") -> None:
    """Assert that *actual* is exactly *expected*: types, dtypes, byte order, shape, bits.

    Containers are compared recursively (dict keys in order); floats by bit
    pattern class (NaN equals NaN, ``-0.0`` differs from ``0.0``); arrays by
    dtype (byte order included), shape and content; nibabel images by class,
    header class, affine, data dtype, shape, zooms and data.
    """
    if _is_image(expected):
        _assert_images_equal(actual, expected, where)
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), f"{where}: {type(actual).__qualname__} not ndarray"
        _assert_arrays_equal(actual, expected, where)
    else:
        assert type(actual) is type(expected), (
            f"{where}: {type(actual).__qualname__} != {type(expected).__qualname__}"
        )
        if isinstance(expected, np.generic):
            _assert_arrays_equal(np.asarray(actual), np.asarray(expected), where)
        elif isinstance(expected, dict):
            assert list(actual) == list(expected), f"{where}: keys {list(actual)}"
            for key in expected:
                assert_values_equal(actual[key], expected[key], f"{where}[{key!r}]")
        elif isinstance(expected, (list, tuple)):
            assert len(actual) == len(expected), f"{where}: length {len(actual)}"
            for i, (a, e) in enumerate(zip(actual, expected)):
                assert_values_equal(a, e, f"{where}[{i}]")
        elif isinstance(expected, (float, complex)):
            pairs = [(actual.real, expected.real), (actual.imag, expected.imag)]
            assert all(_same_float(a, e) for a, e in pairs), f"{where}: {actual!r} != {expected!r}"
        else:
            assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def _assert_arrays_equal(actual: np.ndarray, expected: np.ndarray, where: str) -> None:
    assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype!r} != {expected.dtype!r}"
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
    if expected.dtype.names is not None:
        # Field by field: padding bytes between fields carry no value.
        for name in expected.dtype.names:
            _assert_arrays_equal(actual[name], expected[name], f"{where}[{name!r}]")
    elif expected.dtype.hasobject:
        for i, (a, e) in enumerate(zip(actual.ravel(), expected.ravel())):
            assert_values_equal(a, e, f"{where}.flat[{i}]")
    elif expected.size and expected.itemsize:
        # Bitwise, so NaN payloads and signed zeros count; no copy when contiguous.
        a = np.ascontiguousarray(actual).reshape(-1).view(np.uint8)
        e = np.ascontiguousarray(expected).reshape(-1).view(np.uint8)
        assert np.array_equal(a, e), f"{where}: array contents differ"


def _assert_images_equal(actual: Any, expected: Any, where: str) -> None:
    assert type(actual) is type(expected), f"{where}: {type(actual).__name__}"
    assert type(actual.header) is type(expected.header), f"{where}: header class"
    # NIfTI-1 stores the affine as float32 (srow_*), NIfTI-2 as float64: an
    # in-memory float64 affine comes back rounded to what the header holds.
    srow = getattr(expected.header, "get", lambda _k: None)("srow_x")
    eps = 4 * np.finfo(srow.dtype).eps if srow is not None else 0.0
    np.testing.assert_allclose(actual.affine, expected.affine, rtol=eps,
                               atol=eps * float(np.abs(expected.affine).max()),
                               err_msg=f"{where}: affine")
    assert actual.get_data_dtype() == expected.get_data_dtype(), f"{where}: data dtype"
    assert actual.shape == expected.shape, f"{where}: shape"
    assert actual.header.get_zooms() == expected.header.get_zooms(), f"{where}: zooms"
    a, e = np.asanyarray(actual.dataobj), np.asanyarray(expected.dataobj)
    assert a.dtype.newbyteorder("=") == e.dtype.newbyteorder("="), f"{where}: data dtype"
    np.testing.assert_array_equal(a, e, err_msg=f"{where}: data")


def _same_float(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _is_image(value: Any) -> bool:
    return type(value).__module__.startswith("nibabel.") and hasattr(value, "dataobj")


def _arrays(value: Any) -> Iterator[np.ndarray]:
    """Every array reachable from a loaded value (image data included)."""
    if isinstance(value, np.ndarray):
        yield value
    elif _is_image(value):
        yield np.asanyarray(value.dataobj)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _arrays(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _arrays(item)


def _is_mapped(arr: np.ndarray) -> bool:
    base: Any = arr
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return True
        base = getattr(base, "base", None)
    return False


def _sample_id(index: int, value: Any) -> str:
    if isinstance(value, (np.ndarray, np.generic)):
        return f"{index}-{type(value).__name__}{value.dtype.str}{value.shape}"
    if _is_image(value):
        return f"{index}-{type(value).__name__}{value.shape}"
    return f"{index}-{type(value).__name__}"
