"""Sample values shared by the backend tests: the cases that break naive writers."""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np

RNG = np.random.default_rng(7)
# Padding between and after fields, a big-endian field, a nested record and a sub-array.
STRUCTURED = np.dtype({
    "names": ["id", "pos", "flag", "inner"],
    "formats": ["<i4", (">f8", (3,)), "?", np.dtype([("a", "u1"), ("b", ">i2")])],
    "offsets": [0, 8, 32, 36],
    "itemsize": 48,
})


def structured(n: int) -> np.ndarray:
    arr = np.zeros(n, STRUCTURED)
    arr["id"] = np.arange(n)
    arr["pos"] = RNG.normal(size=(n, 3))
    arr["flag"] = np.arange(n) % 2 == 0
    arr["inner"]["a"] = np.arange(n) % 256
    arr["inner"]["b"] = -np.arange(n)
    return arr


def tricky_arrays() -> list[np.ndarray]:
    """Arrays that break naive writers: layouts, byte orders, odd dtypes, edge shapes."""
    base = np.arange(60, dtype=np.float64).reshape(20, 3)
    return [
        np.zeros((0,)),
        np.zeros((0, 3), ">f8"),
        np.array(3.5),
        np.array([7], dtype=np.int16),
        RNG.normal(size=(4, 5, 6)),
        np.arange(10, dtype=">f8"),
        np.arange(-5, 5, dtype=">i4"),
        np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
        base[::2],
        base[::3, ::-1],
        np.array(["naïve Δ 日本", "", "x"]),
        np.array(["ab", "c"], dtype=">U3"),
        np.array([b"a\x00b", b"", b"xyz"]),
        structured(5),
        structured(4).reshape(2, 2),
        np.array(["2020-01-01T00:00:00.123456789", "NaT"], dtype="datetime64[ns]"),
        np.array([1, -2, 3], dtype=">m8[s]"),
        np.array([True, False, True]),
        np.array([1 + 2j, np.nan - 0j, -0.0 + np.inf * 1j], dtype=np.complex128),
        np.array([1 + 2j], dtype=">c8"),
        np.array([np.nan, -0.0, np.inf, -np.inf, 5e-324]),
        np.array([1.5, -2.25], dtype=np.float16),
        np.array([1 / 3], dtype=np.longdouble),
        np.array([0, np.iinfo(np.uint64).max], dtype=np.uint64),
        np.zeros(3, dtype="V5"),
    ]


def numpy_scalars() -> list[np.generic]:
    return [np.float32(1.5), np.int64(-3), np.uint8(255), np.bool_(True), np.complex64(1 - 2j),
            np.datetime64("2020-01-01", "D"), np.str_("naïve"), np.bytes_(b"raw"),
            np.float64(np.nan), structured(1)[0]]


def affine() -> np.ndarray:
    # Rotation, anisotropic voxels and a translation: nothing an identity default could fake.
    c, s = np.cos(0.3), np.sin(0.3)
    return np.array([[2.0 * c, -3.0 * s, 0.0, -90.5],
                     [2.0 * s, 3.0 * c, 0.0, 12.25],
                     [0.0, 0.0, 1.5, -72.0],
                     [0.0, 0.0, 0.0, 1.0]])


def nifti_images() -> list[Any]:
    img1 = nib.Nifti1Image(RNG.integers(-500, 500, (4, 5, 6)).astype(np.int16), affine())
    img1.header["descrip"] = b"provstore conformance"
    img1.header.set_intent("t test", (12.0,), name="tstat")
    img1.set_qform(affine(), code=1)
    img1.set_sform(affine(), code=2)
    img2 = nib.Nifti2Image(RNG.normal(size=(3, 4, 5, 2)).astype(np.float32), affine())
    img2.header.set_xyzt_units("mm", "sec")
    img2.header.set_zooms((*img2.header.get_zooms()[:3], 2.5))
    img3 = nib.Nifti1Image(RNG.integers(0, 255, (3, 3, 3)).astype(np.uint8), np.eye(4))
    img4 = nib.Nifti1Image(RNG.normal(size=(2, 3, 4)).astype(">f8"), affine())
    img5 = nib.Nifti1Image(np.zeros((2, 2, 2), np.complex64) + 1j, np.diag([3.0, 3.0, 3.0, 1.0]))
    return [img1, img2, img3, img4, img5]
