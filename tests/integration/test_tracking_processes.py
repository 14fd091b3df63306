"""Tracked calls across real processes and threads: resume, exactly once, leases.

Every test runs children through ``subprocess`` against a real store in
``tmp_path``, on SQLite and on PostgreSQL (the ``store_dir`` fixture). A
tracked body appends one line ``name label pid`` to a log file opened with
``O_APPEND`` (so lines from many processes never interleave) before doing its
work; the log therefore counts body executions, which is what "computed
exactly once" is about. Each child is bounded in time; nothing here asserts
on speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import provstore
from provstore.api import database_url
from provstore.db.engine import is_sqlite
from sql import scalar, sql

PY = sys.executable

# -- child scripts ---------------------------------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import importlib, json, os, sys, time

    store, moddir, modname = sys.argv[1:4]
    sys.path.insert(0, moddir)
    import provstore

    ctx = provstore.open(store)
    mod = importlib.import_module(modname)
    ready = os.environ.get("CHILD_READY")
    if ready:
        open(ready, "w").close()
    go = os.environ.get("CHILD_GO")
    if go:  # a start barrier: every child has imported and opened before any computes
        deadline = time.monotonic() + 120
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                sys.exit("the start barrier never opened")
            time.sleep(0.002)
    print(json.dumps(mod.main(ctx), sort_keys=True), flush=True)
    """
)

# Helpers shared by every child module. The log paths come from the
# environment, read inside the bodies: they are neither arguments nor
# module constants, so they change no key and no code version.
COMMON = textwrap.dedent(
    """
    import hashlib, os, time
    import numpy as np
    import provstore


    def _label(*args):
        parts = []
        for a in args:
            if isinstance(a, np.ndarray):
                parts.append(hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:12])
            else:
                parts.append(repr(a).replace(" ", ""))
        return ",".join(parts)


    def _append(var, line):
        fd = os.open(os.environ[var], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\\n").encode())
        finally:
            os.close(fd)


    def _executed(name, seconds, *args):
        _append("PIPE_LOG", f"{name} {_label(*args)} {os.getpid()}")
        time.sleep(seconds)


    def _note(tf, *args):
        # Written by the caller before the call: label -> provstore key.
        _append("PIPE_MAP", f"{tf.__name__} {_label(*args)} {tf.key(*args)}")
    """
)

# 12 tracked calls: 2 preprocess, 6 features (2 subjects x 3 sigmas), 2
# summaries, a group table and a report; results bound in scopes.
PIPELINE = COMMON + textwrap.dedent(
    """

    @provstore.track
    def preprocess(subject):
        _executed("preprocess", 0.15, subject)
        return np.random.default_rng(int(subject)).standard_normal(2000)


    @provstore.track
    def features(x, sigma):
        _executed("features", 0.1, x, sigma)
        k = np.exp(-0.5 * (np.arange(-5, 6) / sigma) ** 2)
        return np.convolve(x, k / k.sum(), mode="same")


    @provstore.track
    def summarize(a, b, c):
        _executed("summarize", 0.05, a, b, c)
        return np.array([a.std(), b.std(), c.std()])


    @provstore.track
    def group(s1, s2):
        _executed("group", 0.05, s1, s2)
        return np.stack([s1, s2])


    @provstore.track
    def report(table):
        _executed("report", 0.05, table)
        return {"mean": float(table.mean()), "shape": list(table.shape)}


    def main(ctx):
        paths = []
        for subject in ("01", "02"):
            with ctx.scope(subject=subject):
                _note(preprocess, subject)
                ctx.pre = preprocess(subject)
                paths.append(ctx.path + "/pre")
                feats = []
                for sigma in (1.0, 2.0, 3.0):
                    with ctx.scope(sigma=sigma):
                        _note(features, ctx.pre, sigma)
                        ctx.feat = features(ctx.pre, sigma)
                        feats.append(ctx.feat)
                        paths.append(ctx.path + "/feat")
                _note(summarize, *feats)
                ctx.summary = summarize(*feats)
                paths.append(ctx.path + "/summary")
        s1, s2 = ctx.scope(subject="01").summary, ctx.scope(subject="02").summary
        _note(group, s1, s2)
        ctx.group = group(s1, s2)
        _note(report, ctx.group)
        ctx.report = report(ctx.group)
        paths += ["group", "report"]
        return {p: ctx.history(p).latest.digest for p in paths}
    """
)
PIPELINE_CALLS = 12

