"""provstore.Memory with the real scikit-learn, nilearn and joblib that take ``memory=``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_memory

import provstore
from provstore.memory import Memory
from sklearn_samples import Counting, fits
from sql import sql

HERE = Path(__file__).parent


def _calls(location: Path, status: str = "done") -> int:
    return len(sql(location, "SELECT id FROM calls WHERE status = :s", {"s": status}))


def test_memory_is_a_joblib_memory_that_libraries_accept(ctx: provstore.Context) -> None:
    memory = ctx.memory()
    assert isinstance(memory, joblib.Memory) and isinstance(memory, provstore.Memory)
    assert check_memory(memory) is memory
    assert memory.location == str(ctx.store.root)  # not None: scikit-learn clones
    assert isinstance(provstore.Memory(ctx.store.root), joblib.Memory)


def test_cache_returns_a_tracked_function_with_joblibs_methods(ctx: provstore.Context,
                                                                tmp_path: Path) -> None:
    log = tmp_path / "log"

    def double(x: int, verbose: int = 0) -> int:
        with open(log, "a") as f:
            f.write("x")
        return 2 * x

    cached = ctx.memory().cache(double, ignore=["verbose"])
    assert not cached.check_call_in_cache(3)
    assert cached(3) == 6 and cached(3, verbose=2) == 6
    assert cached.check_call_in_cache(3)
    shelved = cached.call_and_shelve(4)
    assert shelved.get() == 8
    assert log.read_text() == "xx"
    cached.clear()
    assert not cached.check_call_in_cache(3)
    assert cached(3) == 6 and log.read_text() == "xxx"
    # Forgotten, not deleted: the lineage of results made before still names the call.
    assert _calls(ctx.store.root, "forgotten") == 2


def test_arrays_come_back_as_fresh_copies_by_default(ctx: provstore.Context) -> None:
    cached = ctx.memory().cache(np.cumsum)
    first = cached(np.arange(5))
    assert isinstance(first, np.ndarray) and not isinstance(first, np.memmap)
    first[0] = 99  # joblib's default: the caller's own array
    assert cached(np.arange(5))[0] == 0
    mapped = ctx.memory(mmap_mode="r").cache(np.cumsum)(np.arange(5))
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable


def test_a_pipeline_refits_only_what_changed(ctx: provstore.Context, tmp_path: Path) -> None:
    log = tmp_path / "fits"
    rng = np.random.default_rng(0)
    X = rng.random((40, 3))
    y = (X[:, 0] > 0.5).astype(int)
    pipe = Pipeline([("count", Counting(log=str(log))), ("lr", LogisticRegression())],
                    memory=ctx.memory())
    pipe.fit(X, y)
    assert fits(log) == [1.0]
    clone(pipe).fit(X, y)  # a refit of a clone: the transformer comes from the store
    assert fits(log) == [1.0]
    clone(pipe).set_params(count__scale=2.0).fit(X, y)  # a changed parameter: one fit
    assert fits(log) == [1.0, 2.0]
    assert not list(Path(ctx.store.root).rglob("joblib"))


_NILEARN = """
import os, sys, warnings
warnings.simplefilter("error")
import nibabel as nib
from nibabel.testing import data_path
from nilearn import masking
from nilearn.maskers import NiftiMasker
import provstore

ctx = provstore.open(sys.argv[1])
img = nib.load(os.path.join(data_path, "example4d.nii.gz"))
signals = NiftiMasker(memory=ctx.memory(), memory_level=2, standardize=None).fit_transform(img)
mask = masking.compute_epi_mask(img, memory=ctx.memory())
print(signals.shape, mask.shape)
"""


def test_nilearn_computes_nothing_the_second_time(store_dir: Path, tmp_path: Path) -> None:
    def run() -> str:
        done = subprocess.run([sys.executable, "-c", _NILEARN, str(store_dir)], cwd=tmp_path,
                              capture_output=True, text=True, check=True)
        return done.stdout

    first = run()
    computed = _calls(store_dir)
    assert computed >= 2  # the masker's steps and compute_epi_mask were tracked calls
    assert run() == first
    assert _calls(store_dir) == computed  # every step of the second run was a hit
    assert not [p for p in (store_dir, tmp_path) for _ in p.rglob("joblib")]
    functions = [r["function"] for r in sql(store_dir, "SELECT function FROM calls")]
    assert any("nilearn" in f for f in functions)


def test_memory_pickles_by_reference(ctx: provstore.Context) -> None:
    import pickle

    view = ctx.scope(subject="01")
    memory = pickle.loads(pickle.dumps(view.memory()))
    assert isinstance(memory, Memory)
    assert memory.context.path == view.path and memory.context.store is ctx.store


def test_reduce_size_runs_the_stores_retention_rules(ctx: provstore.Context) -> None:
    memory = ctx.memory()
    cumsum = memory.cache(np.cumsum)
    for n in range(2, 6):
        cumsum(np.arange(n * 1000))  # four results, bound to no name
    files = len(list((ctx.store.root / "objects").rglob("*.npy")))
    memory.reduce_size(items_limit=1)  # joblib's "at most this many items", per function
    assert len(list((ctx.store.root / "objects").rglob("*.npy"))) < files
    assert cumsum.check_call_in_cache(np.arange(5000))  # the newest stays
    assert not cumsum.check_call_in_cache(np.arange(2000))
