"""provstore against the tools a user would otherwise pick, side by side in one run.

Usage::

    .venv/bin/python benchmarks/bench_store.py            # full run, a few minutes
    .venv/bin/python benchmarks/bench_store.py --quick    # smaller sizes, 3 repeats
    .venv/bin/python benchmarks/bench_store.py --only a,f --repeats 7 -v

Every case runs provstore and its baseline in the same process, on the same data,
in the same temporary directory, alternating which goes first in each repeat, and
reports the median of the repeats. The machine this was written on is shared and
noisy (medians moved 3.5x between runs in research/limits.md), so read the ratios,
not the absolute times. See benchmarks/README.md for what each case compares.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import os
import platform
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import tables
import xxhash

import provstore
from provstore.hashing import array_digest

MB = 1_000_000
GB = 1_000_000_000
_unique = itertools.count(1)
_waited = [0.0]  # seconds spent in settle(), reported with the table


# --------------------------------------------------------------------------- results
@dataclass
class Result:
    """One row of the table: medians of both sides and the verdict."""

    case: str
    ours: float
    base: float
    unit: str  # "s", "ms", "/s" or "GB/s"
    ratio: float  # provstore cost / baseline cost: above 1 means provstore is slower
    target: str
    ok: bool
    samples: tuple[list[float], list[float]] = field(default=([], []), repr=False)

    @property
    def best(self) -> float:
        """Cost ratio of the fastest repeats: noise only ever adds time, so this is its floor."""
        return min(self.samples[0]) / min(self.samples[1])

    @property
    def paired(self) -> tuple[float, float]:
        """Smallest and largest per-repeat cost ratio (both sides ran back to back)."""
        ratios = [a / b for a, b in zip(*self.samples)]
        return min(ratios), max(ratios)


def fmt(value: float, unit: str) -> str:
    """Format a measurement with its unit."""
    if unit == "s":
        return f"{value:.3f} s" if value >= 0.1 else f"{value * 1e3:.1f} ms"
    if unit == "ms":
        return f"{value * 1e3:.3f} ms"
    if unit == "/s":
        return f"{value:,.0f} /s"
    return f"{value:.1f} {unit}"


def print_table(results: list[Result]) -> None:
    """Print the results table."""
    header = ("case", "provstore", "baseline", "ratio", "min ratio", "paired", "target",
              "result")
    rows = [header] + [
        (r.case, fmt(r.ours, r.unit), fmt(r.base, r.unit), f"{r.ratio:.2f}x", f"{r.best:.2f}x",
         "{:.2f}-{:.2f}".format(*r.paired), r.target, "PASS" if r.ok else "FAIL")
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


# --------------------------------------------------------------------------- timing
def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


_DISK = re.compile(r"(sd|vd|xvd|hd)[a-z]+|nvme\d+n\d+|mmcblk\d+")


def _disk_bytes() -> int:
    total = 0
    with open("/proc/diskstats") as f:
        for line in f:
            parts = line.split()
            if _DISK.fullmatch(parts[2]):
                total += (int(parts[5]) + int(parts[9])) * 512  # sectors read + written
    return total


def settle(max_wait: float, interval: float = 0.25) -> None:
    """Collect garbage, then wait (at most *max_wait* s) until the machine looks idle.

    Idle means under 30 % of the CPUs busy and under 30 MB/s of disk traffic
    over *interval*, the check research/limits.md used. The machine is shared:
    a neighbour's burst during one side of a pair would skew its ratio. Linux
    only; elsewhere this only collects garbage.
    """
    gc.collect()
    if max_wait <= 0 or not os.path.exists("/proc/diskstats"):
        return
    start = time.monotonic()
    try:
        while time.monotonic() - start < max_wait:
            (busy0, total0), disk0 = _cpu_times(), _disk_bytes()
            time.sleep(interval)
            (busy1, total1), disk1 = _cpu_times(), _disk_bytes()
            cpu = (busy1 - busy0) / max(total1 - total0, 1)
            if cpu < 0.3 and (disk1 - disk0) / interval < 30 * MB:
                return
    finally:
        _waited[0] += time.monotonic() - start


def fmt_time(seconds: float) -> str:
    """Format a duration in s, ms or µs."""
    if seconds >= 0.1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def interleaved(sides: dict[str, Callable[[], object]], repeats: int, wait: float, calls: int,
                block: int, agg: Callable[[list[float]], float] = statistics.median,
                ) -> dict[str, list[float]]:
    """Time single calls of every side, taking turns in blocks of *block* calls.

    The machine has fast and slow phases lasting seconds (the tools compared
    ran ~1.5x faster in the fast ones); alternating every few milliseconds
    keeps the sides in the same phase. Each repeat (after an idle check)
    gives one sample per side: *agg* of its *calls* times (the median for
    latencies, the mean for throughput, which must count the occasional
    slow commit, such as an SQLite checkpoint).
    """
    names = list(sides)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        settle(wait)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(-(-calls // block)):
            for name in names[r % len(names):] + names[: r % len(names)]:
                fn = sides[name]
                for _ in range(block):
                    t0 = time.perf_counter()
                    fn()  # the result is dropped at once: a memmap is unmapped
                    times[name].append(time.perf_counter() - t0)
        for name in names:
            samples[name].append(agg(times[name][:calls]))
    return samples


def side_by_side(ours: Callable[[int], float], base: Callable[[int], float], repeats: int,
                 wait: float) -> tuple[list[float], list[float]]:
    """Run both sides *repeats* times, alternating which goes first; return the samples."""
    a: list[float] = []
    b: list[float] = []
    for i in range(repeats):
        first, second = ((ours, a), (base, b)) if i % 2 == 0 else ((base, b), (ours, a))
        for fn, out in (first, second):
            settle(wait)
            out.append(fn(i))
    return a, b


def timed(fn: Callable[[], object]) -> float:
    """Return the wall time of one call of *fn*."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def per_call(fn: Callable[[], object], calls: int) -> float:
    """Return the median wall time of *calls* calls, dropping each result before the next."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
        del value  # provstore keeps a load alive only while the caller does
    return statistics.median(times)


def fsync_path(path: Path) -> None:
    """Fsync a file, then its directory, as provstore does when it publishes an object."""
    for target, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY | os.O_DIRECTORY)):
        fd = os.open(target, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- workspace
class Workspace:
    """Fresh directories and stores under one temporary root (same disk for both sides)."""

    def __init__(self, parent: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="provstore-bench-", dir=parent))
        self._n = itertools.count()

    def fresh_dir(self) -> Path:
        """Return a new empty directory."""
        path = self.root / f"d{next(self._n)}"
        path.mkdir()
        return path

    def fresh_store(self) -> provstore.Context:
        """Open a new store and make one small write, so the run row is not timed."""
        ctx = provstore.open(self.root / f"store{next(self._n)}")
        ctx["warmup"] = 0
        return ctx

    @staticmethod
    def drop_store(ctx: provstore.Context) -> None:
        """Close a store and delete its directory."""
        ctx.store.close()
        shutil.rmtree(ctx.store.root)

    def cleanup(self) -> None:
        """Delete everything this workspace created."""
        shutil.rmtree(self.root, ignore_errors=True)


def random_array(nbytes: int, dtype: type = np.float64) -> np.ndarray:
    """Return random (incompressible) values filling *nbytes*."""
    count = nbytes // np.dtype(dtype).itemsize
    return np.random.default_rng(0).random(count, dtype=dtype)  # type: ignore[call-overload]


def freshen(arr: np.ndarray) -> None:
    """Change one value so the next save is new content (stores deduplicate)."""
    arr.flat[0] = next(_unique)


def ratio_result(case: str, samples: tuple[list[float], list[float]], limit: float) -> Result:
    """A row whose target is provstore time / baseline time <= *limit*."""
    ours, base = (statistics.median(s) for s in samples)
    ratio = ours / base
    return Result(case, ours, base, "s", ratio, f"<= {limit:.2f}x", ratio <= limit, samples)


# --------------------------------------------------------------------------- cases
def case_save_npy(ws: Workspace, arr: np.ndarray, repeats: int, wait: float) -> Result:
    """(a) ``ctx.x = arr`` against ``np.save`` + fsync of file and directory."""

    def ours(_: int) -> float:
        ctx = ws.fresh_store()
        freshen(arr)
        elapsed = timed(lambda: setattr(ctx, "x", arr))
        ws.drop_store(ctx)
        return elapsed

    def base(_: int) -> float:
        path = ws.fresh_dir() / "x.npy"
        freshen(arr)
        elapsed = timed(lambda: (np.save(path, arr), fsync_path(path)))
        shutil.rmtree(path.parent)
        return elapsed

    samples = side_by_side(ours, base, repeats, wait)
    return ratio_result(f"(a) save {arr.nbytes / MB:.0f} MB array | np.save+fsync",
                        samples, 1.2)


def case_load_npy(ws: Workspace, arr: np.ndarray, repeats: int, wait: float,
                  calls: int = 50) -> Result:
    """(b) ``ctx.x`` (read-only memmap) against ``np.load(mmap_mode="r")``."""
    ctx = ws.fresh_store()
    ctx.x = arr
    path = ws.fresh_dir() / "x.npy"
    np.save(path, arr)
    fsync_path(path)

    samples = side_by_side(lambda _: per_call(lambda: ctx.x, calls),
                           lambda _: per_call(lambda: np.load(path, mmap_mode="r"), calls),
                           repeats, wait)
    ours, base = (statistics.median(s) for s in samples)
    ws.drop_store(ctx)
    return Result(f"(b) load {arr.nbytes / MB:.0f} MB .npy | np.load mmap",
                  ours, base, "ms", ours / base, "< 1 ms", ours < 1e-3, samples)


def _h5_write(path: Path, model: dict[str, np.ndarray]) -> None:
    with tables.open_file(path, "w") as h5:
        for key, value in model.items():
            h5.create_array("/", key, value)
    fsync_path(path)


def _h5_read(path: Path) -> dict[str, np.ndarray]:
    with tables.open_file(path, "r") as h5:
        return {node.name: node.read() for node in h5.list_nodes("/")}


def _touch(model: dict[str, Any]) -> dict[str, np.ndarray]:
    # Whatever the backend returns (arrays or lazy nodes), read every array fully.
    return {key: np.asarray(value[...]) for key, value in model.items()}


def case_hdf5(ws: Workspace, nbytes: int, repeats: int,
              wait: float) -> tuple[Result, Result]:
    """(c) ``ctx.m = {"W": ..., "b": ...}`` against PyTables ``create_array`` + fsync."""
    model = {"W": random_array(nbytes), "b": random_array(800)}

    def ours(_: int) -> float:
        ctx = ws.fresh_store()
        freshen(model["W"])
        elapsed = timed(lambda: setattr(ctx, "m", model))
        ws.drop_store(ctx)
        return elapsed

    def base(_: int) -> float:
        path = ws.fresh_dir() / "m.h5"
        freshen(model["W"])
        elapsed = timed(lambda: _h5_write(path, model))
        shutil.rmtree(path.parent)
        return elapsed

    size = f"{nbytes / MB:.0f} MB"
    save = ratio_result(f"(c) save HDF5 {size} | PyTables+fsync",
                        side_by_side(ours, base, repeats, wait), 1.10)

    ctx = ws.fresh_store()
    ctx.m = model
    path = ws.fresh_dir() / "m.h5"
    _h5_write(path, model)
    load = ratio_result(f"(c) load HDF5 {size} | PyTables read",
                        side_by_side(lambda _: timed(lambda: _touch(ctx.m)),
                                     lambda _: timed(lambda: _h5_read(path)), repeats, wait),
                        1.10)
    ws.drop_store(ctx)
    return save, load


def case_nifti(ws: Workspace, shape: tuple[int, ...], repeats: int, wait: float,
               calls: int = 50) -> tuple[Result, Result]:
    """(d) ``ctx.img = Nifti1Image`` against ``to_filename`` + fsync; lazy loads."""
    data = random_array(int(np.prod(shape)) * 4, np.float32).reshape(shape)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])

    def ours(_: int) -> float:
        ctx = ws.fresh_store()
        freshen(data)
        img = nib.Nifti1Image(data, affine)
        elapsed = timed(lambda: setattr(ctx, "img", img))
        ws.drop_store(ctx)
        return elapsed

    def base(_: int) -> float:
        path = ws.fresh_dir() / "img.nii"
        freshen(data)
        img = nib.Nifti1Image(data, affine)
        elapsed = timed(lambda: (img.to_filename(path), fsync_path(path)))
        shutil.rmtree(path.parent)
        return elapsed

    label = f"{data.nbytes / MB:.0f} MB"
    save = ratio_result(f"(d) save NIfTI {label} | to_filename+fsync",
                        side_by_side(ours, base, repeats, wait), 1.10)

    ctx = ws.fresh_store()
    ctx.img = nib.Nifti1Image(data, affine)
    path = ws.fresh_dir() / "img.nii"
    nib.Nifti1Image(data, affine).to_filename(path)
    samples = side_by_side(lambda _: per_call(lambda: ctx.img, calls),
                           lambda _: per_call(lambda: nib.load(path), calls), repeats, wait)
    ours_ms, base_ms = (statistics.median(s) for s in samples)
    # DESIGN §11: loads are O(1) and under 1 ms; the ratio is shown for context.
    load = Result(f"(d) load NIfTI {label} lazy | nib.load", ours_ms, base_ms,
                  "ms", ours_ms / base_ms, "< 1 ms", ours_ms < 1.0, samples)
    ws.drop_store(ctx)
    return save, load


def _sqlite_floor(path: Path, count: int) -> float:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, scope INT, name TEXT, version INT, "
                "value TEXT, UNIQUE (scope, name, version))")
    t0 = time.perf_counter()
    for k in range(count):
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO b (scope, name, version, value) VALUES (1, ?, 1, ?)",
                    (f"v{k}", str(k)))
        con.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed


def case_bindings(ws: Workspace, count: int, repeats: int, wait: float) -> Result:
    """(e) binding small ints, one per transaction, against raw sqlite3 insert+commit."""

    def ours(_: int) -> float:
        ctx = ws.fresh_store()
        offset = next(_unique) * count

        def bind_all() -> None:
            for k in range(count):
                ctx[f"v{k}"] = offset + k

        elapsed = timed(bind_all)
        ws.drop_store(ctx)
        return elapsed

    def base(_: int) -> float:
        folder = ws.fresh_dir()
        elapsed = _sqlite_floor(folder / "floor.db", count)
        shutil.rmtree(folder)
        return elapsed

    times = side_by_side(ours, base, repeats, wait)
    ours_rate, base_rate = (count / statistics.median(s) for s in times)
    return Result(f"(e) bind {count} ints | sqlite3 insert+commit",
                  ours_rate, base_rate, "/s", base_rate / ours_rate, ">= 2000 /s",
                  ours_rate >= 2000, times)


def case_hashing(arr: np.ndarray, repeats: int, wait: float) -> Result:
    """(f) ``array_digest`` against bare xxh3-128 of the same buffer."""
    times = side_by_side(lambda _: timed(lambda: array_digest(arr)),
                         lambda _: timed(lambda: xxhash.xxh3_128(arr.data).hexdigest()),
                         repeats, wait)
    ours, base = (arr.nbytes / GB / statistics.median(s) for s in times)
    return Result(f"(f) hash {arr.nbytes / MB:.0f} MB | bare xxh3_128",
                  ours, base, "GB/s", base / ours, ">= 10 GB/s", ours >= 10, times)


# --------------------------------------------------------------------------- main
def parse_common(argv: list[str] | None, doc: str | None, *, quick: str,
                 only: str) -> argparse.Namespace:
    """The options every benchmark script takes (--quick, --repeats, --only, ...)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--repeats", type=int, help="repeats per case (default 7, quick 3)")
    parser.add_argument("--only", help=only)
    parser.add_argument("--tmp", default="/tmp", help="parent of the temporary directories")
    parser.add_argument("--wait", type=float, default=1.0,
                        help="max seconds to wait for idle CPUs before each side (0: never)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    return args


def cpu_model() -> str:
    """``"2 CPU (AMD EPYC ...)"``: the core count and model, for benchmark headers."""
    cpu = platform.processor() or "?"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    return f"{os.cpu_count()} CPU ({cpu})"


def machine() -> str:
    """One line describing the machine and the library versions."""
    return (f"{cpu_model()}, Python {platform.python_version()}, "
            f"numpy {np.__version__}, PyTables {tables.__version__}, nibabel {nib.__version__}, "
            f"SQLite {sqlite3.sqlite_version}, provstore {provstore.__version__}")


def run(args: argparse.Namespace) -> list[Result]:
    """Run the selected cases and return their rows."""
    quick, reps, wait = args.quick, args.repeats, args.wait
    only = set(args.only.split(",")) if args.only else set("abcdef")
    ws = Workspace(args.tmp)
    results: list[Result] = []
    try:
        big = random_array(100 * MB if quick else GB) if only & set("abf") else None
        if "a" in only:
            assert big is not None
            small = random_array(10 * MB if quick else 100 * MB)
            results.append(case_save_npy(ws, small, reps, wait))
            del small
            results.append(case_save_npy(ws, big, reps, wait))
        if "b" in only:
            assert big is not None
            results.append(case_load_npy(ws, big, reps, wait))
        if "c" in only:
            results.extend(case_hdf5(ws, 10 * MB if quick else 100 * MB, reps, wait))
        if "d" in only:
            shape = (128, 128, 64, 4) if quick else (256, 256, 128, 4)
            results.extend(case_nifti(ws, shape, reps, wait))
        if "e" in only:
            results.append(case_bindings(ws, 200 if quick else 1000, reps, wait))
        if "f" in only:
            assert big is not None
            results.append(case_hashing(big, reps, wait))
    finally:
        ws.cleanup()
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the table."""
    args = parse_common(argv, __doc__, quick="small sizes, 3 repeats (smoke run)",
                        only="comma-separated case letters, e.g. a,f")

    started = time.monotonic()
    print(f"provstore benchmarks, {dt.datetime.now():%Y-%m-%d %H:%M}, "
          f"{'quick' if args.quick else 'full'} run, median of {args.repeats} repeats")
    print(machine())
    results = run(args)
    print()
    print_table(results)
    print("\nratio: provstore cost / baseline cost, from the medians (above 1: provstore "
          "slower); PASS/FAIL uses it.\nmin ratio: the same from the fastest repeat of each "
          "side; paired: its range within each repeat.\n"
          f"{time.monotonic() - started:.0f} s in all, {_waited[0]:.0f} s of it waiting for idle")
    if args.verbose:
        for r in results:
            ours, base = ([fmt(x, "s") for x in s] for s in r.samples)
            print(f"{r.case}\n  provstore: {', '.join(ours)}\n  baseline:  {', '.join(base)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
