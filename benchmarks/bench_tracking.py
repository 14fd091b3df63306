"""Tracked functions against ``joblib.Memory``, side by side in one run.

Usage::

    .venv/bin/python benchmarks/bench_tracking.py            # full run, 1-2 minutes
    .venv/bin/python benchmarks/bench_tracking.py --quick    # fewer calls and trials
    .venv/bin/python benchmarks/bench_tracking.py --only a,d --repeats 9 -v

Cases (DESIGN §11; benchmarks/README.md has the details):

(a)  cache hit of ``tiny(a, b): return a + b`` repeated in one process;
(a') the first hit in a fresh process (informational);
(b)  cache hit with a 200 MB float64 argument: an in-memory array (hashed) and
     the array loaded from the store (``ctx.a``: keyed by artifact identity);
(c)  miss overhead of ``tiny`` with new arguments on every call, with compute
     leases (the default) and with ``exclusive=True``;
(d)  two processes released at the same instant on the same call (sleeps 0.5 s,
     returns 8 MB): in how many trials was it computed twice?

Timed cases run the sides in alternating blocks of calls within each repeat
(case a': one fresh process per side per repeat, alternating which goes first)
and report the median of the repeats. ratio = joblib time / provstore time:
above 1 means provstore is faster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import itertools
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
from bench_store import (  # shared with bench_store.py (same directory)
    cpu_model,
    fmt_time,
    interleaved,
    parse_common,
    settle,
)

import provstore

MB = 1_000_000
_fresh_args = itertools.count(1_000_000)  # never-seen arguments for the miss case


def tiny(a: int, b: int) -> int:
    """The function of cases (a) and (c)."""
    return a + b


def total(a: np.ndarray) -> float:
    """The function of case (b): a 200 MB argument, a small result."""
    return float(a.sum())


# --------------------------------------------------------------------------- results
@dataclass
class Row:
    """One line of the table."""

    case: str
    ours: str
    base: str
    ratio: str  # joblib cost / provstore cost (above 1: provstore is faster)
    best: str  # the same from the fastest repeat of each side
    target: str
    result: str  # PASS, FAIL or info
    samples: dict[str, list[float]] = field(default_factory=dict, repr=False)


def timed_row(case: str, ours: list[float], base: list[float], minimum: float | None) -> Row:
    """A row comparing provstore and joblib times; *minimum* is the target speed-up."""
    ratio = statistics.median(base) / statistics.median(ours)
    best = min(base) / min(ours)
    if minimum is None:
        target, result = "-", "info"
    else:
        target, result = f">= {minimum:.3g}x", "PASS" if ratio >= minimum else "FAIL"
    return Row(case, fmt_time(statistics.median(ours)), fmt_time(statistics.median(base)),
               f"{ratio:.2f}x", f"{best:.2f}x", target, result,
               {"provstore": ours, "joblib": base})


def print_table(rows: list[Row]) -> None:
    """Print the results table."""
    header = ("case", "provstore", "joblib", "ratio", "min ratio", "target", "result")
    cells = [header] + [(r.case, r.ours, r.base, r.ratio, r.best, r.target, r.result)
                        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


# --------------------------------------------------------------------------- timing
def rotate(sides: dict[str, Callable[[], float]], repeats: int,
           wait: float) -> dict[str, list[float]]:
    """Run every side once per repeat, rotating which goes first; return the samples."""
    names = list(sides)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            settle(wait)
            samples[name].append(sides[name]())
    return samples


class Workspace:
    """Fresh directories under one temporary root, deleted at the end."""

    def __init__(self, parent: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="provstore-bench-tracking-", dir=parent))
        self._n = itertools.count()

    def fresh(self, label: str) -> Path:
        """A new path (not created) for a cache or a store."""
        return self.root / f"{label}{next(self._n)}"

    def cleanup(self) -> None:
        """Delete everything."""
        shutil.rmtree(self.root, ignore_errors=True)


def memory(location: Path) -> joblib.Memory:
    """A joblib cache, as a user would make one."""
    return joblib.Memory(location, verbose=0)


# --------------------------------------------------------------------------- cases
def case_hit(ws: Workspace, repeats: int, wait: float, calls: int) -> Row:
    """(a) repeated hits of ``tiny(1, 2)`` in one process."""
    ours = provstore.open(ws.fresh("store")).track(tiny)
    base = memory(ws.fresh("joblib")).cache(tiny)
    ours(1, 2)
    base(1, 2)
    samples = interleaved({"provstore": lambda: ours(1, 2), "joblib": lambda: base(1, 2)},
                          repeats, wait, calls, block=50)
    return timed_row(f"(a) hit tiny(1, 2), median of {calls} calls", samples["provstore"],
                     samples["joblib"], 10)


FIRST_HIT = textwrap.dedent("""\
    import sys, time
    tool, where = sys.argv[1], sys.argv[2]
    if tool == "provstore":
        import provstore
        wrap = provstore.open(where).track
    else:
        import joblib
        wrap = joblib.Memory(where, verbose=0).cache

    def tiny(a, b):
        return a + b

    f = wrap(tiny)
    t0 = time.perf_counter()
    f(1, 2)
    print(time.perf_counter() - t0)
