"""Hostile and damaged files: readers refuse them with provstore errors, before allocating."""

from __future__ import annotations

import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tables

import provstore
from provstore.backends import registry
from provstore.errors import CorruptObjectError, ProvstoreError, UnsupportedTypeError

NIFTI = registry.get("nifti")
HDF5 = registry.get("hdf5")
JSON = registry.get("json")
# Memory the subprocesses below may use beyond what their imports took: far less
# than the data the hostile files declare.
HEADROOM = 1 << 30


# ------------------------------------------------------------------------------- JSON
def test_deeply_nested_json_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(CorruptObjectError, match=r"deep\.json .*recursion"):
        JSON.load(path, {}, mmap_mode=None)
    with pytest.raises(CorruptObjectError, match="recursion"):
        JSON.decode(b"{\"a\":" * 50_000 + b"1" + b"}" * 50_000, {})


def test_deeply_nested_json_ingest(ctx: provstore.Context, tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(CorruptObjectError, match=r"deep\.json"):
        ctx.deep = provstore.File(path)


# ------------------------------------------------------------------------------ NIfTI
def _with_dims(path: Path, dims: list[int]) -> None:
    """Rewrite the dim field of the NIfTI header at *path* (either version)."""
    raw = bytearray(path.read_bytes())
    if struct.unpack_from("<i", raw, 0)[0] == 540:  # NIfTI-2: int64 dims at offset 16
        struct.pack_into("<8q", raw, 16, len(dims), *dims, *[1] * (7 - len(dims)))
    else:  # NIfTI-1: int16 dims at offset 40
        struct.pack_into("<8h", raw, 40, len(dims), *dims, *[1] * (7 - len(dims)))
    path.write_bytes(raw)


@pytest.mark.parametrize("image_class", [nib.Nifti1Image, nib.Nifti2Image])
@pytest.mark.parametrize("dims", [[32767] * 7, [2**62, 2**62, 2**62], [30000, 30000, 30000]])
def test_absurd_nifti_dimensions(tmp_path: Path, image_class: type, dims: list[int]) -> None:
    if image_class is nib.Nifti1Image and max(dims) > 32767:
        dims = [32767] * len(dims)
    path = tmp_path / "absurd.nii"
    image_class(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_filename(path)
    _with_dims(path, dims)
    with pytest.raises(CorruptObjectError, match=r"absurd\.nii"):
        NIFTI.load(path, {}, mmap_mode="r")


def _gzip_bomb(path: Path, shape: tuple[int, ...], payload: bytes) -> None:
    """A .nii.gz whose header declares *shape* of float32 but holds only *payload*."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\x00" * 4
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(raw + payload)


def test_nifti_gz_declaring_far_more_than_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "bomb.nii.gz"
    _gzip_bomb(path, (1024, 1024, 1024), np.random.default_rng(0).bytes(1 << 20))
    with pytest.raises(CorruptObjectError, match=r"bomb\.nii\.gz declares 4,294,967,296 bytes"):
        NIFTI.load(path, {}, mmap_mode="r")


def test_nifti_beyond_the_data_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.nii"
    nib.Nifti1Image(np.zeros((64, 64, 64), np.float32), np.eye(4)).to_filename(path)
    monkeypatch.setattr("provstore.backends.limits.MAX_DATA_BYTES", 1 << 19)
    with pytest.raises(UnsupportedTypeError, match=r"big\.nii .*MAX_DATA_BYTES"):
        NIFTI.load(path, {}, mmap_mode="r")


INGEST_BOMB = """
import resource, sys
import provstore
from provstore.errors import ProvstoreError

ctx = provstore.open(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[3]), hard))
try:
    ctx.img = provstore.File(sys.argv[2])
except ProvstoreError as exc:
    print(type(exc).__name__, exc)
