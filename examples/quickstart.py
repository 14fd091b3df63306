"""provstore quickstart: a tiny synthetic neuroimaging study.

    python quickstart.py [STORE_DIR]        # default: demo-study

Makes a template and two subjects' 4D "bold" scans with numpy + nibabel (no real
data needed), stores inputs and results under scopes, then shows what the store
holds: scopes, names, versions, a deletion and the files on disk.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

import provstore

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels
SHAPE = (32, 32, 16)
SUBJECTS = ("01", "02")


def blob() -> np.ndarray:
    """A smooth ellipsoid 'brain' on the voxel grid."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    return np.exp(-3 * (x**2 + y**2 + z**2)).astype(np.float32)


def smooth(data: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing (sigma in voxels) along the 3 spatial axes, numpy only."""
    offsets = np.arange(-int(np.ceil(2 * sigma)), int(np.ceil(2 * sigma)) + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    out = data.astype(np.float32)
    for axis in range(3):
        moved = np.moveaxis(out, axis, 0)
        pad = [(len(offsets) // 2,) * 2] + [(0, 0)] * (moved.ndim - 1)
        padded = np.pad(moved, pad, mode="edge")
        moved = sum(w * padded[k : k + moved.shape[0]] for k, w in enumerate(weights))
        out = np.moveaxis(moved, 0, axis)
    return out.astype(np.float32)


def write_raw_scans(folder: Path) -> dict[str, Path]:
    """Write one small 4D scan per subject, as a scanner pipeline would."""
    rng = np.random.default_rng(0)
    paths = {}
    for s in SUBJECTS:
        data = 100 * blob()[..., None] + rng.normal(0, 5, (*SHAPE, 10)).astype(np.float32)
        paths[s] = folder / f"sub-{s}_bold.nii.gz"
        nib.Nifti1Image(data.astype(np.float32), AFFINE).to_filename(paths[s])
    return paths


def main(store_dir: str) -> None:
    ctx = provstore.open(store_dir)  # creates store_dir/provstore.db and objects/
    ctx.template = nib.Nifti1Image(blob(), AFFINE)  # root scope; stored as .nii

    with tempfile.TemporaryDirectory() as raw:
        scans = write_raw_scans(Path(raw))
        for s in SUBJECTS:
            with ctx.scope(subject=s):  # names below live in scope "subject=01"
                ctx.bold = provstore.File(scans[s])  # ingested: bytes copied, hash recorded
                bold = ctx.bold.get_fdata(dtype=np.float32)
                ctx.signal = bold.mean(axis=(0, 1, 2))  # mean time course -> .npy
                for sigma in (1.0, 2.0):
                    with ctx.scope(sigma=sigma):  # nested scope "subject=01/sigma=1.0"
                        smoothed = smooth(bold, sigma)
                        ctx.smoothed = nib.Nifti1Image(smoothed, ctx.bold.affine)
                        # ctx.template is not bound here: it resolves from the root scope
                        mask = ctx.template.get_fdata() > 0.5
                        voxels = smoothed[mask]  # (n_voxels, n_timepoints)
                        _, _, components = np.linalg.svd(voxels - voxels.mean(0),
                                                         full_matrices=False)
                        # a dict of arrays is stored as one HDF5 file
                        ctx.model = {"W": components[:3], "b": voxels.mean(0),
                                     "meta": {"name": "aam"}}
    # The raw folder is gone; the store still holds its own copy of each scan.

    print("scopes and the names bound in each:")
    for path in ["", *ctx.scopes(recursive=True)]:
        names = ctx.scope(path).names(inherited=False)
        print(f"  {path or '(root)':22} {', '.join(names)}")

    deep = ctx.scope(subject="01", sigma=2.0)
    print("\nsubject=01/sigma=2.0 sees:", ", ".join(deep.names()))
    print("  template shape, found in the root scope:", deep.template.shape)
    print("  signal (read-only memmap):", np.round(deep.signal[:4], 2), "...")
    print("  model:", {k: getattr(v, "shape", v) for k, v in deep.model.items()})

    # Rebinding a name adds a version; earlier versions stay in history.
    with ctx.scope(subject="01"):
        ctx.signal = ctx.signal - ctx.signal.mean()  # demeaned
    print()
    print(ctx.history("subject=01/signal"))
    print("version 1 again:", np.round(ctx.get("subject=01/signal", version=1)[:4], 2), "...")

    # A subject-specific template shadows the root one; deleting it records a
    # tombstone and the root template is visible again.
    with ctx.scope(subject="02"):
        ctx.template = nib.Nifti1Image(smooth(blob(), 1.0), AFFINE)
        del ctx.template
        print()
        print(ctx.history("template"))
        print("subject=02 now reads the root template again:", ctx.template.shape)

    print(f"\nfiles in {store_dir}/ (objects are named by content digest, read-only):")
    for f in sorted(Path(store_dir).rglob("*")):
        if f.is_file():
            rel = f.relative_to(store_dir).as_posix()
            short = rel[:14] + "…" + rel[-10:] if rel.startswith("objects/") else rel
            print(f"  {short:28} {f.stat().st_size:>9,} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo-study")