""")


def _entries(tool: str, where: Path) -> int:
    """Finished calls in a store, or results in a joblib cache."""
    if tool == "joblib":
        return sum(1 for _ in where.rglob("output.pkl"))
    con = sqlite3.connect(where / "provstore.db")
    try:
        return int(con.execute("SELECT count(*) FROM calls WHERE status = 'done'").fetchone()[0])
    finally:
        con.close()


def case_first_hit(ws: Workspace, repeats: int, wait: float) -> tuple[Row, Row]:
    """(a') a fresh process: its first call, a hit (no in-process memo yet), and its wall time.

    The wall time runs from starting the interpreter to its exit: imports,
    opening the store or cache, wrapping, the hit and the exit (where
    provstore records the run's counts).
    """
    script = ws.root / "first_hit.py"
    script.write_text(FIRST_HIT)
    where = {"provstore": ws.fresh("store"), "joblib": ws.fresh("joblib")}
    first: dict[str, list[float]] = {tool: [] for tool in where}

    def process(tool: str) -> float:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), tool, str(where[tool])],
                              capture_output=True, text=True, check=True, timeout=120)
        wall = time.perf_counter() - started
        first[tool].append(float(proc.stdout.split()[-1]))
        return wall

    for tool in where:  # the miss that fills each cache
        process(tool)
        first[tool].clear()
    walls = rotate({tool: functools.partial(process, tool) for tool in where}, repeats, wait)
    for tool in where:
        assert _entries(tool, where[tool]) == 1, f"{tool}: a fresh process missed"
    return (timed_row("(a') first hit in a fresh process", first["provstore"],
                      first["joblib"], None),
            timed_row("(a') fresh process: start, open, hit, exit", walls["provstore"],
                      walls["joblib"], 1 / 1.5))


def case_big_hit(ws: Workspace, nbytes: int, repeats: int, wait: float,
                 calls: int) -> tuple[Row, Row]:
    """(b) hits with a large array argument: in memory (hashed) and ``ctx.a`` (identity)."""
    arr = np.random.default_rng(0).random(nbytes // 8)
    ctx = provstore.open(ws.fresh("store"))
    ctx.a = arr
    ours = ctx.track(total)
    base = memory(ws.fresh("joblib")).cache(total)
    ours(arr)
    base(arr)
    assert ours.is_cached(ctx.a), "ctx.a should key like the same content in memory"
    samples = interleaved({
        "memory": lambda: ours(arr),
        "ctx.a": lambda: ours(ctx.a),  # the load is timed too
        "joblib": lambda: base(arr),
    }, repeats, wait, calls, block=1)
    size = f"{arr.nbytes / MB:.0f} MB"
    return (timed_row(f"(b) hit, {size} in-memory array (hashed)", samples["memory"],
                      samples["joblib"], 20),
            timed_row(f"(b) hit, {size} ctx.a (load + call, no hash)", samples["ctx.a"],
                      samples["joblib"], 20))


def case_miss(ws: Workspace, repeats: int, wait: float, calls: int) -> list[Row]:
    """(c) ``tiny(i, 1000)`` with a new ``i`` on every call: all misses.

    Twice: with compute leases (the default: any process may compute), and
    opened with ``exclusive=True`` (this process computes alone, no lease).
    """
    ours = provstore.open(ws.fresh("store")).track(tiny)
    alone = provstore.open(ws.fresh("alone"), exclusive=True).track(tiny)
    base = memory(ws.fresh("joblib")).cache(tiny)
    for f in (ours, alone, base):
        f(0, 1000)  # the run record and the function's directory are not timed
    samples = interleaved({"provstore": lambda: ours(next(_fresh_args), 1000),
                           "exclusive": lambda: alone(next(_fresh_args), 1000),
                           "joblib": lambda: base(next(_fresh_args), 1000)},
                          repeats, wait, calls, block=20)
    return [timed_row(f"(c) miss tiny(i, 1000), median of {calls} calls",
                      samples["provstore"], samples["joblib"], 1),
            timed_row("(c) the same, exclusive=True (no lease)", samples["exclusive"],
                      samples["joblib"], 1)]


RACER = textwrap.dedent("""\
    import sys, time
    import numpy as np
    tool, where = sys.argv[1], sys.argv[2]
    if tool == "provstore":
        import provstore
        wrap = provstore.open(where).track
    else:
        import joblib
        wrap = joblib.Memory(where, verbose=0).cache

    def make(n):
        print("COMPUTED", flush=True)
        time.sleep(0.5)
        return np.full(n, 1.0)

    f = wrap(make)
    print("READY", flush=True)
    sys.stdin.readline()  # released at the same instant as the other process
    print("SUM", float(np.asarray(f(1_000_000)).sum()), flush=True)  # 8 MB
""")


def _race(script: Path, tool: str, where: Path) -> tuple[int, int]:
    """One trial: two fresh processes call ``make(1_000_000)`` at once.

    Returns (how many computed, how many failed or returned a wrong value).
    """
    procs = [subprocess.Popen([sys.executable, str(script), tool, str(where)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"{tool} racer did not start: {line!r} {p.communicate()[1]}")
    for p in procs:  # release both
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    computed = bad = 0
    for p in procs:
        out, _ = p.communicate(timeout=120)
        computed += out.count("COMPUTED")
        bad += p.returncode != 0 or f"SUM {1_000_000.0}" not in out
    return computed, bad


def case_race(ws: Workspace, trials: int) -> Row:
    """(d) two processes on the same call, same instant, a fresh cache per trial."""
    script = ws.root / "racer.py"
    script.write_text(RACER)
    twice = {"provstore": 0, "joblib": 0}
    bad = {"provstore": 0, "joblib": 0}
    for trial in range(trials):
        order = ["provstore", "joblib"] if trial % 2 == 0 else ["joblib", "provstore"]
        for tool in order:
            settle(1.0)
            computed, failed = _race(script, tool, ws.fresh(tool))
            twice[tool] += computed >= 2
            bad[tool] += failed
    if bad["provstore"] or bad["joblib"]:
        print(f"(d) failed or wrong results: provstore {bad['provstore']}, "
              f"joblib {bad['joblib']}")
    ok = twice["provstore"] == 0 and bad["provstore"] == 0
    return Row(f"(d) 2 processes race, {trials} trials: computed twice",
               f"{twice['provstore']}/{trials}", f"{twice['joblib']}/{trials}", "-", "-",
               f"0/{trials}", "PASS" if ok else "FAIL")


# --------------------------------------------------------------------------- main
def machine() -> str:
    """One line describing the machine and the versions."""
    return (f"{cpu_model()}, Python {platform.python_version()}, "
            f"numpy {np.__version__}, joblib {joblib.__version__}, "
            f"SQLite {sqlite3.sqlite_version}, provstore {provstore.__version__}")


def run(args: argparse.Namespace) -> list[Row]:
    """Run the selected cases and return their rows."""
    quick, reps, wait = args.quick, args.repeats, args.wait
    only = set(args.only.split(",")) if args.only else {"a", "a'", "b", "c", "d"}
    ws = Workspace(args.tmp)
    rows: list[Row] = []
    try:
        if "a" in only:
            rows.append(case_hit(ws, reps, wait, 200 if quick else 1000))
        if "a'" in only:
            rows.extend(case_first_hit(ws, reps, wait))
        if "b" in only:
            rows.extend(case_big_hit(ws, 20 * MB if quick else 200 * MB, reps, wait,
                                     2 if quick else 3))
        if "c" in only:
            rows.extend(case_miss(ws, reps, wait, 50 if quick else 200))
        if "d" in only:
            rows.append(case_race(ws, 3 if quick else 10))
    finally:
        ws.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the table."""
    args = parse_common(argv, __doc__,
                        quick="smaller array, fewer calls and trials, 3 repeats (smoke run)",
                        only="comma-separated cases: a, a', b, c, d")

    started = time.monotonic()
    print(f"provstore tracking benchmarks, {dt.datetime.now():%Y-%m-%d %H:%M}, "
          f"{'quick' if args.quick else 'full'} run, median of {args.repeats} repeats")
    print(machine())
    rows = run(args)
    print()
    print_table(rows)
    print("\nratio: joblib time / provstore time, from the medians (above 1: provstore is "
          "faster); PASS/FAIL uses it.\nmin ratio: the same from the fastest repeat of each "
          f"side.\n{time.monotonic() - started:.0f} s in all")
    if args.verbose:
        for r in rows:
            for side, values in r.samples.items():
                print(f"{r.case} | {side}: {', '.join(fmt_time(x) for x in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