HERD = COMMON + textwrap.dedent(
    """

    @provstore.track
    def square(i):
        _executed("square", 0.02, i)
        return np.full(64, i * i, dtype=np.int64)


    def main(ctx):
        return [provstore.hashing.digest(np.asarray(square(i))) for i in range(30)]
    """
)

# One slow call. The body's behaviour is steered by the environment (read
# inside the body, so it is part of neither the key nor the code version):
# BODY_SLEEP seconds of work, WAIT_FOR a file to wait for, BODY_FAIL to raise,
# and WHO is the value returned.
LEASED = COMMON + textwrap.dedent(
    """

    @provstore.track
    def decide(x):
        _executed("decide", 0, x)
        time.sleep(float(os.environ.get("BODY_SLEEP", "0")))
        go = os.environ.get("WAIT_FOR")
        if go:
            while not os.path.exists(go):
                time.sleep(0.02)
        if os.environ.get("BODY_FAIL"):
            raise RuntimeError(f"body failed on purpose in {os.getpid()}")
        return os.environ["WHO"] * x


    def main(ctx):
        return decide(1)
    """
)

THREADS = COMMON + textwrap.dedent(
    """
    import threading


    class _Counter:
        def __init__(self):
            self.lock = threading.Lock()
            self.n = 0

        def bump(self):
            with self.lock:
                self.n += 1


    BODIES = _Counter()


    @provstore.track
    def heavy(n, scale):
        BODIES.bump()
        time.sleep(0.3)
        return np.arange(n, dtype=np.float64) * scale


    def main(ctx):
        barrier = threading.Barrier(8)
        results, errors = [None] * 8, []

        def worker(i):
            try:
                barrier.wait(timeout=60)
                results[i] = np.array(heavy(1000, 2.5))
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        equal = all(r is not None and np.array_equal(r, results[0]) for r in results)
        return {"bodies": BODIES.n, "equal": equal, "errors": errors,
                "alive": sum(t.is_alive() for t in threads),
                "digest": provstore.hashing.digest(results[0])}
    """
)


# -- harness ---------------------------------------------------------------------------------


