"""history() and upstream() on a store with a million artifacts and lineage depth 100.

Usage::

    .venv/bin/python benchmarks/bench_lineage.py             # 1,000,000 artifacts, 10,000 chains
    .venv/bin/python benchmarks/bench_lineage.py --quick     # 100,000 artifacts, 1,000 chains
    .venv/bin/python benchmarks/bench_lineage.py --rebuild   # ignore the cached store

The store is created by ``provstore.open`` (so the migrations make the real
schema), then filled with bulk Core inserts (``conn.execute(insert(table),
list_of_dicts)``, 100,000 rows per statement, one transaction per table):
``chains`` scopes ``chain=<c>``, each holding a chain of ``depth`` inline JSON
ints where value *i* is made by a tracked call ``step(x=value i-1, k=1)``.
Every chain binds ``a0`` (an untracked assignment, the leaf), every 10th value
(``v010``, ``v020``, ...) and ``last`` (the chain's end, with its call).

The built store is cached under ``/tmp/provstore-bench-1m`` (``-100k`` with
``--quick``), keyed by the schema revision and this script's layout version,
so reruns reuse it. Timings are medians over ``--samples`` random chain ends
(default 50), after a warm-up pass; each sample opens a fresh ``History`` so no
call cache is reused between samples.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import xxhash
from sqlalchemy import create_engine, event, insert, text

import provstore
from provstore import hashing
from provstore.db import lineage_queries as lq
from provstore.db import queries as q
from provstore.db.schema import SCHEMA_HEAD

LAYOUT = 2  # bump when the generated data changes: invalidates cached stores
BATCH = 100_000
TARGET_MS = 50.0
FUNCTION = "pipeline.steps:step"


# --------------------------------------------------------------------------- build
def _digest(value: int) -> str:
    return hashing.digest(value)


def _key(*parts: object) -> str:
    return xxhash.xxh3_128_hexdigest("\x1f".join(map(str, parts)).encode())


def _batched(rows: Iterator[dict[str, Any]], size: int = BATCH) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def build(path: Path, chains: int, depth: int) -> dict[str, float]:
    """Create the store at *path*; return seconds per phase."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ctx = provstore.open(path)  # runs the migrations: the real schema
    ctx._store.close()
    db = path / "provstore.db"
    engine = create_engine(f"sqlite:///{db}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi: Any, _record: Any) -> None:
        cur = dbapi.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=OFF")  # a benchmark fixture: rebuilt if lost
        cur.execute("PRAGMA cache_size=-1000000")  # 1 GB: the digest index stays in memory
        cur.close()

    now = dt.datetime(2026, 1, 1, tzinfo=None)
    step = dt.timedelta(milliseconds=1)
    n_art = chains * depth
    n_calls = chains * (depth - 1)
    one = _digest(1)
    code = [_key("code", v) for v in range(3)]  # three code versions of step()

    def art_id(c: int, i: int) -> int:
        return c * depth + i + 1

    def call_id(c: int, i: int) -> int:  # the call making value i (i >= 1)
        return c * (depth - 1) + i

    def when(c: int, i: int) -> dt.datetime:
        return now + step * (c * depth + i)

    def timed(name: str, table: Any, rows: Iterator[dict[str, Any]]) -> None:
        t = time.perf_counter()
        with engine.begin() as conn:
            for batch in _batched(rows):
                conn.execute(insert(table), batch)
        timings[name] = time.perf_counter() - t

    with engine.begin() as conn:
        conn.execute(insert(q.runs), [{
            "id": 1, "uuid": _key("run"), "host": "bench", "pid": 1, "user": "bench",
            "argv": json.dumps(["bench_lineage.py"]), "cwd": "/tmp", "git_commit": None,
            "git_dirty": None, "python": platform.python_version(), "packages": "{}",
            "started": now, "heartbeat": now, "ended": now, "status": "finished"}])
        root = conn.execute(text("SELECT id FROM scopes WHERE path = ''")).scalar()
        if root is None:
            root = conn.execute(insert(q.scopes).returning(q.scopes.c.id), [{
                "parent_id": None, "segment": "", "key": None, "value": None, "path": "",
                "depth": 0}]).scalar()
        conn.execute(insert(q.code_versions), [{
            "id": v + 1, "digest": code[v], "identity": FUNCTION,
            "source": f"def step(x, k=1):\n    return x + k  # v{v}", "deps": "{}",
            "pinned": None, "created": now} for v in range(3)])
    first_scope = int(root) + 1

    timed("scopes", q.scopes, ({
        "id": first_scope + c, "parent_id": root, "segment": f"chain={c}", "key": "chain",
        "value": str(c), "path": f"chain={c}", "depth": 1} for c in range(chains)))

    def artifacts() -> Iterator[dict[str, Any]]:
        for c in range(chains):
            for i in range(depth):
                value = c * depth + i  # unique per artifact: no deduplication
                raw = str(value).encode()
                yield {"id": art_id(c, i), "algorithm": hashing.ALGORITHM,
                       "digest": _digest(value), "format": "json", "suffix": "",
                       "size": len(raw), "file_digest": None, "inline": raw, "meta": "{}",
                       "summary": '{"type": "int"}', "created": when(c, i), "run_id": 1}

    timed("artifacts", q.artifacts, artifacts())

    def calls() -> Iterator[dict[str, Any]]:
        for c in range(chains):
            cv = code[c % 3]
            for i in range(1, depth):
                a = art_id(c, i - 1)
                yield {"id": call_id(c, i), "key": _key(cv, a, one), "function": FUNCTION,
                       "code_digest": cv, "params": f'{{"x": {{"artifact": {a}}}, "k": 1}}',
                       "status": "done", "output_kind": "single", "run_id": 1, "host": "bench",
                       "pid": 1, "fence": 1, "takeover_of": None, "started": when(c, i),
                       "finished": when(c, i), "duration": 0.0001, "error": None}

    timed("calls", q.calls, calls())

    def call_inputs() -> Iterator[dict[str, Any]]:
        for c in range(chains):
            for i in range(1, depth):
                value = c * depth + i - 1
                cid = call_id(c, i)
                yield {"call_id": cid, "name": "x", "digest": _digest(value),
                       "artifact_id": art_id(c, i - 1), "file_path": None,
                       "summary": str(value)}
                yield {"call_id": cid, "name": "k", "digest": one, "artifact_id": None,
                       "file_path": None, "summary": "1"}

    timed("call_inputs", q.call_inputs, call_inputs())

    timed("call_outputs", q.call_outputs, ({
        "call_id": call_id(c, i), "position": 0, "artifact_id": art_id(c, i)}
        for c in range(chains) for i in range(1, depth)))

    def bindings() -> Iterator[dict[str, Any]]:
        for c in range(chains):
            sid = first_scope + c
            yield {"scope_id": sid, "name": "a0", "version": 1, "artifact_id": art_id(c, 0),
                   "created": when(c, 0), "run_id": 1, "origin": "pipeline.py:12",
                   "call_id": None}
            for i in range(10, depth, 10):
                yield {"scope_id": sid, "name": f"v{i:03d}", "version": 1,
                       "artifact_id": art_id(c, i), "created": when(c, i), "run_id": 1,
                       "origin": "pipeline.py:15", "call_id": call_id(c, i)}
            yield {"scope_id": sid, "name": "last", "version": 1,
                   "artifact_id": art_id(c, depth - 1), "created": when(c, depth - 1),
                   "run_id": 1, "origin": "pipeline.py:17", "call_id": call_id(c, depth - 1)}

    timed("bindings", q.bindings, bindings())
    t = time.perf_counter()
    with engine.connect() as conn:
        # No ANALYZE: provstore never runs it, so a real store has no statistics.
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    timings["checkpoint"] = time.perf_counter() - t
    engine.dispose()
    timings["total"] = time.perf_counter() - t0
    counts = sqlite3.connect(db)
    for table in ("artifacts", "calls", "call_inputs", "call_outputs", "bindings", "scopes"):
        timings[f"rows:{table}"] = counts.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    counts.close()
    assert timings["rows:artifacts"] == n_art and timings["rows:calls"] == n_calls
    return timings


def cached_store(base: Path, chains: int, depth: int, rebuild: bool) -> tuple[Path, dict]:
    """The built store for these sizes, building it when missing or stale."""
    stamp = f"schema={SCHEMA_HEAD} layout={LAYOUT} chains={chains} depth={depth}"
    marker = base / "BENCH_STAMP.json"
    if not rebuild and marker.exists():
        info = json.loads(marker.read_text())
        if info.get("stamp") == stamp:
            return base / "store", info
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    print(f"building {chains * depth:,} artifacts ({chains:,} chains of {depth}) in {base} ...",
          flush=True)
    timings = build(base / "store", chains, depth)
    info = {"stamp": stamp, "built": dt.datetime.now().isoformat(timespec="seconds"),
            "timings": timings}
    marker.write_text(json.dumps(info, indent=1))
    return base / "store", info


# --------------------------------------------------------------------------- measure
def median_ms(fn: Callable[[int], Any], ends: list[int]) -> tuple[float, float, float]:
    """Median, min and max in ms of ``fn(chain)`` over *ends*."""
    samples = []
    for c in ends:
        t = time.perf_counter()
        fn(c)
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples), min(samples), max(samples)


