"""Seeing the calls, hits and misses per run, read-only consumers (issue 13 §2).

Runs on SQLite and PostgreSQL; processes that exit are real subprocesses,
so what they write at exit is what a script leaves behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import event

import provstore
from provstore import maintenance as m
from provstore import runs as runs_module
from provstore.cli import cli
from provstore.errors import NotCachedError, StoreError
from sql import sql


def run_cli(store: Path, *args: str) -> Result:
    # Wide enough that rich folds no cell of the tables.
    return CliRunner().invoke(cli, ["--store", str(store), *args], catch_exceptions=False,
                              env={"COLUMNS": "300"})


# ------------------------------------------------------------------- calls
def test_calls_lists_function_scope_status_duration_run_and_errors(
        ctx: provstore.Context, store_dir: Path) -> None:
    running: list[list[m.CallSummary]] = []

    @ctx.track
    def square(x: int) -> int:
        if x < 0:
            raise ValueError(f"negative input {x}")
        running.append(ctx.calls(status="running"))
        return x * x

    @ctx.track
    def other(x: int) -> int:
        return x

    with ctx.scope(subject="01"):
        ctx.sq = square(3)
    other(1)
    with pytest.raises(ValueError, match="negative"):
        square(-2)

    found = ctx.calls()
    assert [(c.function.rsplit(".", 1)[-1], c.status) for c in found] == [
        ("square", "failed"), ("other", "done"), ("square", "done")]
    failed, _, done = found
    assert "ValueError: negative input -2" in (failed.error or "")
    assert done.scope == "subject=01" and found[1].scope is None
    assert done.duration is not None and done.duration >= 0
    assert done.run_id == m.list_runs(ctx.store)[0].id and done.params == {"x": 3}
    [[live]] = running  # while it ran: the lease's owner
    assert live.status == "running"
    assert (live.lease_host, live.lease_pid) == (socket.gethostname(), os.getpid())

    assert [c.id for c in ctx.calls(square)] == [failed.id, done.id]
    assert [c.id for c in ctx.calls("square", status="done")] == [done.id]
    assert [c.id for c in ctx.calls(done.function)] == [failed.id, done.id]
    assert ctx.calls("quare") == [] and len(ctx.calls(limit=1)) == 1
    assert ctx.calls(run=done.run_id + 1000) == []
    with pytest.raises(ValueError, match="status"):
        ctx.calls(status="finished")

    table = run_cli(store_dir, "calls")
    assert table.exit_code == 0
    assert "negative input -2" in table.output and "subject=01" in table.output
    data = json.loads(run_cli(store_dir, "calls", "--status", "failed", "--json").output)
    assert [c["id"] for c in data] == [failed.id] and "ValueError" in data[0]["error"]
    data = json.loads(run_cli(store_dir, "calls", "-f", "other", "--json").output)
    assert [c["function"].rsplit(".", 1)[-1] for c in data] == ["other"]
    assert run_cli(store_dir, "calls", "--status", "nope").exit_code == 2


# ------------------------------------------------------------------- runs
SCRIPT = textwrap.dedent(
    """
    import sys, time, provstore
    ctx = provstore.open(sys.argv[1])

    @provstore.track
    def slow(x):
        time.sleep(0.05)
        return x + 1

    for x in range(int(sys.argv[2])):
        slow(x)
    """
)


def _script(store_dir: Path, tmp_path: Path, n: int) -> None:
    path = tmp_path / "pipeline.py"
    path.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(path), str(store_dir), str(n)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_runs_count_hits_misses_and_the_time_hits_saved(store_dir: Path,
                                                        tmp_path: Path) -> None:
    _script(store_dir, tmp_path, 3)  # computes three calls
    _script(store_dir, tmp_path, 4)  # finds them, computes a fourth
    _script(store_dir, tmp_path, 2)  # only finds: still one run, with its counts
    runs = sql(store_dir, "SELECT id, hits, misses, saved_seconds FROM runs ORDER BY id")
    durations = [r["duration"] for r in sql(store_dir,
                                            "SELECT duration FROM calls ORDER BY id")]
    assert [(r["hits"], r["misses"]) for r in runs] == [(0, 3), (3, 1), (2, 0)]
    assert runs[0]["saved_seconds"] == 0
    assert runs[1]["saved_seconds"] == pytest.approx(sum(durations[:3]))
    assert runs[2]["saved_seconds"] == pytest.approx(sum(durations[:2]))
    listed = json.loads(run_cli(store_dir, "runs", "--json").output)
    assert [(r["hits"], r["misses"]) for r in listed] == [(2, 0), (3, 1), (0, 3)]
    assert "3/1" in run_cli(store_dir, "runs").output


def test_hits_are_recorded_in_one_batched_write(ctx: provstore.Context, store_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    @ctx.track
    def f(x: int) -> Any:
        return np.full(10, x)

    for x in range(3):
        f(x)
    ctx.store.flush_hits()
    monkeypatch.setattr(runs_module, "HIT_FLUSH_SECONDS", 3600.0)
    statements: list[str] = []

    def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def batches() -> int:
        """Write transactions that set calls' reuse times."""
        count, inside = 0, False
        for statement in statements:
            head = statement.lstrip().upper()
            if head.startswith("UPDATE CALLS") and not inside:
                count, inside = count + 1, True
            elif head.startswith(("BEGIN", "COMMIT")):
                inside = False
        return count

    # On SQLite the batch is written without SQLAlchemy (provstore.db.lite).
    lite = ctx.store.lite
    if lite is not None:
        lite.connection().set_trace_callback(statements.append)
    else:
        event.listen(ctx.store.engine, "before_cursor_execute", spy)
    try:
        for _ in range(50):
            for x in range(3):
                f(x)
        assert batches() == 0  # no write per hit
        assert {r["last_hit"] for r in sql(store_dir, "SELECT last_hit FROM calls")} == {None}
        ctx.store.flush_hits()
        assert batches() == 1
    finally:
        if lite is not None:
            lite.connection().set_trace_callback(None)
        else:
            event.remove(ctx.store.engine, "before_cursor_execute", spy)
    assert None not in {r["last_hit"] for r in sql(store_dir, "SELECT last_hit FROM calls")}
    monkeypatch.setattr(runs_module, "HIT_FLUSH_SECONDS", 0.0)
    sql(store_dir, "UPDATE calls SET last_hit = NULL", write=True)
    f(1)  # the interval has passed: this hit writes the batch
    assert sum(r["last_hit"] is not None for r in sql(store_dir, "SELECT last_hit FROM calls")) \
        == 1


