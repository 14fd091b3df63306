"""Many real processes at once, on SQLite and on PostgreSQL: no lost or doubled work.

1. Eight processes bind 500 values each, all released together by a start
   barrier: half into names of their own scope, half into twenty names every
   process shares, so that versions of one name race. Afterwards every value
   is in the store exactly once, the versions of each name are 1..n without
   gaps, and ``provstore verify`` passes.
2. Sixteen processes call the same 100 keys of one tracked function, each in
   its own shuffled order. The body appends one line per execution to a log
   opened with ``O_APPEND`` (lines from many processes never interleave), so
   the log counts executions: each key must run exactly once, and every
   process must get every result right.

Children are started through ``subprocess`` and wait for a "go" file, so all
of them have imported provstore and opened the store before any writes. On
PostgreSQL the ``store_dir`` fixture has recorded the database URL in the
store directory, so a plain ``provstore.open(store)`` in a child uses it.
Each child is bounded in time; nothing here asserts on speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import provstore
from provstore import maintenance
from provstore.db import queries as q

PY = sys.executable
_SCRIPT = Path(sys.executable).with_name("provstore")  # the venv's console script
PROVSTORE_CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-m", "provstore"]
CHILD_TIMEOUT = 240.0

# -- child scripts ---------------------------------------------------------------------------

# Opens the store, says it is ready, waits for the barrier, runs `main` of the
# given module and prints its JSON result.
DRIVER = textwrap.dedent(
    """
    import importlib, json, os, sys, time

    store, moddir, modname, ready, go = sys.argv[1:6]
    args = sys.argv[6:]
    sys.path.insert(0, moddir)
    import provstore

    ctx = provstore.open(store)
    mod = importlib.import_module(modname)
    open(ready, "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(go):  # the start barrier
        if time.monotonic() > deadline:
            sys.exit("the start barrier never opened")
        time.sleep(0.005)
    started = time.monotonic()
    result = mod.main(ctx, *args)
    print(json.dumps({"result": result, "seconds": time.monotonic() - started}), flush=True)
    """
)

WORKERS = 8
WRITES = 500
SHARED = 20  # shared names
OWN = 10  # names per worker scope

# Write j of worker i binds the unique int i * 1000 + j: odd j into the shared
# name shared_{(j // 2) % 20} of the root scope, even j into own_{(j // 2) % 10}
# of the worker's scope. Every worker walks the shared names in the same order,
# so all of them hammer the same name at about the same time.
WRITER = textwrap.dedent(
    f"""
    WRITES, SHARED, OWN = {WRITES}, {SHARED}, {OWN}


    def main(ctx, worker):
        i = int(worker)
        own = ctx.scope(worker=i)
        for j in range(WRITES):
            value = i * 1000 + j
            if j % 2:
                setattr(ctx, f"shared_{{(j // 2) % SHARED}}", value)
            else:
                with own:
                    setattr(ctx, f"own_{{(j // 2) % OWN}}", value)
        return j + 1
    """
)


def _planned_name(worker: int, j: int) -> tuple[str, str]:
    """(scope path, name) that write *j* of *worker* binds, as WRITER does it."""
    if j % 2:
        return "", f"shared_{(j // 2) % SHARED}"
    return f"worker={worker}", f"own_{(j // 2) % OWN}"


CALLERS = 16
KEYS = 100

# The log path comes from the environment, read inside the body: it is neither
# an argument nor a module constant, so it changes no key and no code version.
HERD = textwrap.dedent(
    f"""
    import hashlib, json, os, random, time

    import numpy as np
    import provstore

    KEYS = {KEYS}


    @provstore.track
    def crunch(i):
        fd = os.open(os.environ["HERD_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{{i}} {{os.getpid()}}\\n".encode())
        finally:
            os.close(fd)
        time.sleep(0.01)  # long enough for callers to find each other's leases
        return np.arange(i, i + 32, dtype=np.int64) ** 2


    def main(ctx, seed, out):
        order = list(range(KEYS))
        random.Random(int(seed)).shuffle(order)
        results = {{}}
        for i in order:
            results[i] = np.asarray(crunch(i)).tolist()
        with open(out, "w") as f:
            json.dump({{str(i): results[i] for i in range(KEYS)}}, f)
        return order[:5]
    """
)


def _expected_crunch(i: int) -> list[int]:
    return [(i + k) ** 2 for k in range(32)]


# -- harness ---------------------------------------------------------------------------------


class Herd:
    """Starts children behind a common start barrier and cleans up after them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.driver = tmp_path / "driver.py"
        self.driver.write_text(DRIVER)
        self.go = tmp_path / "go"
        self.log = tmp_path / "bodies.log"
        self.procs: list[subprocess.Popen[str]] = []
        self.barrier = 0.0  # when the last run_all opened its barrier

    def module(self, name: str, source: str) -> str:
        (self.tmp / f"{name}.py").write_text(source)
        return name

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PROVSTORE", "PROVSTORE_LEASE_SECONDS")}
        env["HERD_LOG"] = str(self.log)
        return env

    def run_all(self, store: Path, module: str, argvs: list[list[str]]) -> list[Any]:
        """Start one child per argument list, open the barrier, return their results."""
        readies = [self.tmp / f"ready{n}" for n in range(len(argvs))]
        for ready, argv in zip(readies, argvs):
            self.procs.append(subprocess.Popen(
                [PY, str(self.driver), str(store), str(self.tmp), module, str(ready),
                 str(self.go), *argv],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env()))
        procs = self.procs[-len(argvs):]
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in readies):
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                _, err = dead[0].communicate()
                pytest.fail(f"child {dead[0].pid} exited (rc={dead[0].returncode}) before "
                            f"the start barrier:\n{err}")
            if time.monotonic() > deadline:
                pytest.fail(f"only {sum(r.exists() for r in readies)} of {len(argvs)} "
                            "children were ready after 120 s")
            time.sleep(0.01)
        self.go.touch()
        self.barrier = time.monotonic()
        results = []
        failures = []
        for n, proc in enumerate(procs):
            rc, out, err = self._finish(proc)
            if rc != 0:
                failures.append(f"child {n} (pid {proc.pid}) failed with rc={rc}:\n{err}")
                continue
            assert "database is locked" not in err, err
            results.append(json.loads(out))
        if failures:
            pytest.fail(f"{len(failures)} of {len(procs)} children failed; the first:\n"
                        + failures[0], pytrace=False)
        return results

    def _finish(self, proc: subprocess.Popen[str]) -> tuple[int, str, str]:
        try:
            out, err = proc.communicate(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, err = proc.communicate()
            pytest.fail(f"child {proc.pid} did not finish within {CHILD_TIMEOUT:.0f} s\n"
                        f"stdout:\n{out}\nstderr:\n{err}")
        return proc.returncode, out, err

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                _kill(proc)
            proc.communicate()


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()


@pytest.fixture
def herd(tmp_path: Path) -> Iterator[Herd]:
    h = Herd(tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


def _timing(what: str, herd: Herd, results: list[Any], started: float) -> str:
    child = sorted(r["seconds"] for r in results)
    now = time.monotonic()
    return (f"{what}: {now - started:.1f} s wall ({herd.barrier - started:.1f} s to start "
            f"the children, {now - herd.barrier:.1f} s after the barrier; each child "
            f"{child[0]:.1f}-{child[-1]:.1f} s)")


def _verify_cli(store: Path) -> None:
    proc = subprocess.run([*PROVSTORE_CLI, "--store", str(store), "verify"],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PROVSTORE"})
    assert proc.returncode == 0, (
        f"provstore verify failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# -- 1. eight writers ------------------------------------------------------------------------


@pytest.mark.slow
def test_eight_writers_lose_and_double_no_version(
        herd: Herd, store_dir: Path, db_backend: str) -> None:
    provstore.open(store_dir)  # the schema exists before the children race to open it
    mod = herd.module("herd_writer", WRITER)
    started = time.monotonic()
    results = herd.run_all(store_dir, mod, [[str(i)] for i in range(WORKERS)])
    print(_timing(f"[{db_backend}] {WORKERS} x {WRITES} writes", herd, results, started))
    assert [r["result"] for r in results] == [WRITES] * WORKERS

    # What each (scope, name) should hold, in each writer's program order.
    planned: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i in range(WORKERS):
        for j in range(WRITES):
            planned[_planned_name(i, j)].append(i * 1000 + j)

    ctx = provstore.open(store_dir)
    store = ctx.store
    b, s = q.bindings, q.scopes

    # Raw rows: one per write, no more, no less.
    with store.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(b)).scalar_one()
        per_name = conn.execute(
            select(s.c.path, b.c.name, func.count(), func.count(b.c.version.distinct()),
                   func.min(b.c.version), func.max(b.c.version))
            .join(s, s.c.id == b.c.scope_id)
            .group_by(s.c.path, b.c.name)).all()
        paths = sorted(conn.execute(select(s.c.path)).scalars())
    assert total == WORKERS * WRITES, (
        f"{total} binding rows for {WORKERS * WRITES} writes "
        f"({'lost' if total < WORKERS * WRITES else 'extra'} rows)")
    assert paths == sorted(["", *(f"worker={i}" for i in range(WORKERS))]), paths
    wrong = {(p, n): tuple(got) for p, n, *got in per_name
             if tuple(got) != (len(planned[(p, n)]),) * 2 + (1, len(planned[(p, n)]))}
    assert set(planned) == {(p, n) for p, n, *_ in per_name}
    assert not wrong, (
        "(scope, name) -> (rows, distinct versions, min, max) where each should be "
        f"(n, n, 1, n): {wrong}")

    # Through the public API: every value exactly once, versions 1..n in order.
    problems: list[str] = []
    for (path, name), values in sorted(planned.items()):
        view = ctx.scope(path) if path else ctx
        history = view.history(name)
        assert history.scope == path, f"{name} of {path!r} resolved to {history.path}"
        numbers = [v.number for v in history.versions]
        if numbers != list(range(1, len(values) + 1)):
            problems.append(f"{history.path}: versions {numbers} are not 1..{len(values)}")
        stored = [store.load(v.artifact_id, mmap_mode=None) for v in history.versions
                  if v.artifact_id is not None]
        counts = Counter(stored)
        lost = sorted(set(values) - set(counts))
        doubled = sorted(v for v, c in counts.items() if c > 1)
        alien = sorted(set(counts) - set(values))
        if lost or doubled or alien or len(stored) != len(numbers):
            problems.append(f"{history.path}: lost {lost}, doubled {doubled}, "
                            f"never written {alien}, deletions {len(numbers) - len(stored)}")
            continue
        # One writer's binds of one name are sequential: their versions must rise.
        version_of = {value: v.number for value, v in zip(stored, history.versions)}
        for i in range(WORKERS):
            mine = [version_of[v] for v in values if v // 1000 == i]
            if mine != sorted(mine):
                problems.append(f"{history.path}: worker {i}'s writes got versions {mine} "
                                "out of its program order")
        if path:  # a worker's own names hold that worker's last write
            want = values[-1]
            if view[name] != want or stored[-1] != want:
                problems.append(f"{history.path}: holds {view[name]!r}, "
                                f"latest version {stored[-1]!r}, last written {want!r}")
        elif view[name] != stored[-1]:
            problems.append(f"{history.path}: reads {view[name]!r} but its latest version "
                            f"is {stored[-1]!r}")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])

    report = maintenance.verify(store)
    assert report.ok and not report.problems, str(report)
    _verify_cli(store_dir)


# -- 2. sixteen callers of one tracked function ----------------------------------------------


@pytest.mark.slow
def test_sixteen_callers_compute_each_key_once(
        herd: Herd, store_dir: Path, db_backend: str) -> None:
    provstore.open(store_dir)
    mod = herd.module("herd_crunch", HERD)
    outs = [herd.tmp / f"results{n}.json" for n in range(CALLERS)]
    started = time.monotonic()
    results = herd.run_all(store_dir, mod, [[str(n), str(out)] for n, out in enumerate(outs)])
    print(_timing(f"[{db_backend}] {CALLERS} callers x {KEYS} keys", herd, results, started))
    orders = [tuple(r["result"]) for r in results]
    assert len(set(orders)) == CALLERS, "the callers did not use different orders"

    lines = herd.log.read_text().splitlines() if herd.log.exists() else []
    executed = Counter(int(line.split()[0]) for line in lines)
    twice = {k: c for k, c in executed.items() if c > 1}
    missing = sorted(set(range(KEYS)) - set(executed))
    assert not twice and not missing and len(lines) == KEYS, (
        f"{len(lines)} body executions for {KEYS} keys; run more than once: {twice}; "
        f"never run: {missing}")
    pids = {int(line.split()[1]) for line in lines}
    print(f"[{db_backend}] bodies ran in {len(pids)} of {CALLERS} processes")

    expected = {str(i): _expected_crunch(i) for i in range(KEYS)}
    for n, out in enumerate(outs):
        got = json.loads(out.read_text())
        bad = sorted((k for k in expected if got.get(k) != expected[k]), key=int)
        assert not bad and set(got) == set(expected), (
            f"caller {n} got wrong results for keys {bad[:10]}"
            f"{' ...' if len(bad) > 10 else ''}; e.g. key {bad[0] if bad else None}: "
            f"{got.get(bad[0]) if bad else None}")

    ctx = provstore.open(store_dir)
    c = q.calls
    with ctx.store.engine.connect() as conn:
        statuses: dict[str, int] = dict(conn.execute(
            select(c.c.status, func.count()).group_by(c.c.status)).all())
        keys = conn.execute(select(func.count(c.c.key.distinct()))).scalar_one()
        leases = conn.execute(select(func.count()).select_from(q.leases)).scalar_one()
    assert statuses == {"done": KEYS}, statuses
    assert keys == KEYS
    assert leases == 0, f"{leases} leases left behind"
    report = maintenance.verify(ctx.store)
    assert report.ok and not report.problems, str(report)
