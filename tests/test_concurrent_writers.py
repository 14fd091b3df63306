"""Many writer processes at once: what PostgreSQL's READ COMMITTED locks must keep.

PostgreSQL runs write transactions at ``READ COMMITTED`` with advisory locks
(``provstore.db.engine.lock_for_write``) instead of ``SERIALIZABLE`` reruns.
Each test here breaks if one of those locks is removed: the name's lock for
binds, the call key's for claims and commits, gc's for its plan. On SQLite
the same tests check ``BEGIN IMMEDIATE``. Workers are real processes
started together behind a barrier file, on the test's real store.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import provstore
from provstore import computing
from provstore import context as context_module
from provstore import maintenance as m
from provstore.records import Prepared

PROCS = 6

PRELUDE = textwrap.dedent("""\
    import os, sys, time
    import numpy as np
    import provstore
    from provstore.db import engine

    where, rank, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ctx = provstore.open(where)
    ctx[f"warm{rank}"] = rank             # this process's run row, before the race
    open(f"{go}.{rank}", "w").close()     # ready
    while not os.path.exists(go):         # every worker starts at once
        time.sleep(0.005)
""")


def start(script: str, store_dir: Path, tmp_path: Path, procs: int = PROCS,
          ) -> list[subprocess.Popen[str]]:
    """Start *procs* workers running PRELUDE + *script*, released together."""
    path = tmp_path / "worker.py"
    path.write_text(PRELUDE + textwrap.dedent(script))
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, str(path), str(store_dir), str(rank), str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for rank in range(procs)]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.{rank}").exists() for rank in range(procs)):
        assert all(w.poll() is None for w in workers), finish(workers)
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.01)
    go.touch()
    return workers


def finish(workers: list[subprocess.Popen[str]]) -> list[str]:
    """Wait for *workers*; return their outputs, failing with their errors."""
    done = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0] * len(workers), [e for _, e in done]
    return [out for out, _ in done]


def test_processes_binding_one_name_get_dense_versions_and_lose_nothing(
        store_dir: Path, tmp_path: Path) -> None:
    binds = 40
    workers = start(f"""
        for i in range({binds}):
            ctx.shared = rank * 1000 + i
        print(engine.reruns())
    """, store_dir, tmp_path)
    reruns = [int(out) for out in finish(workers)]
    ctx = provstore.open(store_dir)
    versions = ctx.history("shared").versions
    assert [v.number for v in versions] == list(range(1, PROCS * binds + 1))
    values = [ctx.get("shared", version=v.number) for v in versions]
    assert sorted(values) == sorted(r * 1000 + i for r in range(PROCS) for i in range(binds))
    for r in range(PROCS):  # each process's binds in its own order
        mine = [v for v in values if v // 1000 == r]
        assert mine == sorted(mine)
    assert ctx.shared == values[-1]
    # Binds of one name take turns under the name's lock: no transaction is
    # aborted and run again (SERIALIZABLE reran 137-304 of 800 here).
    assert sum(reruns) == 0


CLAIMER = """
    log = sys.argv[3] + ".log"

    @ctx.track
    def body(k):
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, f"{k} {os.getpid()}\\n".encode())
        finally:
            os.close(fd)
        return k * k

    for k in KEYS:
        assert body(k) == k * k
    print(engine.reruns())
"""


def test_processes_claiming_the_same_calls_run_each_body_once(
        store_dir: Path, tmp_path: Path) -> None:
    keys = 40
    # One process first records the function's code version, which every
    # commit below then finds (the first commits would race to insert it).
    (tmp_path / "warm").mkdir()
    finish(start(CLAIMER.replace("KEYS", "[-1]"), store_dir, tmp_path / "warm", procs=1))
    workers = start(CLAIMER.replace("KEYS", f"range({keys})"), store_dir, tmp_path)
    reruns = [int(out) for out in finish(workers)]
    runs = (tmp_path / "go.log").read_text().splitlines()
    counted = {k: sum(line.split()[0] == str(k) for line in runs) for k in range(keys)}
    assert counted == {k: 1 for k in range(keys)}
    # Every claim and commit of a key takes turns under its lock.
    assert sum(reruns) == 0


GC_WRITER = """
    # Values cycle through a few contents, so an artifact gc may collect
    # (an old version's) is bound again while gc runs.
    for i in range(60):
        ctx[f"cycle{rank}"] = np.full(1000, i % 3, dtype=np.int64)
        if i % 20 == 5:   # gc keeps every version of a pinned name
            ctx.pin(f"cycle{rank}")
        if i % 20 == 15:
            ctx.unpin(f"cycle{rank}")
    print(engine.reruns())