def test_a_process_that_exits_writes_its_hits(store_dir: Path, tmp_path: Path) -> None:
    _script(store_dir, tmp_path, 2)
    assert {r["last_hit"] for r in sql(store_dir, "SELECT last_hit FROM calls")} == {None}
    _script(store_dir, tmp_path, 1)
    hit = [r["last_hit"] for r in sql(store_dir, "SELECT last_hit FROM calls ORDER BY id")]
    assert hit[0] is not None and hit[1] is None


# --------------------------------------------------------------- read-only
def test_a_readonly_consumer_loads_hits_and_never_computes(ctx: provstore.Context,
                                                           store_dir: Path) -> None:
    log: list[int] = []

    @provstore.track
    def double(x: int) -> Any:
        log.append(x)
        return np.full(5, 2 * x)

    with ctx:
        ctx.y = double(1)
    runs_before = sql(store_dir, "SELECT * FROM runs")
    files_before = sorted(p.name for p in (store_dir / "objects").rglob("*"))

    reader = provstore.open(store_dir, readonly=True)
    assert reader.store is not ctx.store and reader.store.readonly
    with reader:
        np.testing.assert_array_equal(double(1), np.full(5, 2))  # a hit loads
        with pytest.raises(NotCachedError, match=r"double.*readonly=True") as caught:
            double(2)
    assert "is not in the store" in str(caught.value)
    assert log == [1]
    np.testing.assert_array_equal(reader.y, np.full(5, 2))
    with pytest.raises(StoreError, match="readonly=True"):
        reader.z = np.arange(3)
    with pytest.raises(StoreError, match="readonly=True"):
        del reader.y
    with pytest.raises(StoreError, match="readonly=True"):
        reader.pin("y")
    with pytest.raises(StoreError, match="readonly=True"):
        m.gc(reader.store, dry_run=False)
    assert m.gc(reader.store).dry_run  # looking is allowed
    reader.store.flush_hits()
    reader.store.close()
    assert sorted(p.name for p in (store_dir / "objects").rglob("*")) == files_before
    assert sql(store_dir, "SELECT * FROM runs") == runs_before
    assert {r["last_hit"] for r in sql(store_dir, "SELECT last_hit FROM calls")} == {None}
    ctx.z = 1  # the writer's own Store is unaffected
    assert ctx.z == 1


def test_readonly_survives_pickling_to_workers(ctx: provstore.Context) -> None:
    import pickle

    ctx.a = 1
    reader = provstore.open(ctx.store.root, readonly=True)
    clone = pickle.loads(pickle.dumps(reader.scope("sub")))
    assert clone.store.readonly and clone.a == 1
    with pytest.raises(StoreError, match="readonly"):
        clone.b = 2
