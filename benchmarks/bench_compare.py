"""The hot paths of two provstore versions, side by side in one run.

Usage::

    .venv/bin/python benchmarks/bench_compare.py REV            # this checkout against REV
    .venv/bin/python benchmarks/bench_compare.py REV --repeats 9

REV is any git revision of this repository (``HEAD~3``, a commit, a tag); it is
checked out into a temporary worktree and imported from there, so both sides run
on the same interpreter and installed packages. Each repeat starts one fresh
process per side, alternating which goes first, and each process times, after
a warm-up, in one store of its own:

- ``hit``: a tracked ``tiny(a, b)`` called again with the same arguments;
- ``miss``: ``tiny`` with new arguments every call (compute and record);
- ``bind``: ``ctx.x = i`` (a small value, one transaction);
- ``load``: ``ctx.x`` of that small value;
- ``load 8 MB``: ``ctx.a`` of an 8 MB array (a read-only memmap).

The table gives each side's median time per operation and their ratio
(this checkout / REV: below 1 means this checkout is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, tempfile, time
import numpy as np
import provstore

N = int(sys.argv[1])
ctx = provstore.open(tempfile.mkdtemp(prefix="bench-compare-"))

@ctx.track
def tiny(a, b):
    return a + b

def per_op(f, n):
    start = time.perf_counter()
    for i in range(n):
        f(i)
    return (time.perf_counter() - start) / n

tiny(1, 2)
ctx.x = -1
ctx.a = np.random.default_rng(0).random(1_000_000)
out = {
    "hit": per_op(lambda i: tiny(1, 2), N * 10),
    "miss": per_op(lambda i: tiny(i, 10**9), N),
    "bind": per_op(lambda i: setattr(ctx, "x", i), N),
    "load": per_op(lambda i: ctx.x, N * 10),
    "load 8 MB": per_op(lambda i: ctx.a, N * 10),
}
print(json.dumps(out))
"""


def run_side(src: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", WORKER, str(n)], env=env, check=True,
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-n", type=int, default=300, help="operations per timed case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-compare-wt-") as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(other),
                        args.rev], check=True)
        try:
            sides: dict[str, list[dict[str, float]]] = {"this": [], args.rev: []}
            for r in range(args.repeats):
                order = [("this", ROOT / "src"), (args.rev, other / "src")]
                for name, src in order if r % 2 == 0 else order[::-1]:
                    sides[name].append(run_side(src, args.n))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
                           check=False)
    print(f"{'case':<12}{'this':>12}{args.rev[:12]:>14}{'this/' + args.rev[:8]:>16}")
    for case in sides["this"][0]:
        mine = statistics.median(s[case] for s in sides["this"])
        theirs = statistics.median(s[case] for s in sides[args.rev])
        print(f"{case:<12}{mine * 1e6:>10.1f}µs{theirs * 1e6:>12.1f}µs{mine / theirs:>16.2f}")


if __name__ == "__main__":
    main()
