"""Run records: one per writing process, closed as finished or failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import provstore
from provstore.periodic import THREAD_NAME
from provstore.runs import STALE_AFTER, status_of, utcnow
from sql import sql, timestamp


def _runs(store_dir: Path) -> list[dict[str, Any]]:
    return sql(store_dir, "SELECT * FROM runs ORDER BY id")


def _run_script(store_dir: Path, body: str) -> subprocess.CompletedProcess[str]:
    code = f"import provstore, sys\nctx = provstore.open({str(store_dir)!r})\n{body}"
    return subprocess.run([sys.executable, "-c", code, "--flag"], capture_output=True, text=True)


def test_a_writing_process_records_one_finished_run(store_dir: Path) -> None:
    out = _run_script(store_dir, "ctx.a = 1\nctx.b = 2")
    assert out.returncode == 0, out.stderr
    (run,) = _runs(store_dir)
    assert run["status"] == "finished" and run["ended"] is not None
    assert run["pid"] != os.getpid()
    assert json.loads(run["argv"])[-1] == "--flag"
    assert run["python"] == sys.version.split()[0]
    assert "numpy" in json.loads(run["packages"])


def test_an_uncaught_exception_marks_the_run_failed(store_dir: Path) -> None:
    out = _run_script(store_dir, "ctx.a = 1\nraise SystemError('boom')")
    assert out.returncode != 0
    assert _runs(store_dir)[-1]["status"] == "failed"


def test_a_killed_run_reads_as_crashed_once_stale(store_dir: Path) -> None:
    code = (f"import provstore, os, signal\nctx = provstore.open({str(store_dir)!r})\n"
            "ctx.a = 1\nos.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", code])
    (run,) = _runs(store_dir)
    assert run["status"] == "running"
    heartbeat = timestamp(run["heartbeat"])
    assert status_of(run["status"], heartbeat) == "running"
    assert status_of(run["status"], heartbeat, now=utcnow() + STALE_AFTER * 2) == "crashed"
    assert signal.SIGKILL  # the process above really died without closing its run


def test_reading_never_opens_a_run(store_dir: Path) -> None:
    provstore.open(store_dir)
    out = _run_script(store_dir, "print('a' in ctx, ctx.names())")
    assert out.returncode == 0, out.stderr
    assert _runs(store_dir) == []


def test_a_live_run_keeps_its_heartbeat_fresh(store_dir: Path) -> None:
    from provstore.runs import RunRecorder

    ctx = provstore.open(store_dir)
    recorder = RunRecorder(lambda: ctx.store.engine, ctx.store.lite, heartbeat=0.05)
    run_id = recorder.run_id()
    first = _runs(store_dir)[-1]["heartbeat"]
    deadline = time.monotonic() + 10
    while _runs(store_dir)[-1]["heartbeat"] == first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert timestamp(_runs(store_dir)[-1]["heartbeat"]) > timestamp(first)
    assert _runs(store_dir)[-1]["id"] == run_id
    recorder._close()
    assert _runs(store_dir)[-1]["status"] == "finished"


def test_runs_record_the_git_commit_and_dirty_flag_of_the_script(store_dir: Path,
                                                                  tmp_path: Path) -> None:
    repo = tmp_path / "analysis"
    repo.mkdir()
    script = repo / "run.py"
    script.write_text(f"import provstore\nprovstore.open({str(store_dir)!r}).x = 1\n")
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "run.py"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "analysis"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    subprocess.run([sys.executable, str(script)], check=True, cwd=tmp_path)
    script.write_text(script.read_text() + "# edited\n")
    subprocess.run([sys.executable, str(script)], check=True, cwd=tmp_path)
    clean, dirty = _runs(store_dir)
    assert clean["git_commit"] == head and clean["git_dirty"] == 0
    assert dirty["git_commit"] == head and dirty["git_dirty"] == 1


def _double(x: int) -> int:
    return 2 * x


def test_many_open_stores_share_one_background_thread(tmp_path: Path) -> None:
    # A thread per store piled up to hundreds in one process (a service, a
    # test suite), and every extra thread makes a later fork() riskier.
    stores = [provstore.open(tmp_path / f"s{i}") for i in range(12)]
    for i, ctx in enumerate(stores):
        ctx.x = i  # the first write opens each store's run
    ctx = stores[0]
    assert ctx.track(_double)(21) == 42  # a tracked call: the same thread renews its lease
    names = [t.name for t in threading.enumerate() if t.name.startswith("provstore")]
    assert names == [THREAD_NAME]
    for i in range(12):
        assert _runs(tmp_path / f"s{i}")[-1]["status"] == "running"


def test_a_forked_child_counts_even_if_the_parent_was_counting(store_dir: Path) -> None:
    # The heartbeat thread reads a run's counts under its lock; a fork at that
    # moment must not leave the child waiting on a lock nobody will release.
    ctx = provstore.open(store_dir)
    ctx.x = 1
    recorder = ctx.store.runs
    with recorder._lock:  # what the heartbeat holds while it reads the counts
        pid = os.fork()
        if pid == 0:  # the child: count, then leave without running atexit
            try:
                recorder.count_miss()
                os._exit(0)
            finally:
                os._exit(1)
    for _ in range(10 * 20):  # up to 10 s
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child hung on the lock the parent held at fork()")
    assert os.waitstatus_to_exitcode(status) == 0