class Harness:
    """Writes the child scripts, starts children and cleans up after them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.driver = tmp_path / "driver.py"
        self.driver.write_text(DRIVER)
        self.log = tmp_path / "bodies.log"
        self.map = tmp_path / "keys.map"
        self.procs: list[subprocess.Popen[str]] = []

    def module(self, name: str, source: str) -> str:
        (self.tmp / f"{name}.py").write_text(source)
        return name

    def env(self, **extra: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PROVSTORE", "PROVSTORE_LEASE_SECONDS")}
        env.update(PIPE_LOG=str(self.log), PIPE_MAP=str(self.map))
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start(self, store: Path, module: str, **env: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [PY, str(self.driver), str(store), str(self.tmp), module],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env(**env),
        )
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
        """Wait for *proc* (killing it after *timeout* seconds) and return rc, out, err."""
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _resume_and_kill(proc)
            out, err = proc.communicate()
            pytest.fail(f"child {proc.pid} did not finish within {timeout:.0f} s\n"
                        f"stdout:\n{out}\nstderr:\n{err}")
        return proc.returncode, out, err

    def run_ok(self, store: Path, module: str, timeout: float = 90, **env: Any) -> Any:
        """Run one child to completion; return what its ``main`` returned."""
        rc, out, err = self.finish(self.start(store, module, **env), timeout)
        assert rc == 0, f"child failed (rc={rc}):\n{err}"
        assert "database is locked" not in err
        return json.loads(out)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                _resume_and_kill(proc)
            proc.communicate()  # reaps it and closes its pipes (once more is harmless)

    def lines(self) -> list[tuple[str, str, int]]:
        """The body log: (function, label, pid) per execution, in order."""
        if not self.log.exists():
            return []
        rows = []
        for line in self.log.read_text().splitlines():
            name, label, pid = line.split(" ")
            rows.append((name, label, int(pid)))
        return rows

    def keys(self) -> dict[tuple[str, str], str]:
        """(function, label) -> provstore call key, as noted by the callers."""
        found: dict[tuple[str, str], str] = {}
        for line in self.map.read_text().splitlines():
            name, label, key = line.split(" ")
            assert found.setdefault((name, label), key) == key, "a call key changed"
        return found


def _resume_and_kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


def _sql(store: Path, statement: str,
         params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    return [tuple(row.values()) for row in sql(store, statement, params)]


def _done_keys(store: Path) -> set[str]:
    if not (store / "provstore.db").exists() and not (store / "provstore.url").exists():
        return set()  # no child has created the SQLite store yet
    return {k for (k,) in _sql(store, "SELECT key FROM calls WHERE status = 'done'")}


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def _load_all(store: Path) -> int:
    """Open the store as a user would and load every bound name; return how many."""
    ctx = provstore.open(store)
    loaded = 0
    for path in ["", *ctx.scopes(recursive=True)]:
        view = ctx.scope(path) if path else ctx
        for name in view.names(inherited=False):
            assert view[name] is not None
            loaded += 1
    return loaded


# -- 1. resume after SIGKILL -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_resume_after_sigkill_never_recomputes_a_committed_call(
        harness: Harness, tmp_path: Path, store_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = store_dir
    mod = harness.module(f"pipeline_resume_{seed}", PIPELINE)
    # A short lease: the rerun takes over the killed run's lease within ~2 s.
    lease = {"PROVSTORE_LEASE_SECONDS": 1.5}
    executed_in: list[list[tuple[str, str, int]]] = []
    done_before: list[set[str]] = []

    for kill in range(1 + seed % 2):  # one or two kills, then a run to completion
        done_before.append(_done_keys(store))
        seen = len(harness.lines())
        ready = tmp_path / f"ready{kill}"
        proc = harness.start(store, mod, CHILD_READY=ready, **lease)
        _wait_for(lambda r=ready, p=proc: r.exists() or p.poll() is not None, 60, "the child")
        # The pipeline takes ~1.3 s after "ready"; a run after a kill first
        # waits up to one lease for the dead run's lease to expire.
        time.sleep(rng.uniform(0.05, 1.2 if kill == 0 else 1.8))
        proc.send_signal(signal.SIGKILL)
        harness.finish(proc, 30)
        executed_in.append(harness.lines()[seen:])

    done_before.append(_done_keys(store))
    seen = len(harness.lines())
    first = harness.run_ok(store, mod, **lease)
    executed_in.append(harness.lines()[seen:])

    keys = harness.keys()
    assert len(keys) == PIPELINE_CALLS
    for run, (before, lines) in enumerate(zip(done_before, executed_in)):
        labels = [(name, label) for name, label, _ in lines]
        assert len(labels) == len(set(labels)), f"run {run} executed a body twice: {labels}"
        recomputed = [lab for lab in labels if keys[lab] in before]
        assert recomputed == [], f"run {run} recomputed committed calls {recomputed}"

    rows = _sql(store, "SELECT key, status, fence FROM calls")
    statuses = Counter(status for _, status, _ in rows)
    assert set(statuses) <= {"done", "expired"}, statuses
    done = Counter(key for key, status, _ in rows if status == "done")
    assert sorted(done) == sorted(keys.values())
    assert set(done.values()) == {1}
    executions = Counter(keys[(name, label)] for name, label, _ in harness.lines())
    claims = Counter(key for key, _, _ in rows)
    assert all(executions[k] <= claims[k] for k in claims), (executions, claims)
    assert _sql(store, "SELECT key FROM leases") == []

    # A third run is all hits: no body runs, same results.
    seen = len(harness.lines())
    assert harness.run_ok(store, mod, **lease) == first
    assert harness.lines()[seen:] == []
    assert _load_all(store) == PIPELINE_CALLS


# -- 2. exactly once with several processes --------------------------------------------------


def test_six_processes_compute_each_call_exactly_once(harness: Harness, tmp_path: Path,
                                                      store_dir: Path) -> None:
    store = store_dir
    mod = harness.module("pipeline_parallel", PIPELINE)
    provstore.open(store)  # create the schema once; the children then only open it
    go = tmp_path / "go"
    readies = [tmp_path / f"ready{i}" for i in range(6)]
    procs = [harness.start(store, mod, CHILD_READY=r, CHILD_GO=go) for r in readies]
    _wait_for(lambda: all(r.exists() for r in readies)
              or any(p.poll() is not None for p in procs), 120, "six children to start")
    go.touch()
    outputs = []
    for proc in procs:
        rc, out, err = harness.finish(proc, 120)
        assert rc == 0, err
        assert "database is locked" not in err
        outputs.append(json.loads(out))

    assert all(o == outputs[0] for o in outputs)
    assert len(outputs[0]) == PIPELINE_CALLS
    executed = Counter((name, label) for name, label, _ in harness.lines())
    assert len(executed) == PIPELINE_CALLS
    assert set(executed.values()) == {1}, executed
    rows = _sql(store, "SELECT status, COUNT(*) FROM calls GROUP BY status")
    assert rows == [("done", PIPELINE_CALLS)]


# -- 3. thundering herd ----------------------------------------------------------------------


def test_thundering_herd_runs_each_body_once(harness: Harness, tmp_path: Path,
                                             store_dir: Path) -> None:
    store = store_dir
    mod = harness.module("herd_thirty", HERD)
    provstore.open(store)
    go = tmp_path / "go"
    readies = [tmp_path / f"ready{i}" for i in range(8)]
    procs = [harness.start(store, mod, CHILD_READY=r, CHILD_GO=go) for r in readies]
    _wait_for(lambda: all(r.exists() for r in readies)
              or any(p.poll() is not None for p in procs), 120, "eight children to start")
    go.touch()
    outputs = []
    for proc in procs:
        rc, out, err = harness.finish(proc, 120)
        assert rc == 0, err
        assert "database is locked" not in err
        outputs.append(json.loads(out))

    assert all(o == outputs[0] for o in outputs)
    lines = harness.lines()
    assert len(lines) == 30
    assert Counter(label for _, label, _ in lines) == Counter(repr(i) for i in range(30))
    assert _sql(store, "SELECT status, COUNT(*) FROM calls GROUP BY status") == [("done", 30)]


# -- 4. a killed lease holder is taken over --------------------------------------------------


def test_killed_lease_holder_is_taken_over(harness: Harness, store_dir: Path) -> None:
    store = store_dir
    mod = harness.module("lease_takeover", LEASED)
    lease = 2.0
    a = harness.start(store, mod, PROVSTORE_LEASE_SECONDS=lease, BODY_SLEEP=30, WHO="x")
    _wait_for(lambda: len(harness.lines()) == 1 or a.poll() is not None, 60, "A to start")
    a.send_signal(signal.SIGKILL)
    rc, _, _ = harness.finish(a, 30)
    assert rc == -signal.SIGKILL

    # B waits for A's lease to expire, then takes it over; 15 s bounds startup
    # plus "within ~10 s of the expiry".
    b = harness.start(store, mod, PROVSTORE_LEASE_SECONDS=lease, BODY_SLEEP=0, WHO="x")
    rc, out, err = harness.finish(b, lease + 15)
    assert rc == 0, err
    assert json.loads(out) == "x"

    rows = _sql(store, "SELECT pid, status, fence, takeover_of, finished FROM calls ORDER BY id")
    assert len(rows) == 2
    (a_pid, a_status, a_fence, a_takeover, a_end), (b_pid, b_status, b_fence, b_takeover, _) = rows
    assert (a_pid, a_status, a_fence, a_takeover) == (a.pid, "expired", 1, None)
    assert a_end is not None
    assert (b_pid, b_status, b_fence) == (b.pid, "done", 2)
    assert b_takeover is not None
    assert _sql(store, "SELECT key FROM leases") == []
    assert [pid for _, _, pid in harness.lines()] == [a.pid, b.pid]


# -- 5. a stalled holder's commit is refused (fence) -----------------------------------------


def _stop_outside_a_write(proc: subprocess.Popen[str], store: Path) -> None:
    """SIGSTOP *proc* at an instant when it is inside no write transaction.

    A process frozen inside a write transaction (its lease renewal, say)
    would block every other writer until it is continued: SQLite's write
    lock, PostgreSQL's row locks; that is the database's nature, not the
    fencing under test.
    """
    for _ in range(200):
        os.kill(proc.pid, signal.SIGSTOP)
        _wait_for(lambda: _all_stopped(proc.pid), 10, "the child to stop")
        if _no_transaction_open(store):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    pytest.fail("the child always held the write lock")


def _no_transaction_open(store: Path) -> bool:
    """Whether no other connection holds SQLite's write lock or a PostgreSQL transaction."""
    if is_sqlite(database_url(store.absolute(), None, create=False)):
        # SQLite's write lock, probed with a short timeout.
        with contextlib.closing(sqlite3.connect(store / "provstore.db", timeout=0.2)) as conn:
            conn.isolation_level = None
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return False
            conn.execute("ROLLBACK")
            return True
    # The children and this process are the only clients of this test database.
    return scalar(store, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                  "current_database() AND pid <> pg_backend_pid() "
                  "AND xact_start IS NOT NULL") == 0


