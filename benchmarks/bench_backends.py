"""provstore on SQLite and on PostgreSQL, side by side in one run.

Usage::

    .venv/bin/python benchmarks/bench_backends.py            # full run, about 2 minutes
    .venv/bin/python benchmarks/bench_backends.py --quick    # smaller sizes: a smoke run
    .venv/bin/python benchmarks/bench_backends.py --only a,e --repeats 9 -v
    .venv/bin/python benchmarks/bench_backends.py --pg-url postgresql+psycopg://lab@dbhost/bench

Backends (``--backends``, default all three), each a fresh store made for this run:

sqlite       ``provstore.open(dir)``: WAL, ``synchronous=NORMAL``, no fsync per commit
             (the default; committed work survives a crash of the process, not of the OS);
sqlite-full  ``provstore.open(dir, durability="full")``: an fsync per commit;
postgresql   ``provstore.open(dir, db=url)``: a throwaway local server started by this
             script (initdb + pg_ctl, see tests/pgserver.py) with ``fsync=on,
             synchronous_commit=on, full_page_writes=on``, so every commit waits for its
             WAL flush; or a fresh database made on the server of ``--pg-url`` (an empty
             database used as is when the role may not create one).

Cases:

(a)  ``ctx.x = i``, a new small int each time: bindings/s, one transaction each;
(b)  ``ctx.y`` of a small value bound once: latency; (b') ``ctx.x`` after the versions
     case (a) made (finding the current version of a name with many versions);
(c)  ``ctx.a`` of a 100 MB float64 array (a read-only memmap): latency;
(d)  hit of a tracked ``tiny(1, 2)`` repeated in one process: per call;
(e)  miss of ``tiny(i, 1000)`` with a new ``i`` each call: per call; and (e') the same
     keys again after clearing the process's memo of finished calls, i.e. a hit on a
     call another process computed (the database part of a hit);
(f)  8 processes binding N small values each at once (own name per process):
     total bindings/s over the wall time of the round;
(g)  8 processes calling the same 100 tracked keys (each from its own starting point,
     wrapping around): wall time, and a check that 100 bodies ran;
(h)  ``ctx.map`` of 300 trivial tracked calls (``--map-calls``) on a Dask ``LocalCluster``
     of 2 single-threaded worker processes, one item per task: new items (all misses),
     then the same items again (all hits); one repeat (a single sample per backend).

Single-process cases (a-e) take turns in blocks of calls within each repeat, rotating
which backend goes first, and report the median of the repeats; (f) and (g) run one
round per repeat (at most 3) on pools of worker processes started once per backend, and
report how many write transactions the database asked to run again (on PostgreSQL, which
runs writes at READ COMMITTED behind advisory locks, only a deadlock or a unique-key race
does; SQLite makes writers wait instead).
ratio = PostgreSQL cost / SQLite cost (time per operation or wall time): above 1,
PostgreSQL is slower.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import itertools
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from bench_store import (  # shared with bench_store.py (same directory)
    _waited,
    cpu_model,
    fmt_time,
    interleaved,
    parse_common,
    settle,
)
from sqlalchemy import create_engine, make_url, text

import provstore
from provstore.identity import CallMemo

MB = 1_000_000
BACKENDS = ("sqlite", "sqlite-full", "postgresql")
# The test suite's cluster turns durability off for speed; a benchmark against
# SQLite must not: every commit waits for its WAL to reach the disk.
DURABLE = ("-c fsync=on -c synchronous_commit=on -c full_page_writes=on "
           "-c max_connections=200 -c shared_buffers=128MB")
_values = itertools.count(1_000_000)  # never-bound values and never-seen arguments


def tiny(a: int, b: int) -> int:
    """The tracked function of cases (d) and (e)."""
    return a + b


@provstore.track
def square(x: int) -> int:
    """The tracked function of case (h), imported by the Dask workers."""
    return x * x


# --------------------------------------------------------------------------- results
@dataclass
class Row:
    """One line of the table: per-backend samples of a cost (seconds per unit)."""

    case: str
    unit: str  # "time" (s per op), "rate" (shown as ops/s) or "wall" (s per round)
    samples: dict[str, list[float]]
    note: dict[str, str] = field(default_factory=dict)  # replaces the figure when set

    def median(self, backend: str) -> float:
        return statistics.median(self.samples[backend])

    def cell(self, backend: str) -> str:
        if backend in self.note:
            return self.note[backend]
        if backend not in self.samples:
            return "-"
        cost = self.median(backend)
        return f"{1 / cost:,.0f} /s" if self.unit == "rate" else fmt_time(cost)

    def ratio(self, over: str, best: bool = False) -> str:
        if self.note or "postgresql" not in self.samples or over not in self.samples:
            return "-"
        pick = min if best else statistics.median
        return f"{pick(self.samples['postgresql']) / pick(self.samples[over]):.2f}x"


def print_table(rows: list[Row], backends: list[str]) -> None:
    """Print the results table."""
    header = ["case", *backends]
    ratios = [b for b in ("sqlite", "sqlite-full") if b in backends] if (
        "postgresql" in backends) else []
    header += [f"PG/{b}" for b in ratios]
    if "sqlite" in ratios:
        header.append("min PG/sqlite")
    cells = [tuple(header)]
    for r in rows:
        line = [r.case, *(r.cell(b) for b in backends), *(r.ratio(b) for b in ratios)]
        if "sqlite" in ratios:
            line.append(r.ratio("sqlite", best=True))
        cells.append(tuple(line))
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


# --------------------------------------------------------------------------- PostgreSQL
def _pgserver() -> Any:
    """tests/pgserver.py, the test suite's throwaway cluster."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("pgserver")


