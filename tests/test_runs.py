"""Run records: one per writing process, closed as finished or failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import provstore
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
    import time

    from provstore.runs import RunRecorder

    ctx = provstore.open(store_dir)
    recorder = RunRecorder(ctx.store.engine, heartbeat=0.05)
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