def _all_stopped(pid: int) -> bool:
    """Whether every thread of *pid* is stopped (a group stop reaches threads one by one)."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            if stat.read_text().rpartition(")")[2].split()[0] not in ("T", "t"):
                return False
    return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_stale_holder_commit_is_refused_and_returns_the_winner(
        harness: Harness, tmp_path: Path, store_dir: Path) -> None:
    store = store_dir
    mod = harness.module("stale_holder", LEASED)
    lease = 2.0
    go = tmp_path / "go"
    a = harness.start(store, mod, PROVSTORE_LEASE_SECONDS=lease, WAIT_FOR=go, WHO="A")
    _wait_for(lambda: len(harness.lines()) == 1 or a.poll() is not None, 60, "A to start")
    assert a.poll() is None
    _stop_outside_a_write(a, store)  # its lease-renewal thread stops too
    stopped = time.monotonic()

    b = harness.start(store, mod, PROVSTORE_LEASE_SECONDS=lease, WHO="B")
    rc, out, err = harness.finish(b, lease + 30)
    assert rc == 0, err
    assert json.loads(out) == "B"
    time.sleep(max(0.0, stopped + 2.5 * lease - time.monotonic()))

    go.touch()
    os.kill(a.pid, signal.SIGCONT)
    rc, out, err = harness.finish(a, 30)
    assert rc == 0, err
    assert json.loads(out) == "B"  # A's result was discarded; it returns the winner's

    rows = _sql(store, "SELECT id, pid, status, fence, takeover_of FROM calls ORDER BY id")
    assert [(pid, status, fence) for _, pid, status, fence, _ in rows] == [
        (a.pid, "orphaned", 1), (b.pid, "done", 2)]
    assert rows[1][4] is not None
    assert _sql(store, "SELECT key FROM leases") == []
    ctx = provstore.open(store)
    [(_, _, artifact_id)] = ctx.store.call_outputs(rows[1][0])
    assert ctx.store.load(artifact_id, mmap_mode=None) == "B"
    assert _sql(store, "SELECT COUNT(*) FROM call_outputs") == [(1,)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("winner_fate", ["fails", "is killed"])
def test_stale_holder_recovers_when_the_taker_never_commits(
        harness: Harness, tmp_path: Path, store_dir: Path, winner_fate: str) -> None:
    """A's lease was taken over, but the taker B never commits (it raises or dies).

    A, continued, must not wait for a result that will never come: the key is
    free again (B's lease was released, or expired), so A claims it and
    finishes, with its own value or a recomputed one.
    """
    store = store_dir
    mod = harness.module("stale_no_winner", LEASED)
    lease = 2.0
    go = tmp_path / "go"
    a = harness.start(store, mod, PROVSTORE_LEASE_SECONDS=lease, WAIT_FOR=go, WHO="A")
    _wait_for(lambda: len(harness.lines()) == 1 or a.poll() is not None, 60, "A to start")
    _stop_outside_a_write(a, store)

    if winner_fate == "fails":
        b = harness.start(store, mod, PROVSTORE_LEASE_SECONDS=lease, WHO="B", BODY_FAIL=1)
        rc, _, err = harness.finish(b, lease + 30)
        assert rc == 1
        assert "body failed on purpose" in err
    else:
        b = harness.start(store, mod, PROVSTORE_LEASE_SECONDS=lease, WHO="B", BODY_SLEEP=60)
        _wait_for(lambda: len(harness.lines()) == 2 or b.poll() is not None, lease + 30,
                  "B to take over")
        b.send_signal(signal.SIGKILL)
        harness.finish(b, 30)
    assert _sql(store, "SELECT fence FROM calls ORDER BY id") == [(1,), (2,)]

    go.touch()
    os.kill(a.pid, signal.SIGCONT)
    rc, out, err = harness.finish(a, lease + 13)
    assert rc == 0, err
    assert json.loads(out) == "A"
    done = _sql(store, "SELECT pid FROM calls WHERE status = 'done'")
    assert done == [(a.pid,)]
    assert _sql(store, "SELECT key FROM leases") == []


# -- 6. threads ------------------------------------------------------------------------------


def test_eight_threads_run_the_body_once(harness: Harness, store_dir: Path) -> None:
    store = store_dir
    result = harness.run_ok(store, harness.module("threads_eight", THREADS))
    assert result["errors"] == []
    assert result["alive"] == 0
    assert result["bodies"] == 1
    assert result["equal"] is True
    assert _sql(store, "SELECT status, COUNT(*) FROM calls GROUP BY status") == [("done", 1)]


# -- 7. exceptions ---------------------------------------------------------------------------


class _Bodies:
    """Counts body executions (an instance of a user class: only its class is code)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.n = 0

    def bump(self) -> None:
        with self.lock:
            self.n += 1


def test_a_failed_call_is_recorded_releases_its_lease_and_retries(tmp_path: Path,
                                                                   store_dir: Path) -> None:
    store = store_dir
    ctx = provstore.open(store)
    bodies = _Bodies()
    fail = tmp_path / "fail"
    fail.touch()

    @ctx.track
    def flaky(x: int) -> dict[str, int]:
        bodies.bump()
        if fail.exists():
            raise ValueError(f"boom: {x} is unlucky")
        return {"x": x, "y": 10 * x}

    with pytest.raises(ValueError, match="boom: 7 is unlucky"):
        flaky(7)
    assert _sql(store, "SELECT status, error FROM calls") == [
        ("failed", "ValueError: boom: 7 is unlucky")]
    assert _sql(store, "SELECT key FROM leases") == []

    with pytest.raises(ValueError, match="boom"):  # a failure is not memoized
        flaky(7)
    assert bodies.n == 2
    fail.unlink()
    assert flaky(7) == {"x": 7, "y": 70}
    assert flaky(7) == {"x": 7, "y": 70}  # now a hit
    assert bodies.n == 3
    assert _sql(store, "SELECT status FROM calls ORDER BY id") == [
        ("failed",), ("failed",), ("done",)]
    assert _sql(store, "SELECT key FROM leases") == []