def measure(store: Path, chains: int, depth: int, samples: int,
            seed: int) -> list[tuple[str, tuple[float, float, float], float | None, str]]:
    ctx = provstore.open(store, create=False)
    db = store / "provstore.db"
    rng = random.Random(seed)
    ends = [rng.randrange(chains) for _ in range(samples)]
    name = "chain={}/last".format

    # Checks first: the walk must really cover the whole chain.
    h = ctx.history(name(ends[0]))
    g = h.upstream()
    n_calls = len(g.calls())
    assert n_calls == depth - 1, (n_calls, depth)
    assert not g.truncated
    assert any(n.kind == "assignment" for n in g.nodes)  # the chain's a0, reached
    raw = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    compiled = lq.UPSTREAM_CALLS.compile(dialect=ctx._store.engine.dialect)
    cte_sql = str(compiled)
    fixed = compiled.params  # literal parameters ("done") and the bound ones, positionally

    def cte_args(root: int) -> tuple[Any, ...]:
        values = {**fixed, "root": root, "max_depth": 100}
        return tuple(values[k] for k in compiled.positiontup or ())
    call_of_end = {c: (c + 1) * (depth - 1) for c in set(ends)}  # the build's call ids

    def cte_sqlalchemy(c: int) -> None:
        rows = ctx.store.query(lq.UPSTREAM_CALLS, {"root": call_of_end[c],
                                                    "max_depth": 100}).all()
        assert len(rows) == depth - 1

    def cte_raw(c: int) -> None:
        rows = raw.execute(cte_sql, cte_args(call_of_end[c])).fetchall()
        assert len(rows) == depth - 1

    def history(c: int) -> None:
        ctx.history(name(c))

    def first_call(c: int) -> None:
        hist = ctx.history(name(c))
        t = time.perf_counter()
        assert hist.versions[-1].call is not None
        split["call"].append((time.perf_counter() - t) * 1e3)

    def upstream(c: int) -> None:
        hist = ctx.history(name(c))
        t = time.perf_counter()
        graph = hist.upstream()
        split["upstream"].append((time.perf_counter() - t) * 1e3)
        assert len(graph.calls()) == depth - 1

    def render(c: int) -> None:
        hist = ctx.history(name(c))
        t = time.perf_counter()
        str(hist)
        split["str"].append((time.perf_counter() - t) * 1e3)

    split: dict[str, list[float]] = {"call": [], "upstream": [], "str": []}
    # Warm-up: every chain end once through the whole path (OS page cache, statement cache).
    for c in ends:
        history(c), cte_raw(c), cte_sqlalchemy(c), upstream(c)
    split = {k: [] for k in split}

    def only(key: str) -> tuple[float, float, float]:
        s = split[key]
        return statistics.median(s), min(s), max(s)

    results = []
    results.append(("raw recursive CTE (sqlite3)", median_ms(cte_raw, ends), None,
                    "UPSTREAM_CALLS, 99 rows"))
    results.append(("recursive CTE via SQLAlchemy", median_ms(cte_sqlalchemy, ends), None,
                    "store._query(UPSTREAM_CALLS)"))
    results.append(("ctx.history(name)", median_ms(history, ends), TARGET_MS, "versions only"))
    median_ms(first_call, ends)
    results.append(("h.versions[-1].call", only("call"), None, "first CallInfo load"))
    total = median_ms(upstream, ends)
    results.append(("h.upstream() depth 100", only("upstream"), TARGET_MS,
                    f"{depth - 1} calls, {len(g)} nodes"))
    results.append(("history + upstream", total, TARGET_MS, "ctx.history(name).upstream()"))
    median_ms(render, ends)
    results.append(("str(h)", only("str"), None, "tree capped at 30 levels"))
    raw.close()
    ctx._store.close()
    return results