def start_cluster() -> Any:
    """Start a local PostgreSQL cluster with durable settings; returns it."""
    pgserver = _pgserver()

    class DurableCluster(pgserver.PostgresCluster):
        def _start(self) -> None:
            saved, pgserver._SETTINGS = pgserver._SETTINGS, DURABLE
            try:
                super()._start()
            finally:
                pgserver._SETTINGS = saved

    return DurableCluster()


@contextmanager
def postgres_database(pg_url: str | None) -> Iterator[tuple[str, str]]:
    """Yield (URL of a fresh database, description of the server); drop it afterwards."""
    name = f"provstore_bench_{uuid.uuid4().hex[:8]}"
    cluster = None
    if pg_url is None:
        cluster = start_cluster()
        url = cluster.create_database(name)

        def drop() -> None:
            cluster.drop_database(name)

        where = "local throwaway server"
    else:
        admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)

            def drop() -> None:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

            where = f"{make_url(pg_url).host or 'local socket'}, fresh database {name}"
        except Exception as exc:  # no CREATEDB: use the given database if it is empty
            with admin.connect() as conn:
                tables = conn.execute(text(
                    "SELECT count(*) FROM information_schema.tables "
                    "WHERE table_schema = 'public'")).scalar_one()
            if tables:
                raise SystemExit(f"cannot create a database ({exc.__class__.__name__}) and "
                                 f"{make_url(pg_url).database} is not empty: give an empty "
                                 "database or a role with CREATEDB") from exc
            url, drop = pg_url, (lambda: None)
            where = f"{make_url(pg_url).host or 'local socket'}, the given empty database"
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            settings = {s: conn.execute(text(f"SHOW {s}")).scalar_one() for s in
                        ("server_version", "fsync", "synchronous_commit", "full_page_writes",
                         "wal_sync_method")}
        engine.dispose()
        version = settings.pop("server_version").split()[0]
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        yield url, f"PostgreSQL {version} ({where}; {shown})"
    finally:
        for store in provstore.locations.open_stores():  # let DROP DATABASE through
            provstore.locations.close(store)
        with suppress(Exception):
            drop()
        if cluster is not None:
            cluster.stop()


