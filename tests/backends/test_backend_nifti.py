"""NIfTI specifics: nibabel's own data files, header fields, lazy proxies, file maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from backend_samples import affine, nifti_images

from provstore.backends import registry
from provstore.errors import UnsupportedTypeError

BACKEND = registry.get("nifti")
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
REAL_FILES = ["anatomical.nii", "functional.nii", "example4d.nii.gz", "example_nifti2.nii.gz",
              "standard.nii.gz", "reoriented_anat_moved.nii"]


def _assert_same_image(actual: Any, expected: Any) -> None:
    assert type(actual) is type(expected)
    assert type(actual.header) is type(expected.header)
    for field in expected.header:
        if field in ("vox_offset",):  # where the data starts depends on the extensions' size
            continue
        np.testing.assert_array_equal(actual.header[field], expected.header[field], err_msg=field)
    np.testing.assert_array_equal(actual.affine, expected.affine)
    assert actual.header.get_data_dtype() == expected.header.get_data_dtype()
    assert actual.header.get_zooms() == expected.header.get_zooms()
    assert actual.header.get_xyzt_units() == expected.header.get_xyzt_units()
    assert actual.header.get_intent() == expected.header.get_intent()
    assert [bytes(e.get_content()) for e in actual.header.extensions] == \
        [bytes(e.get_content()) for e in expected.header.extensions]
    np.testing.assert_array_equal(np.asanyarray(actual.dataobj), np.asanyarray(expected.dataobj))
    np.testing.assert_array_equal(actual.get_fdata(), expected.get_fdata())


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("name", REAL_FILES)
def test_nibabel_data_files_round_trip(name: str, compress: bool, tmp_path: Path) -> None:
    original = nib.load(NIBABEL_DATA / name)
    options = {"compress": compress}
    path = tmp_path / ("img" + BACKEND.suffix_for(original, options))
    meta = BACKEND.save(original, path, **options)
    assert original.get_filename() == str(NIBABEL_DATA / name)  # file map left alone
    for mmap_mode in ("r", None):
        _assert_same_image(BACKEND.load(path, meta, mmap_mode=mmap_mode), original)
    # A standard file: plain nibabel reads the same thing.
    _assert_same_image(nib.load(path), original)


@pytest.mark.parametrize("name", REAL_FILES)
def test_load_reads_original_files_directly(name: str) -> None:
    loaded = BACKEND.load(NIBABEL_DATA / name, {}, mmap_mode="r")
    reference = nib.load(NIBABEL_DATA / name)
    assert loaded.header.binaryblock == reference.header.binaryblock
    _assert_same_image(loaded, reference)
    assert nib.is_proxy(loaded.dataobj)  # lazy: nothing read yet


def test_synthetic_header_fields_survive(tmp_path: Path) -> None:
    img = nifti_images()[0]
    path = tmp_path / "img.nii"
    BACKEND.save(img, path)
    loaded = BACKEND.load(path, {}, mmap_mode="r")
    assert loaded.header["descrip"] == b"provstore conformance"
    assert loaded.header.get_intent() == ("t test", (12.0,), "tstat")
    assert int(loaded.header["qform_code"]) == 1 and int(loaded.header["sform_code"]) == 2
    np.testing.assert_allclose(loaded.affine, affine(), rtol=1e-6, atol=1e-5)
    assert img.get_filename() is None  # saving an in-memory image does not attach a file


def test_mmap_modes(tmp_path: Path) -> None:
    img = nifti_images()[2]
    path = tmp_path / "img.nii"
    BACKEND.save(img, path)
    mapped = np.asanyarray(BACKEND.load(path, {}, mmap_mode="r").dataobj)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    in_memory = np.asanyarray(BACKEND.load(path, {}, mmap_mode=None).dataobj)
    assert not isinstance(in_memory, np.memmap)


@pytest.mark.parametrize("value", [
    nib.Nifti1Pair(np.zeros((2, 2, 2), np.int16), np.eye(4)),
    nib.MGHImage(np.zeros((2, 2, 2), np.float32), np.eye(4)),
    np.zeros((2, 2, 2)),
])
def test_other_images_are_refused(value: Any, tmp_path: Path) -> None:
    assert not BACKEND.can_save(value)
    with pytest.raises(UnsupportedTypeError):
        BACKEND.save(value, tmp_path / "x.nii")


def test_unknown_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTypeError, match="compress"):
        BACKEND.save(nifti_images()[2], tmp_path / "x.nii", level=3)
    assert list(tmp_path.iterdir()) == []


def test_describe(tmp_path: Path) -> None:
    summary = BACKEND.describe(nifti_images()[1])
    assert summary == {"type": "Nifti2Image", "dtype": "float32", "shape": [3, 4, 5, 2],
                       "zooms": pytest.approx([2.0, 3.0, 1.5, 2.5])}