"""


def test_gc_alongside_writer_processes_keeps_everything_reachable(
        ctx: provstore.Context, store_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    workers = start(GC_WRITER, store_dir, tmp_path / "w", procs=4)
    sweeps = 0
    while any(w.poll() is None for w in workers) or sweeps == 0:
        m.gc(ctx.store, dry_run=False, keep_versions=1)
        sweeps += 1
    finish(workers)
    assert sweeps > 1
    assert m.verify(ctx.store).ok
    for rank in range(4):
        np.testing.assert_array_equal(ctx[f"cycle{rank}"], np.full(1000, 59 % 3))


def _losing_the_copy_twice(ctx: provstore.Context, same: np.ndarray,
                           real_prepare: Callable[..., Prepared],
                           collections: list[m.GcReport]) -> Callable[..., Prepared]:
    """``prepare``, after which gc deletes the stored copy it linked to (twice).

    Before the second attempt another writer stores the same content again
    (and moves on), so the retry links to a fresh copy that gc deletes too.
    """
    inside: list[bool] = []

    def prepare_then_lose_the_copy(*args: Any, **kwargs: Any) -> Prepared:
        if inside:  # the other writer's own binds below
            return real_prepare(*args, **kwargs)
        inside.append(True)
        try:
            if collections:  # another writer stores the same content again
                ctx["other"] = same.copy()
                ctx["other"] = np.ones(1000)
            prepared = real_prepare(*args, **kwargs)
            if len(collections) < 2 and prepared.existing_id is not None:
                collections.append(m.gc(ctx.store, dry_run=False, keep_versions=1))
            return prepared
        finally:
            inside.clear()

    return prepare_then_lose_the_copy


def test_a_bind_whose_stored_copy_gc_deletes_twice_in_a_row_is_stored(
        ctx: provstore.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bind retries until its value is stored, however often gc wins the race.

    CI's gc-alongside-writers test once had a worker die with the internal
    ``ArtifactCollectedError``: a bind links to an existing stored copy, gc
    deletes that copy before the bind commits, the value is prepared again,
    another writer stores the same content and gc deletes it once more. Here
    the same interleaving is made with real binds and a real gc, between
    ``prepare`` and the bind's transaction.
    """
    same = np.arange(1000, dtype=np.int64)
    ctx["a"] = same.copy()
    ctx["a"] = np.zeros(1000)  # the first content is now an old version only
    collections: list[m.GcReport] = []
    monkeypatch.setattr(context_module, "prepare", _losing_the_copy_twice(
        ctx, same, context_module.prepare, collections))
    ctx["x"] = same.copy()
    assert len(collections) == 2  # gc deleted the linked copy twice
    np.testing.assert_array_equal(ctx["x"], same)
    assert m.verify(ctx.store).ok


def test_a_call_whose_output_copy_gc_deletes_twice_in_a_row_is_committed(
        ctx: provstore.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race for a tracked call's output: its commit retries until stored."""
    same = np.arange(1000, dtype=np.int64)
    ctx["a"] = same.copy()
    ctx["a"] = np.zeros(1000)
    collections: list[m.GcReport] = []
    monkeypatch.setattr(computing, "prepare", _losing_the_copy_twice(
        ctx, same, computing.prepare, collections))

    @ctx.track
    def make(n: int) -> np.ndarray:
        return np.arange(n, dtype=np.int64)

    np.testing.assert_array_equal(make(1000), same)
    assert len(collections) == 2
    np.testing.assert_array_equal(make(1000), same)  # a hit now
    assert m.verify(ctx.store).ok
