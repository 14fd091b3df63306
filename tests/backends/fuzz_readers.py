"""Fuzz one backend's reader on mutated real files, in a memory-limited process.

Run by test_fuzz_readers.py as ``python fuzz_readers.py FORMAT EXAMPLES DIR``.
A seed file is written with the backend itself, then hypothesis flips bits,
truncates, inserts and overwrites bytes, and every mutated file is read
(data included: lazy proxies are forced). The only acceptable outcomes are a
value or a :class:`~provstore.errors.ProvstoreError`; anything else fails
hypothesis' run and this process exits non-zero with the falsifying example.
The address space is limited (``RLIMIT_AS``) to what the imports took plus
``HEADROOM``, so a reader that believes a hostile header and allocates fails
with MemoryError instead of swapping; hypothesis' deadline bounds each case.
"""

from __future__ import annotations

import resource
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provstore.backends import registry
from provstore.errors import ProvstoreError

HEADROOM = 1 << 30
RNG = np.random.default_rng(2024)


def seeds() -> dict[str, tuple[str, str, Any]]:
    """Format name -> (backend, suffix, value): small files, every structure present."""
    frame = pd.DataFrame({"a": np.arange(6), "s": list("abcdef"),
                          "c": pd.Categorical(list("xyxyxy"))},
                         index=pd.Index(list("uvwxyz"), name="k"))
    return {
        "npy": ("npy", ".npy", RNG.normal(size=(8, 5))),
        "npy-structured": ("npy", ".npy", np.zeros(4, [("a", "<i4"), ("b", ">f8", (2,))])),
        "hdf5": ("hdf5", ".h5", {"w": RNG.normal(size=(6, 4)), "name": "naïve",
                                 "items": [1, 2.5, None], "t": (np.int16(3), b"raw")}),
        "nifti": ("nifti", ".nii", nib.Nifti1Image(
            RNG.integers(0, 100, (6, 5, 4)).astype(np.int16), np.eye(4))),
        "nifti-gz": ("nifti", ".nii.gz", nib.Nifti2Image(
            RNG.normal(size=(6, 5, 4)).astype(np.float32), np.eye(4))),
        "json": ("json", ".json", {"a": [1, 2.5, None, {"b": "naïve"}], "c": [[[]]], "d": True}),
        "parquet": ("parquet", ".parquet", frame),
        "netcdf": ("netcdf", ".nc", xr.Dataset(
            {"v": (("t", "x"), RNG.normal(size=(5, 3))), "n": ("x", np.array([1, 2, 3]))},
            coords={"x": [10, 20, 30]}, attrs={"title": "fuzz"})),
    }


def write_seed(fmt: str, directory: Path) -> tuple[Any, Path, bytes]:
    backend_name, suffix, value = seeds()[fmt]
    backend = registry.get(backend_name)
    path = directory / f"seed{suffix}"
    if backend.inline:
        data, _ = backend.encode(value)
        path.write_bytes(data)
    else:
        backend.save(value, path, **({"compress": True} if suffix == ".nii.gz" else {}))
    return backend, path, path.read_bytes()


def read_fully(backend: Any, path: Path) -> None:
    """Load *path* as a file from elsewhere would be (no metadata), and touch all data."""
    mode = "r" if backend.supports_mmap else None
    value = backend.load(path, {}, mmap_mode=mode)
    if backend.name == "nifti":
        np.asanyarray(value.dataobj)
    elif backend.name == "netcdf":
        value.load()
        value.close()
    elif backend.name == "npy":
        np.array(value, copy=True)


def mutate(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    out = bytearray(data)
    for kind, position, *rest in mutations:
        if not out:
            break
        at = position % len(out)
        if kind == "flip":
            out[at] ^= 1 << rest[0]
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = rest[0]
        else:
            out[at:at + len(rest[0])] = rest[0]
    return bytes(out)


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("overwrite"), st.integers(0, 1 << 20),
              st.sampled_from([b"\xff" * 4, b"\x7f\xff\xff\xff", b"\x00" * 8,
                               b"\xff\xff\xff\xff\xff\xff\xff\x7f"]) | st.binary(min_size=1,
                                                                               max_size=8)),
)


def limit_memory() -> None:
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, hard))


def main(fmt: str, examples: int, directory: Path) -> int:
    warnings.simplefilter("ignore")  # readers warn about odd files; only errors matter here
    backend, seed_path, seed = write_seed(fmt, directory)
    read_fully(backend, seed_path)  # the seed reads, and allocators are warmed up
    limit_memory()
    target = directory / f"case{seed_path.name[4:]}"
    counts = {"cases": 0, "loaded": 0, "refused": 0}

    @settings(max_examples=examples, deadline=timedelta(seconds=10), database=None,
              derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.lists(MUTATION, min_size=1, max_size=3))
    def case(mutations: list[tuple[Any, ...]]) -> None:
        target.write_bytes(mutate(seed, mutations))
        counts["cases"] += 1
        try:
            read_fully(backend, target)
        except ProvstoreError:
            counts["refused"] += 1
        else:
            counts["loaded"] += 1

    case()
    print(f"FUZZ {fmt} cases={counts['cases']} loaded={counts['loaded']} "
          f"refused={counts['refused']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