# --------------------------------------------------------------------------- workers
WORKER = textwrap.dedent("""\
    import os, sys, time, traceback
    import provstore
    from provstore.db import engine

    retried = [0]  # write transactions the database asked to run again
    should_retry = engine._should_retry

    def counting(exc, seen):
        again = should_retry(exc, seen)
        retried[0] += again
        return again

    engine._should_retry = counting
    where, durability, log = sys.argv[1], sys.argv[2], sys.argv[3]
    ctx = provstore.open(where, durability=durability)  # PostgreSQL: from provstore.url

    @ctx.track
    def shared(k, salt):
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, f"{salt} {k} {os.getpid()}\\n".encode())
        finally:
            os.close(fd)
        return k * k

    ctx[f"warm{os.getpid()}"] = 0  # opens this process's run: not timed
    shared.key(0, "warm")           # computes the code version: not timed
    print("READY", flush=True)
    for line in sys.stdin:
        cmd, *arg = line.split()
        retried[0] = 0
        try:
            if cmd == "bind":  # bind NAME COUNT START
                name, count, start = arg[0], int(arg[1]), int(arg[2])
                t0 = time.monotonic()
                for i in range(start, start + count):
                    ctx[name] = i
                t1 = time.monotonic()
            else:  # track SALT KEYS START
                salt, keys, start = arg[0], int(arg[1]), int(arg[2])
                t0 = time.monotonic()
                for j in range(keys):
                    k = (start + j) % keys
                    assert shared(k, salt) == k * k
                t1 = time.monotonic()
        except Exception:
            print("ERROR", repr(traceback.format_exc()), flush=True)
            continue
        print("DONE", t0, t1, retried[0], flush=True)
""")


