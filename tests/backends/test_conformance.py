"""Every built-in backend through the shared conformance suite (provstore.testing)."""

from __future__ import annotations

import atexit
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from backend_samples import RNG, affine, nifti_images, numpy_scalars, structured, tricky_arrays

from provstore.backends import registry
from provstore.objects import ObjectDir
from provstore.saving import publish_element
from provstore.testing import BackendConformance, assert_values_equal


# ---------------------------------------------------------------------------- backends
class TestJson(BackendConformance):
    backend = registry.get("json")

    def sample_values(self) -> list[Any]:
        return [None, True, False, 0, -1, 2**100, 1.5, -0.0, float("nan"), float("inf"),
                -float("inf"), "", "naïve Δ 日本", "\x00 and \n", [], {},
                [1, 2.0, "3", None, [True]],
                {"a": [1, 2.0, {"b": None}], "ü": "x", "": {"nested": {"deep": [[]]}}}]

    def corruptible_sample(self) -> Any:
        return {"a": [1, 2, 3], "b": "text"}  # every truncation of an object is invalid


class TestNpy(BackendConformance):
    backend = registry.get("npy")

    def sample_values(self) -> list[Any]:
        return [*tricky_arrays(), *numpy_scalars()]

    def large_sample(self) -> Any:
        return RNG.normal(size=(50 * 2**20) // 8)  # 50 MB

    def test_memmap_load_is_mapped(self, tmp_path: Path) -> None:
        path, meta, data = self.store(np.arange(1000.0), tmp_path)
        loaded = self.fetch(path, meta, data, mmap_mode="r")
        assert isinstance(loaded, np.memmap)
        assert not loaded.flags.writeable


class TestHdf5(BackendConformance):
    backend = registry.get("hdf5")

    def sample_values(self) -> list[Any]:
        w, b = RNG.normal(size=(5, 3)), RNG.normal(size=3).astype(np.float32)
        arrays = tricky_arrays()
        return [
            {"W": w, "b": b, "meta": {"name": "aam"}},
            {f"a{i}": arr for i, arr in enumerate(arrays)},
            {f"s{i}": s for i, s in enumerate(numpy_scalars())},
            [w, "naïve Δ 日本", (1, 2.5, None), [], {}],
            (b, {"k": [True, False]}, ()),
            {"int": 3, "big": -(2**80), "float": -0.0, "nan": float("nan"), "bool": False,
             "complex": 1.5 - 2j, "str": "", "nul": "ends\x00", "bytes": b"\x00\xffab",
             "bytes_nul": b"ab\x00", "none": None},
            # Keys that are no valid node names, and an order HDF5 would sort otherwise.
            {"z": 1, "a/b": 2, "": 3, ".": 4, "_v_attrs": 5, "_i_x": 6, "__members__": 7,
             "PROVSTORE_KEY_0": 8, "class": 9, "0": 10, "naïve Δ": 11, "0.": 12, "a.": 13},
            {},
            [],
            w,
            np.float64(2.5),
            "a bare string",
            None,
        ]

    def large_sample(self) -> Any:
        return {"big": RNG.normal(size=(50 * 2**20) // 8), "small": np.arange(3)}


class TestHdf5Compressed(TestHdf5):
    save_options = {"compress": True}


class TestHdf5Chunked(TestHdf5):
    save_options = {"chunked": True}

    def large_sample(self) -> Any:
        return None  # the compressed and contiguous classes cover it


class TestNifti(BackendConformance):
    backend = registry.get("nifti")

    def sample_values(self) -> list[Any]:
        return nifti_images()

    def corruptible_sample(self) -> Any:
        # Big enough that a cut inside the data leaves the header readable, so
        # only the backend's own size checks can notice.
        data = RNG.integers(-1000, 1000, (64, 64, 32)).astype(np.int16)
        return nib.Nifti1Image(data, affine())

    def large_sample(self) -> Any:
        # A 4D run of 64 MB: the size of a short fMRI session.
        return nib.Nifti1Image(RNG.normal(size=(64, 64, 32, 128)).astype(np.float32), affine())


class TestNiftiCompressed(TestNifti):
    save_options = {"compress": True}

    def large_sample(self) -> Any:
        # gzip runs at ~30 MB/s here: 16 MB keeps the case under a second.
        return nib.Nifti1Image(RNG.normal(size=(64, 64, 32, 32)).astype(np.float32), affine())


class TestContainer(BackendConformance):
    """Lists, tuples and dicts of images: a manifest whose elements are their own files.

    The store publishes the elements before the manifest (``saving.publish_element``);
    here they go to an object directory beside the test's, so that the
    manifest stays the only file the save leaves in it, as the suite checks.
    """

    backend = registry.get("container")

    def sample_values(self) -> list[Any]:
        img1, img2, img3, *_ = nifti_images()
        arrays = tricky_arrays()
        return [
            [img1, img2],
            (img3,),
            {"anat": img1, "mask": arrays[0], "tr": 2.0, "name": "sub-01", "none": None},
            [img2, {"runs": (img3, img1), "n": 3}, [arrays[1], True]],
            {"": [img1], "ü/x": img3},
        ]

    def corruptible_sample(self) -> Any:
        return {"a": nifti_images()[0], "b": [1, 2, 3]}

    def large_sample(self) -> Any:
        run = nib.Nifti1Image(RNG.normal(size=(64, 64, 32, 64)).astype(np.float32), affine())
        return [run, run.get_fdata(dtype=np.float32)[..., 0]]  # 32 MB and an array

    @staticmethod
    def _objects(directory: Path) -> ObjectDir:
        return ObjectDir(directory.parent / f"{directory.name}-objects", durable=False)

    def store(self, value: Any, directory: Path) -> tuple[Path | None, dict[str, Any], bytes]:
        options = dict(self.save_options)
        layout = self.backend.layout(value, options)
        objects = self._objects(directory)
        files = [publish_element(objects, leaf) for leaf in layout.leaves]
        path = directory / ("object" + self.backend.suffix_for(value, options))
        meta = self.backend.save(value, path, **options, files=files)
        return path, json.loads(json.dumps(meta)), b""

    def fetch(self, path: Path | None, meta: dict[str, Any], data: bytes,
              mmap_mode: str | None = None) -> Any:
        assert path is not None
        return self.backend.load(path, meta, mmap_mode=mmap_mode,
                                 objects=self._objects(path.parent))

    def test_each_image_is_a_file_nibabel_opens(self, tmp_path: Path) -> None:
        value = self.sample_values()[2]
        _, meta, _ = self.store(value, tmp_path)
        objects = self._objects(tmp_path)
        (image,) = [f for f in meta["files"] if f["format"] == "nifti"]
        opened = nib.load(objects.path(image["digest"], image["suffix"]))
        assert_values_equal(opened, value["anat"])


class TestContainerCompressed(TestContainer):
    save_options = {"compress": True}


@dataclasses.dataclass
class Point:
    """A module-level class: picklable by reference."""

    x: float
    label: str


class TestPickle(BackendConformance):
    backend = registry.get("pickle")
    rejects_arbitrary_objects = False

    def sample_values(self) -> list[Any]:
        objects = np.empty(3, dtype=object)
        objects[:] = [Point(1.0, "a"), {"k": (1, 2)}, None]
        return [Point(2.5, "naïve"), {1, 2, 3}, frozenset({"a"}), {(1, 2): "tuple key"},
                Fraction(1, 3), objects, [Point(0.0, "")] * 2, range(3)]

    def large_sample(self) -> Any:
        return {"points": [Point(float(i), "p") for i in range(1000)],
                "array": RNG.normal(size=(50 * 2**20) // 8)}


@dataclasses.dataclass
class FileLike:
    """Anything with a ``.path``, like provstore.File."""

    path: Path


def _raw_sources() -> list[Any]:
    folder = Path(tempfile.mkdtemp(prefix="provstore-raw-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    contents = {"empty.bin": b"", "table.csv": "a,b\n1,naïve\n".encode(),
                "noise.dat": RNG.bytes(100_000), "archive.Tar.GZ": b"\x1f\x8b not really"}
    paths = []
    for name, data in contents.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return [*paths, FileLike(paths[1])]


class TestRaw(BackendConformance):
    backend = registry.get("raw")
    detects_corruption = False

    def sample_values(self) -> list[Any]:
        return _raw_sources()

    def large_sample(self) -> Any:
        folder = Path(tempfile.mkdtemp(prefix="provstore-raw-large-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        big = folder / "recording.bin"
        big.write_bytes(RNG.bytes(50 * 2**20))
        return big

    def assert_equal(self, actual: Any, expected: Any) -> None:
        source = expected.path if isinstance(expected, FileLike) else expected
        assert isinstance(actual, Path)
        assert actual != source
        assert actual.read_bytes() == source.read_bytes()


# ------------------------------------------------------------------- the suite itself
def test_comparison_catches_differences() -> None:
    """The default assert_equal must notice each kind of difference it claims to check."""
    arr = np.arange(4, dtype="<f8")
    different = [
        (arr, arr.astype(">f8")),
        (arr, arr.reshape(2, 2)),
        (arr, arr + 1),
        (np.array([0.0]), np.array([-0.0])),
        (1, 1.0),
        ((1,), [1]),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        (np.float32(1), np.float64(1)),
        (float("nan"), 0.0),
        (structured(2), structured(2)[::-1]),
    ]
    for a, b in different:
        with pytest.raises(AssertionError):
            assert_values_equal(a, b)
    images = nifti_images()
    with pytest.raises(AssertionError):
        assert_values_equal(images[0], images[2])
    assert_values_equal({"x": [np.nan, arr]}, {"x": [np.nan, arr.copy()]})


BROKEN_BACKEND = '''
import numpy as np
from provstore.backends.npy import NpyBackend
from provstore.testing import BackendConformance


class Lossy(NpyBackend):
    name = "lossy"

    def save(self, obj, path, **options):
        arr = np.asarray(obj)
        return super().save(arr.astype(arr.dtype.newbyteorder("=")), path)  # drops byte order

    def load(self, path, metadata, *, mmap_mode):
        try:
            return super().load(path, metadata, mmap_mode="c" if mmap_mode else None)
        except Exception as exc:
            raise ValueError(str(exc))  # a raw error instead of CorruptObjectError


class TestLossy(BackendConformance):
    backend = Lossy()

    def sample_values(self):
        return [np.arange(3, dtype=">i4"), np.arange(3)]
'''


def test_suite_fails_a_broken_backend(tmp_path: Path) -> None:
    """A backend that loses byte order, maps writeably and raises raw errors must fail."""
    module = tmp_path / "test_lossy.py"
    module.write_text(BROKEN_BACKEND, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(module), "-q", "-rf", "-p", "no:cacheprovider",
         "-W", "error", "--rootdir", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    failed = {line.split(" ")[1].split("::", 1)[1] for line in result.stdout.splitlines()
              if line.startswith("FAILED ")}
    assert failed == {
        "TestLossy::test_round_trip[0-ndarray>i4(3,)]",
        "TestLossy::test_round_trip_mmap[0-ndarray>i4(3,)]",
        "TestLossy::test_round_trip_mmap[1-ndarray<i8(3,)]",
        "TestLossy::test_truncated_file",
        "TestLossy::test_garbage_file",
        "TestLossy::test_missing_file",
    }, result.stdout
