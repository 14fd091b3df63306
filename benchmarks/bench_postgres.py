"""Concurrent writers on PostgreSQL and SQLite: bind rate and transactions run again.

Usage::

    .venv/bin/python benchmarks/bench_postgres.py                 # 8 x 100 binds, 3 rounds
    .venv/bin/python benchmarks/bench_postgres.py --procs 4 --rounds 5 --binds 50
    .venv/bin/python benchmarks/bench_postgres.py --pg-url postgresql+psycopg://lab@dbhost/bench

Each backend gets a fresh store (``postgresql``: a throwaway local server with durable
settings, started as in ``bench_backends.py``, or a fresh database on ``--pg-url``;
``sqlite``: the default ``provstore.open(dir)``) and a pool of ``--procs`` worker
processes started once. Each round sends every worker one command at once:

bind   ``--binds`` bindings of new small ints, every other one to the name ``shared``
       that all workers rebind (the contended case: each needs the next version number)
       and the rest to the worker's own name (no contention but the database's);
claim  every worker calls the tracked ``body(k, salt)`` for the same ``--keys`` keys,
       each starting at its own offset (concurrent claims of the same calls).

Reported per backend, median over the rounds: bindings per second (all workers' binds
over the round's wall time), the transactions run again (``provstore.db.engine.reruns``
summed over the workers, smallest-largest over the rounds) and, for claim, the wall time
and the bodies run (each key must run once). After the rounds the versions of every name
are checked: dense, unique, none lost.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import bench_backends as backends_bench  # same directory: its worker pool
from bench_backends import postgres_database  # the durable local server
from bench_store import cpu_model

import provstore

WORKER = textwrap.dedent("""\
    import os, sys, time, traceback
    import provstore
    from provstore.db import engine

    where, log, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = provstore.open(where)  # PostgreSQL: the URL recorded in the directory

    @ctx.track
    def body(k, salt):
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, f"{salt} {k}\\n".encode())
        finally:
            os.close(fd)
        return k * k

    ctx[f"warm{rank}"] = 0    # opens this process's run: not timed
    body.key(0, "warm")       # computes the code version: not timed
    print("READY", flush=True)
    for line in sys.stdin:
        cmd, *arg = line.split()
        before = engine.reruns()
        try:
            t0 = time.monotonic()
            if cmd == "bind":  # bind COUNT START
                count, start = int(arg[0]), int(arg[1])
                for i in range(count):
                    ctx["shared" if i % 2 == 0 else f"own{rank}"] = start + i
            else:  # claim SALT KEYS
                salt, keys = arg[0], int(arg[1])
                for j in range(keys):
                    k = (rank * 7 + j) % keys
                    assert body(k, salt) == k * k
            t1 = time.monotonic()
        except Exception:
            print("ERROR", repr(traceback.format_exc()), flush=True)
            continue
        print("DONE", t0, t1, engine.reruns() - before, flush=True)
""")


class Pool(backends_bench.Pool):
    """bench_backends' worker pool, with this benchmark's worker arguments (a rank each)."""

    def __init__(self, script: Path, where: Path, log: Path, procs: int) -> None:
        self.log = log
        self.procs = [subprocess.Popen(
            [sys.executable, str(script), str(where), str(log), str(rank)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for rank in range(procs)]
        self.ready()


def measure(pool: Pool, ctx: provstore.Context, args: argparse.Namespace,
            base: int) -> dict[str, str]:
    """Run the rounds on one backend's pool; return the figures as table cells."""
    procs = len(pool.procs)
    rates, bind_reruns, walls, claim_reruns, bodies = [], [], [], [], []
    for r in range(args.rounds):
        start = base + r * procs * args.binds
        wall, again = pool.round([f"bind {args.binds} {start + rank * args.binds}"
                                  for rank in range(procs)])
        rates.append(procs * args.binds / wall)
        bind_reruns.append(again)
        salt = f"r{base}x{r}"
        wall, again = pool.round([f"claim {salt} {args.keys}"] * procs)
        walls.append(wall)
        claim_reruns.append(again)
        lines = pool.log.read_text().splitlines() if pool.log.exists() else []
        bodies.append(sum(line.split()[0] == salt for line in lines))
    check_versions(ctx, procs, args)
    return {
        "binds/s": f"{statistics.median(rates):,.0f} /s",
        "bind reruns / round": spread(bind_reruns),
        "claim wall": f"{statistics.median(walls):.2f} s",
        "claim reruns / round": spread(claim_reruns),
        "bodies / round": spread(bodies),
    }


def check_versions(ctx: provstore.Context, procs: int, args: argparse.Namespace) -> None:
    """Every bind made a version: dense, unique numbers; raise if any was lost."""
    shared = (args.binds + 1) // 2 * procs * args.rounds
    own = args.binds // 2 * args.rounds
    expected = {"shared": shared, **{f"own{rank}": own for rank in range(procs)}}
    for name, count in expected.items():
        numbers = [v.number for v in ctx.history(name).versions]
        if numbers != list(range(1, count + 1)):
            raise SystemExit(f"{name}: versions {numbers[:5]}... ({len(numbers)}), "
                             f"expected 1..{count}")


def spread(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


def run_backend(backend: str, root: Path, pg_url: str | None,
                args: argparse.Namespace) -> dict[str, str]:
    """Open a fresh store for *backend*, start its workers and measure."""
    where = root / backend
    ctx = provstore.open(where, db=pg_url) if backend == "postgresql" else provstore.open(where)
    script = root / "worker.py"
    script.write_text(WORKER)
    pool = Pool(script, where, root / f"{backend}.log", args.procs)
    try:
        return measure(pool, ctx, args, base=1_000_000)
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run both backends, print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=8, help="worker processes (default 8)")
    parser.add_argument("--binds", type=int, default=100, help="binds per worker and round")
    parser.add_argument("--keys", type=int, default=50, help="tracked keys per claim round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per backend")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-url", help="a PostgreSQL server to use instead of starting one")
    args = parser.parse_args(argv)
    backends = [b for b in ("sqlite", "postgresql") if b in args.backends.split(",")]
    root = Path(tempfile.mkdtemp(prefix="provstore-bench-pg-"))
    started = time.monotonic()
    results: dict[str, dict[str, str]] = {}
    server = ""
    try:
        if "sqlite" in backends:
            results["sqlite"] = run_backend("sqlite", root, None, args)
        if "postgresql" in backends:
            with postgres_database(args.pg_url) as (url, server):
                results["postgresql"] = run_backend("postgresql", root, url, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"concurrent writers, {dt.datetime.now():%Y-%m-%d %H:%M}: {args.procs} processes x "
          f"{args.binds} binds (half to one shared name), then x {args.keys} shared tracked "
          f"keys; {args.rounds} rounds")
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, provstore {provstore.__version__}"
          + (f"\n{server}" if server else ""))
    rows = list(next(iter(results.values())))
    width = max(len(r) for r in rows)
    print("  ".join([" " * width, *(f"{b:>14}" for b in results)]))
    for row in rows:
        print("  ".join([row.ljust(width), *(f"{results[b][row]:>14}" for b in results)]))
    print(f"{time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
