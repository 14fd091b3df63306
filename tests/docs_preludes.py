"""What the docs' code blocks take from their surrounding text, made real and small.

Imported by ``<!-- docs-test prelude: ... -->`` markers in README.md and docs/*.md (see
tests/test_docs.py). Each helper is what a reader has at hand: the files a block names
(``raw/sub-01_bold.nii.gz``, ``template.nii.gz``, ...), a signal loader, a smoothing
function. They create inputs only; they never do what the block itself shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["image", "load_signal", "smooth", "write_study_files"]

_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def image(shape: tuple[int, ...] = (8, 8, 4), seed: int = 0) -> nib.Nifti1Image:
    """A small synthetic NIfTI image of random float32 values."""
    data = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return nib.Nifti1Image(data, _AFFINE)


def load_signal(subject: str) -> np.ndarray:
    """A subject's signal: 100 samples, reproducible per subject."""
    return np.random.default_rng(int(subject)).normal(size=100)


def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a 1-d signal."""
    k = np.exp(-0.5 * (np.arange(-3, 4) / sigma) ** 2)
    return np.convolve(x, k / k.sum(), mode="same")


def write_study_files(root: str | Path = ".") -> list[str]:
    """Write the input files the docs name, under `root`; return the raw images' paths.

    ``raw/sub-0{1,2}_bold.nii.gz`` (4-d), ``template.nii.gz``, ``design.npy``,
    ``config.json`` and ``notes.txt``.
    """
    root = Path(root)
    (root / "raw").mkdir(parents=True, exist_ok=True)
    images = []
    for n in (1, 2):
        path = root / "raw" / f"sub-0{n}_bold.nii.gz"
        nib.save(image((8, 8, 4, 6), seed=n), path)
        images.append(str(path))
    nib.save(image(), root / "template.nii.gz")
    np.save(root / "design.npy", np.eye(4))
    (root / "config.json").write_text(json.dumps({"threshold": 0.2, "runs": [1, 2]}))
    (root / "notes.txt").write_text("acquired on the 3T scanner\n")
    return images