"""


def test_ingesting_a_nifti_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """ctx.x = File(bomb) under an address-space limit far below the declared 4 GiB."""
    bomb = tmp_path / "bomb.nii.gz"
    _gzip_bomb(bomb, (1024, 1024, 1024), np.random.default_rng(1).bytes(4_200_000))
    result = subprocess.run([sys.executable, "-c", INGEST_BOMB, str(tmp_path / "study"),
                             str(bomb), str(HEADROOM)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("CorruptObjectError"), result.stdout
    assert "bomb.nii.gz" in result.stdout and "MAX_EXPANSION" in result.stdout


def test_which_on_a_nifti_bomb_answers_in_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.nii.gz"
    _gzip_bomb(bomb, (1024, 1024, 1024), np.random.default_rng(2).bytes(1 << 20))
    provstore.open(tmp_path / "study").x = 1
    limit = f"""
import resource, sys
from provstore.cli import main
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + {HEADROOM}, resource.RLIM_INFINITY))
sys.argv = ["provstore", "--store", sys.argv[1], "which", sys.argv[2]]
main()
"""
    result = subprocess.run([sys.executable, "-c", limit, str(tmp_path / "study"), str(bomb)],
                            capture_output=True, text=True, timeout=300)
    assert "MemoryError" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stdout + result.stderr  # "found nothing"


def _damaged_gz(tmp_path: Path, damage: str) -> Path:
    """A .nii.gz from elsewhere (no recorded trailer) whose header survives the damage."""
    data = np.random.default_rng(3).normal(size=(32, 32, 32)).astype(np.float32)
    path = tmp_path / "damaged.nii.gz"
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    raw = bytearray(path.read_bytes())
    if damage == "truncated":  # EOFError from gzip
        raw = raw[:len(raw) * 6 // 10]
    else:  # zlib.error: an invalid deflate block
        raw[len(raw) // 3:len(raw) // 3 + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_damaged_nifti_gz_fails_on_data_access_with_corrupt_object_error(
        tmp_path: Path, damage: str) -> None:
    path = _damaged_gz(tmp_path, damage)
    img = NIFTI.load(path, {}, mmap_mode="r")  # the header is intact: opening works
    assert nib.is_proxy(img.dataobj)
    for read in (lambda: np.asanyarray(img.dataobj), lambda: img.dataobj[..., -1],
                 img.get_fdata, img.dataobj.get_unscaled):
        with pytest.raises(CorruptObjectError, match=r"damaged\.nii\.gz is damaged"):
            read()


def test_ingesting_a_damaged_nifti_gz(ctx: provstore.Context, tmp_path: Path) -> None:
    path = _damaged_gz(tmp_path, "truncated")
    with pytest.raises(CorruptObjectError, match=r"damaged\.nii\.gz"):
        ctx.img = provstore.File(path)


def test_loaded_images_still_pickle(tmp_path: Path) -> None:
    path = tmp_path / "ok.nii.gz"
    nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4)).to_filename(path)
    img = pickle.loads(pickle.dumps(NIFTI.load(path, {}, mmap_mode="r")))
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.arange(8).reshape(2, 2, 2))


# ------------------------------------------------------------------------------- HDF5
def _hollow_hdf5(path: Path, shape: tuple[int, ...]) -> None:
    """A chunked, compressed dataset of *shape* with nothing written: a few kB on disk."""
    with tables.open_file(str(path), "w") as f:
        f.create_carray(f.root, "x", atom=tables.Float64Atom(), shape=shape,
                        filters=tables.Filters(complevel=1, complib="zlib"))


@pytest.mark.parametrize(("shape", "error"), [((2**37,), UnsupportedTypeError),
                                              ((2**29,), CorruptObjectError)])
def test_hdf5_declaring_more_than_it_holds(tmp_path: Path, shape: tuple[int, ...],
                                           error: type[ProvstoreError]) -> None:
    path = tmp_path / "hollow.h5"
    _hollow_hdf5(path, shape)
    with pytest.raises(error, match=r"hollow\.h5:/x declares"):
        HDF5.load(path, {}, mmap_mode=None)
    with HDF5.load(path, {}, mmap_mode=None, lazy=True) as view:
        assert view["x"][:3].tolist() == [0.0, 0.0, 0.0]  # a slice reads only itself
        with pytest.raises(error):
            view["x"].read()