class Pool:
    """Worker processes on one store, each waiting for commands on stdin."""

    def __init__(self, script: Path, where: Path, durability: str, log: Path,
                 procs: int, stderr: IO[str]) -> None:
        self.log = log
        self.procs = [
            subprocess.Popen([sys.executable, str(script), str(where), durability, str(log)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                             text=True)
            for _ in range(procs)]

    def ready(self) -> None:
        for p in self.procs:
            self._line(p, "READY")

    def round(self, commands: list[str]) -> tuple[float, int]:
        """Send one command to each worker at once; return the wall time and the retries."""
        for p, command in zip(self.procs, commands):
            assert p.stdin is not None
            p.stdin.write(command + "\n")
            p.stdin.flush()
        spans = [self._line(p, "DONE").split()[1:] for p in self.procs]
        wall = max(float(s[1]) for s in spans) - min(float(s[0]) for s in spans)
        return wall, sum(int(s[2]) for s in spans)

    @staticmethod
    def _line(p: subprocess.Popen[str], expected: str) -> str:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line.startswith(expected):
            raise RuntimeError(f"worker {p.pid}: expected {expected}, got {line!r} "
                               "(see the workers' stderr file)")
        return line

    def close(self) -> None:
        for p in self.procs:
            with suppress(Exception):
                assert p.stdin is not None
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------- cases
def case_bind(ctxs: dict[str, provstore.Context], repeats: int, wait: float,
              calls: int) -> Row:
    """(a) ``ctx.x = i``: a new value, a new version, one write transaction each."""
    sides = {b: (lambda c=c: setattr(c, "x", next(_values))) for b, c in ctxs.items()}
    samples = interleaved(sides, repeats, wait, calls, block=20, agg=statistics.fmean)
    return Row(f"(a) bind ctx.x = i, {calls} per repeat: bindings/s", "rate", samples)


def case_load_small(ctxs: dict[str, provstore.Context], repeats: int, wait: float,
                    calls: int) -> list[Row]:
    """(b) ``ctx.y`` of a small int bound once; (b') ``ctx.x`` after case (a)'s versions."""
    for c in ctxs.values():
        c.y = next(_values)
    rows = [Row(f"(b) load small ctx.y (1 version), median of {calls}", "time",
                interleaved({b: (lambda c=c: c.y) for b, c in ctxs.items()}, repeats, wait, calls,
                      block=50))]
    if all("x" in c for c in ctxs.values()):
        # Finding the current version of a name with many versions: the query
        # compares each version with the newest, so its cost may grow with them.
        versions = max(len(c.history("x").versions) for c in ctxs.values())
        few = max(calls // 6, 10)  # may take milliseconds each
        rows.append(Row(f"(b') load ctx.x ({versions:,} versions), median of {few}", "time",
                        interleaved({b: (lambda c=c: c.x) for b, c in ctxs.items()}, repeats, wait,
                              few, block=10)))
    return rows


def case_load_array(ctxs: dict[str, provstore.Context], repeats: int, wait: float,
                    calls: int, nbytes: int) -> Row:
    """(c) ``ctx.a`` of a large array: a read-only memmap, whatever its size."""
    arr = np.random.default_rng(0).random(nbytes // 8)
    for c in ctxs.values():
        c.a = arr
    del arr
    sides = {b: (lambda c=c: c.a) for b, c in ctxs.items()}
    samples = interleaved(sides, repeats, wait, calls, block=5)
    return Row(f"(c) load {nbytes / MB:.0f} MB array ctx.a, median of {calls}", "time",
               samples)


def case_hit(ctxs: dict[str, provstore.Context], repeats: int, wait: float,
             calls: int) -> Row:
    """(d) repeated hits of ``tiny(1, 2)``: served from the process's memo."""
    fns = {b: c.track(tiny) for b, c in ctxs.items()}
    for f in fns.values():
        f(1, 2)
    samples = interleaved({b: (lambda f=f: f(1, 2)) for b, f in fns.items()}, repeats, wait,
                    calls, block=50)
    return Row(f"(d) hit tiny(1, 2), median of {calls}", "time", samples)


def case_miss(ctxs: dict[str, provstore.Context], repeats: int, wait: float,
              calls: int) -> tuple[Row, Row]:
    """(e) misses of ``tiny(i, 1000)``; (e') the same keys as hits with the memo cleared."""
    fns = {b: c.track(tiny) for b, c in ctxs.items()}
    done: dict[str, list[int]] = {b: [] for b in ctxs}
    for f in fns.values():
        f(0, 1000)  # the code row is written once per store: not timed

    def miss(backend: str) -> None:
        i = next(_values)
        fns[backend](i, 1000)
        done[backend].append(i)

    misses = interleaved({b: (lambda b=b: miss(b)) for b in ctxs}, repeats, wait, calls, block=10)
    for c in ctxs.values():  # forget every finished call, output row and small value
        store = c.store
        store.memo = CallMemo()
        store._artifacts.clear()
        store._scalars.clear()
    pending = {b: iter(keys) for b, keys in done.items()}

    def cold(backend: str) -> None:
        i = next(pending[backend])
        assert fns[backend](i, 1000) == i + 1000

    hits = interleaved({b: (lambda b=b: cold(b)) for b in ctxs}, repeats, wait, calls, block=10)
    return (Row(f"(e) miss tiny(i, 1000), median of {calls}", "time", misses),
            Row("(e') hit from the database (memo cleared)", "time", hits))


def case_concurrent(pools: dict[str, Pool], ctxs: dict[str, provstore.Context],
                    rounds: int, wait: float, count: int, keys: int) -> list[Row]:
    """(f) N processes binding at once; (g) N processes sharing *keys* tracked keys."""
    names = list(pools)
    procs = len(next(iter(pools.values())).procs)
    rows: list[Row] = []

    def retried(counts: dict[str, list[int]]) -> dict[str, str]:
        return {b: f"{statistics.median(n):.0f}" for b, n in counts.items()}

    if count:
        samples: dict[str, list[float]] = {b: [] for b in names}
        retries: dict[str, list[int]] = {b: [] for b in names}
        for r in range(rounds):
            for b in names[r % len(names):] + names[: r % len(names)]:
                settle(wait)
                start = next(_values) * 10_000
                wall, again = pools[b].round([f"bind w{rank} {count} {start + rank * count}"
                                              for rank in range(procs)])
                samples[b].append(wall / (procs * count))
                retries[b].append(again)
        rows.append(Row(f"(f) {procs} processes x {count} binds at once: bindings/s",
                        "rate", samples))
        rows.append(Row(f"(f) transactions retried per round (of {procs * count})", "wall", {},
                        note=retried(retries)))
        for b in names:
            versions = [len(ctxs[b].history(f"w{rank}").versions) for rank in range(procs)]
            assert versions == [rounds * count] * procs, (b, versions)
    if keys:
        samples = {b: [] for b in names}
        retries = {b: [] for b in names}
        bodies: dict[str, list[int]] = {b: [] for b in names}
        for r in range(rounds):
            for b in names[r % len(names):] + names[: r % len(names)]:
                settle(wait)
                salt = f"s{next(_values)}"
                wall, again = pools[b].round([f"track {salt} {keys} {rank * keys // procs}"
                                              for rank in range(procs)])
                samples[b].append(wall)
                retries[b].append(again)
                lines = pools[b].log.read_text().splitlines() if pools[b].log.exists() else []
                bodies[b].append(sum(line.split()[0] == salt for line in lines))
        rows.append(Row(f"(g) {procs} processes x the same {keys} tracked keys: wall", "wall",
                        samples))
        rows.append(Row(f"(g) bodies run per round (of {keys})", "wall", {}, note={
            b: "/".join(str(n) for n in sorted(set(counts))) + f" in {len(counts)} rounds"
            for b, counts in bodies.items()}))
        rows.append(Row("(g) transactions retried per round", "wall", {},
                        note=retried(retries)))
    return rows


def case_dask(ctxs: dict[str, provstore.Context], repeats: int, wait: float,
              calls: int) -> list[Row]:
    """(h) ``ctx.map`` of *calls* trivial tracked calls on a 2-worker ``LocalCluster``.

    Each repeat maps new items (all misses), then the same items again (all
    hits), through ``client.get_executor(pure=False)`` with one item per task.
    """
    import logging

    from bench_backends import square as tracked  # by module name: the workers import it
    from distributed import Client, LocalCluster

    names = list(ctxs)
    misses: dict[str, list[float]] = {b: [] for b in names}
    hits: dict[str, list[float]] = {b: [] for b in names}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        client.run(importlib.import_module, "bench_backends")  # imports are not timed
        executor = client.get_executor(pure=False)
        for r in range(repeats):
            items = [next(_values) for _ in range(calls)]
            for b in names[r % len(names):] + names[: r % len(names)]:
                settle(wait)
                for out in (misses, hits):
                    t0 = time.perf_counter()
                    got = list(ctxs[b].map(tracked, items, executor=executor))
                    out[b].append(time.perf_counter() - t0)
                    assert got == [x * x for x in items]
    return [Row(f"(h) ctx.map, {calls} tracked calls, Dask 2 workers: misses", "wall",
                misses),
            Row(f"(h) the same {calls} again: hits", "wall", hits)]


# --------------------------------------------------------------------------- main
def machine(pg: str | None) -> str:
    """Lines describing the machine, the versions and the load."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"{cpu_model()}, Python {platform.python_version()}, SQLite "
             f"{sqlite3.sqlite_version}, provstore {provstore.__version__}, "
             f"load average {load}"]
    if pg:
        import psycopg

        lines.append(f"{pg}, psycopg {psycopg.__version__}")
    return "\n".join(lines)


def open_stores(root: Path, backends: list[str], pg_url: str | None,
                ) -> dict[str, tuple[provstore.Context, str]]:
    """A fresh store per backend, with one write made (the run row is not timed)."""
    out = {}
    for b in backends:
        where = root / b
        if b == "postgresql":
            ctx = provstore.open(where, db=pg_url)
        else:
            ctx = provstore.open(where, durability="full" if b == "sqlite-full" else "normal")
        ctx.warmup = 0
        out[b] = (ctx, "full" if b == "sqlite-full" else "normal")
    return out


def run(args: argparse.Namespace, backends: list[str], pg_url: str | None,
        root: Path) -> list[Row]:
    """Run the selected cases and return their rows."""
    quick, reps, wait = args.quick, args.repeats, args.wait
    only = set(args.only.split(",")) if args.only else set("abcdefgh")
    stores = open_stores(root, backends, pg_url)
    ctxs = {b: ctx for b, (ctx, _) in stores.items()}
    rows: list[Row] = []
    pools: dict[str, Pool] = {}
    errors = (root / "workers.err").open("w")
    try:
        if only & {"f", "g"}:  # started first: they import while the parent measures
            script = root / "worker.py"
            script.write_text(WORKER)
            pools = {b: Pool(script, root / b, durability, root / f"{b}.log", args.procs,
                             errors) for b, (_, durability) in stores.items()}
            for pool in pools.values():
                pool.ready()
        if "a" in only:
            rows.append(case_bind(ctxs, reps, wait, 100 if quick else 200))
        if "b" in only:
            rows.extend(case_load_small(ctxs, reps, wait, 100 if quick else 300))
        if "c" in only:
            rows.append(case_load_array(ctxs, reps, wait, 20 if quick else 50,
                                        10 * MB if quick else 100 * MB))
        if "d" in only:
            rows.append(case_hit(ctxs, reps, wait, 200 if quick else 1000))
        if "e" in only:
            rows.extend(case_miss(ctxs, reps, wait, 30 if quick else 100))
        if pools:
            rows.extend(case_concurrent(
                pools, ctxs, min(reps, 2 if quick else 3), wait,
                count=(20 if quick else 100) if "f" in only else 0,
                keys=100 if "g" in only else 0))
        if "h" in only and importlib.util.find_spec("distributed") is None:
            print("(h) skipped: dask.distributed is not installed")
        elif "h" in only:
            rows.extend(case_dask(ctxs, 1, wait, args.map_calls or (
                100 if quick else 300)))
    finally:
        for pool in pools.values():
            pool.close()
        errors.close()
    complaints = sorted(set((root / "workers.err").read_text().splitlines()))
    if complaints:
        print(f"\nthe workers wrote {len(complaints)} distinct lines to stderr, e.g.:")
        for line in complaints[:5]:
            print(f"  {line[:160]}")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start PostgreSQL, run, print the table."""
    argv = sys.argv[1:] if argv is None else argv
    extra = argparse.ArgumentParser(add_help=False, usage=argparse.SUPPRESS)
    extra.add_argument("--pg-url", help="a PostgreSQL server to use (a fresh database is made "
                       "on it, or the given one is used if empty) instead of starting one")
    extra.add_argument("--backends", default=",".join(BACKENDS),
                       help=f"comma-separated among {', '.join(BACKENDS)} (default: all)")
    extra.add_argument("--procs", type=int, default=8, help="processes in (f) and (g)")
    extra.add_argument("--map-calls", type=int,
                       help="items mapped in (h) (default 300, quick 100)")
    if {"-h", "--help"} & set(argv):
        extra.print_help()
    mine, rest = extra.parse_known_args(argv)
    args = parse_common(rest, __doc__, quick="smaller sizes, 3 repeats, 2 rounds (smoke run)",
                        only="comma-separated cases: a, b, c, d, e, f, g, h")
    args.procs, args.map_calls = mine.procs, mine.map_calls
    backends = [b for b in BACKENDS if b in mine.backends.split(",")]
    if not backends:
        raise SystemExit(f"--backends: choose among {', '.join(BACKENDS)}")

    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="provstore-bench-backends-", dir=args.tmp))
    try:
        with (postgres_database(mine.pg_url) if "postgresql" in backends
              else _nothing()) as (pg_url, pg):
            print(f"provstore on SQLite and PostgreSQL, {dt.datetime.now():%Y-%m-%d %H:%M}, "
                  f"{'quick' if args.quick else 'full'} run, median of {args.repeats} repeats")
            print(machine(pg))
            rows = run(args, backends, pg_url, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print_table(rows, backends)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print("\nratio: PostgreSQL cost / SQLite cost (time per operation, or wall time), from "
          "the medians: above 1, PostgreSQL is slower.\nmin: the same from the fastest "
          f"repeat of each side.\n{time.monotonic() - started:.0f} s in all, {_waited[0]:.0f} s "
          f"of it waiting for idle; load average at the end {load}")
    if args.verbose:
        for r in rows:
            for b, values in r.samples.items():
                print(f"{r.case} | {b}, time per operation or round: "
                      f"{', '.join(fmt_time(x) for x in values)}")
    return 0


@contextmanager
def _nothing() -> Iterator[tuple[None, None]]:
    yield None, None


if __name__ == "__main__":
    sys.exit(main())
