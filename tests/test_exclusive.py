"""``provstore.open(..., exclusive=True)``: one process computes a store's calls alone.

A miss then takes no compute lease (no claim transaction, no lease row);
a lock file keeps every other process from computing calls of the store
meanwhile, while reading, hits and binding stay open to them. Real
processes throughout: the lock is the kernel's.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import provstore
from provstore.errors import StoreError
from sql import sql

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter; return what it printed."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


@contextlib.contextmanager
def computing_elsewhere(store: Path) -> Iterator[None]:
    """Another process that has computed a call of *store* (with leases) and keeps it open."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, provstore
        provstore.open({str(store)!r}).track(lambda v: v)(1)
        print("ready", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield
    finally:
        holder.communicate("\n", timeout=60)


def leases_and_running(store: Path) -> tuple[int, int]:
    """How many lease rows and running call rows the store's database holds."""
    leases = sql(store, "SELECT count(*) AS n FROM leases")[0]["n"]
    running = sql(store, "SELECT count(*) AS n FROM calls WHERE status = 'running'")[0]["n"]
    return leases, running


ADDER = """
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from sql import sql


def add(a, b):
    store = Path(__file__).parent / "study"
    leases = sql(store, "SELECT count(*) AS n FROM leases")[0]["n"]
    running = sql(store, "SELECT count(*) AS n FROM calls WHERE status = 'running'")[0]["n"]
    print("computed", leases, running, flush=True)  # seen from another connection, mid-compute
    return a + b
"""


def test_a_miss_computes_without_a_lease_and_commits_a_whole_call(tmp_path: Path) -> None:
    store = tmp_path / "study"
    (tmp_path / "adder.py").write_text(ADDER.replace(
        'Path(__file__).parent.parent / "tests"', repr(str(Path(__file__).parent))))
    script = f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import provstore, adder
        ctx = provstore.open({str(store)!r}, exclusive=EXCLUSIVE)
        print(ctx.track(adder.add)(2, 3))
    """
    first = run_python(script.replace("EXCLUSIVE", "True"))
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["computed", "0", "0", "5"]  # no lease, no running row
    [call] = sql(store, "SELECT id, status, duration, output_kind, run_id, started, finished "
                        "FROM calls")
    assert call["status"] == "done" and call["output_kind"] == "single"
    assert call["duration"] is not None and call["run_id"] is not None
    assert call["started"] <= call["finished"]
    inputs = sql(store, "SELECT name, summary FROM call_inputs WHERE call_id = :c ORDER BY name",
                 {"c": call["id"]})
    assert [(i["name"], i["summary"]) for i in inputs] == [("a", "2"), ("b", "3")]
    assert [c.status for c in provstore.open(store).calls()] == ["done"]
    again = run_python(script.replace("EXCLUSIVE", "False"))  # a hit, in another process
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["5"]


def test_other_processes_read_and_bind_but_cannot_compute(tmp_path: Path) -> None:
    store = tmp_path / "study"
    ctx = provstore.open(store, exclusive=True)
    ctx.x = 41
    other = f"""
        import provstore
        ctx = provstore.open({str(store)!r})
        print(ctx.x)
        ctx.y = 1
        for _ in range(2):  # refused again: a refusal leaves no lock behind to pass for one
            try:
                ctx.track(lambda v: v + 1)(1)
            except provstore.StoreError as exc:
                print("refused:", exc)
            else:
                print("computed")
    """
    done = run_python(other)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "41"
    assert lines[1].startswith("refused:") and lines[2].startswith("refused:")
    assert f"exclusive=True by process {os.getpid()}" in lines[1]
    assert str(store) in lines[1]
    assert ctx.y == 1
    # Closed here, the store is free for others to compute; the next miss
    # here is then refused while they hold it (shown by the next test).
    ctx.store.close()
    done = run_python(other)
    assert done.stdout.splitlines()[1] == "computed"


def test_exclusive_is_refused_while_another_process_computes(tmp_path: Path) -> None:
    store = tmp_path / "study"
    provstore.open(store).x = 0  # created by this process, which computes nothing
    with computing_elsewhere(store):
        with pytest.raises(StoreError, match="another process computes its tracked calls"):
            provstore.open(store, exclusive=True)
        assert provstore.open(store).x == 0  # the failed attempt left the store usable
    ctx = provstore.open(store, exclusive=True)  # free once it exited
    assert ctx.track(lambda v: v * 2)(4) == 8


def test_threads_compute_a_key_once(tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "study", exclusive=True)
    computed: list[int] = []

    @ctx.track
    def slow(x: int) -> int:
        computed.append(x)
        time.sleep(0.3)
        return x * 10

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(slow(7))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert computed == [7]
    assert results == [70] * 6


def test_tasks_of_one_loop_compute_a_key_once(tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "study", exclusive=True)
    computed: list[int] = []

    @ctx.track
    async def slow(x: int) -> int:
        computed.append(x)
        await asyncio.sleep(0.2)  # the other task must not block the loop meanwhile
        return x + 1

    async def both() -> list[int]:
        return list(await asyncio.gather(slow(1), slow(1)))

    assert asyncio.run(both()) == [2, 2]
    assert computed == [1]


def test_a_failed_call_is_recorded_and_computed_again(tmp_path: Path) -> None:
    store = tmp_path / "study"
    ctx = provstore.open(store, exclusive=True)
    attempts: list[int] = []

    @ctx.track
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise ValueError("first attempt fails")
        return x

    with pytest.raises(ValueError, match="first attempt"):
        flaky(3)
    [failed] = sql(store, "SELECT status, error FROM calls")
    assert failed["status"] == "failed" and "first attempt fails" in failed["error"]
    assert flaky(3) == 3
    assert attempts == [3, 3]
    assert sorted(c["status"] for c in sql(store, "SELECT status FROM calls")) == [
        "done", "failed"]


def test_a_killed_exclusive_process_leaves_nothing_behind(tmp_path: Path) -> None:
    store = tmp_path / "study"
    victim = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, provstore
        ctx = provstore.open({str(store)!r}, exclusive=True)
        ctx.track(lambda v: v)(0)
        def stuck(v):
            print("computing", flush=True)
            time.sleep(600)
        ctx.track(stuck)(1)
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert victim.stdout is not None and victim.stdout.readline().strip() == "computing"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert leases_and_running(store) == (0, 0)  # nothing to expire or take over
    ctx = provstore.open(store, exclusive=True)  # the kernel dropped its lock
    assert ctx.track(lambda v: v + 1)(1) == 2
    done = subprocess.run([sys.executable, "-m", "provstore", "--store", str(store), "verify"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _child_computes(store: str, queue: multiprocessing.Queue[object]) -> None:
    ctx = provstore.open(store)

    def seen(v: int) -> tuple[int, int]:
        return leases_and_running(Path(store))

    queue.put(ctx.track(seen)(1))


def test_a_fork_ends_exclusivity(tmp_path: Path) -> None:
    store = tmp_path / "study"
    ctx = provstore.open(store, exclusive=True)

    def during(v: int) -> tuple[int, int]:
        return leases_and_running(store)

    assert ctx.track(during)(0) == (0, 0)  # alone: no lease
    queue: multiprocessing.Queue[object] = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_child_computes,
                                                        args=(str(store), queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=10) == (1, 1)  # the child computed, with a lease
    assert ctx.track(during)(2) == (1, 1)  # and so does the parent from now on


def test_exclusive_needs_a_writable_sqlite_store(tmp_path: Path, store_dir: Path,
                                                 db_backend: str) -> None:
    provstore.open(store_dir).x = 1
    with pytest.raises(StoreError, match="exclusive=True: it was opened read-only"):
        provstore.open(store_dir, readonly=True, exclusive=True)
    if db_backend == "postgresql":
        with pytest.raises(StoreError, match="server database"):
            provstore.open(store_dir, exclusive=True)
    else:
        assert provstore.open(store_dir, exclusive=True).x == 1


def test_a_refused_exclusive_open_keeps_computing_with_leases(tmp_path: Path) -> None:
    store = tmp_path / "study"
    ctx = provstore.open(store)
    assert ctx.track(lambda v: v + 1)(1) == 2  # this process computes with leases
    with computing_elsewhere(store):
        with pytest.raises(StoreError, match="another process computes"):
            provstore.open(store, exclusive=True)
        # Still a leased computer: its share of the lock was taken back.
        assert ctx.track(lambda v: v * 3)(5) == 15
        assert sql(store, "SELECT count(*) AS n FROM calls WHERE fence > 0")[0]["n"] >= 2
    # Once alone, the same process may become exclusive.
    assert provstore.open(store, exclusive=True).track(lambda v: v - 1)(5) == 4
    assert sql(store, "SELECT fence FROM calls ORDER BY id DESC LIMIT 1")[0]["fence"] == 0


def test_a_closed_exclusive_store_is_exclusive_again_on_its_next_miss(tmp_path: Path) -> None:
    store = tmp_path / "study"
    ctx = provstore.open(store, exclusive=True)
    ctx.store.close()
    assert ctx.track(lambda v: v + 10)(1) == 11  # takes the lock again
    done = run_python(f"""
        import provstore
        try:
            provstore.open({str(store)!r}).track(lambda v: v)(2)
        except provstore.StoreError:
            print("refused")
    """)
    assert done.stdout.strip() == "refused", done.stderr