def print_table(rows: list[tuple[str, tuple[float, float, float], float | None, str]]) -> bool:
    header = ("operation", "median ms", "min", "max", "target", "result", "note")
    lines = [header]
    ok = True
    for op, (med, lo, hi), target, note in rows:
        verdict = "-"
        if target is not None:
            verdict = "PASS" if med < target else "FAIL"
            ok &= med < target
        lines.append((op, f"{med:.2f}", f"{lo:.2f}", f"{hi:.2f}",
                      f"< {target:.0f} ms" if target else "-", verdict, note))
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    for n, r in enumerate(lines):
        print("  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    return ok


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the store, measure, print the table; exit 1 on a FAIL."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="100,000 artifacts (1,000 chains of 100) instead of 1,000,000")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached store")
    parser.add_argument("--samples", type=int, default=50, help="random chain ends (default 50)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default=None,
                        help="cache directory (default /tmp/provstore-bench-1m, -100k quick)")
    args = parser.parse_args(argv)
    depth = 100
    chains = 1_000 if args.quick else 10_000
    base = Path(args.dir or ("/tmp/provstore-bench-100k" if args.quick
                             else "/tmp/provstore-bench-1m"))
    t = time.perf_counter()
    store, info = cached_store(base, chains, depth, args.rebuild)
    fresh = time.perf_counter() - t > 1
    tm = info["timings"]
    print(f"store: {store} ({'built now' if fresh else 'cached, built ' + info['built']})")
    print(f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
          f"{int(tm['rows:artifacts']):,} artifacts, {int(tm['rows:calls']):,} calls, "
          f"{int(tm['rows:call_inputs']):,} call inputs, {int(tm['rows:bindings']):,} bindings, "
          f"{int(tm['rows:scopes']):,} scopes, "
          f"{(store / 'provstore.db').stat().st_size / 1e6:,.0f} MB")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in tm.items()
                       if not k.startswith("rows:") and k != "total")
    print(f"build time: {tm['total']:.1f} s ({phases})")
    print(f"samples: {args.samples} random chain ends, warm; fresh History per sample\n")
    ok = print_table(measure(store, chains, depth, args.samples, args.seed))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
