"""PostgreSQL faults with a real server: a restart and killed backends under load.

Four worker processes bind values and run tracked calls (shared keys, so
they contend for the same leases) while the test restarts the server
(``pg_ctl restart -m fast``) and then terminates every backend of the
database (``pg_terminate_backend``). A worker may see a provstore error
(and retries the operation), never a raw driver exception. Afterwards:
every acknowledged bind reads back its value, every key has exactly one
finished call, and every worker got that call's result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

import provstore
from pgserver import PostgresCluster, find_bindir
from provstore import locations
from provstore.errors import StoreError
from provstore.maintenance import gc, verify

WORKERS = 4
KEYS = 12
ROUNDS = 30

WORKER = textwrap.dedent(
    """
    import os, sys, time
    import provstore
    from provstore.errors import ProvstoreError

    store, log = sys.argv[1], sys.argv[5]
    worker, rounds, keys = map(int, sys.argv[2:5])
    ctx = provstore.open(store)

    @ctx.track
    def square(i):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{i}\\n".encode())
        os.close(fd)
        return i * i

    def attempt(label, op):
        for _ in range(600):
            try:
                result = op()
            except ProvstoreError as exc:
                print(f"error {label} {type(exc).__name__}: {exc}", flush=True)
                time.sleep(0.1)
                continue
            print(f"ack {label} {result}", flush=True)
            return
        sys.exit(3)

    for r in range(rounds):
        attempt(f"bind w{worker}_{r}", lambda r=r: ctx.__setitem__(f"w{worker}_{r}", r))
        attempt(f"call {r % keys}", lambda r=r: square(r % keys))
        time.sleep(0.05)
    print("done", flush=True)
    """
)


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A private server: restarting the session's would disturb other tests' pools."""
    if find_bindir() is None:
        pytest.fail("PostgreSQL's initdb/pg_ctl are needed for this test (see conftest)",
                    pytrace=False)
    server = PostgresCluster()
    try:
        yield server
    finally:
        server.stop()


def _acks(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.startswith("ack ")]


def _wait_for_acks(outs: list[Path], procs: list[subprocess.Popen[bytes]], at_least: int,
                   deadline: float) -> None:
    while time.monotonic() < deadline:
        if all(len(_acks(p)) >= at_least for p in outs):
            return
        if any(p.poll() not in (None, 0) for p in procs):
            break  # a worker died: its traceback says why, no need to wait
        time.sleep(0.05)
    # A traceback is longer than the few last acknowledgements.
    tails = "\n".join(f"--- {p.name} (exit {proc.poll()}):\n"
                      + "\n".join(p.read_text().splitlines()[-70:])
                      for p, proc in zip(outs, procs))
    raise AssertionError(f"workers did not reach {at_least} acknowledgements:\n{tails}")


def test_restart_and_killed_backends_lose_nothing(cluster: PostgresCluster,
                                                  tmp_path: Path) -> None:
    url = cluster.create_database("faults")
    store = tmp_path / "study"
    locations.close(provstore.open(store, db=url).store)
    log = tmp_path / "bodies.log"
    outs = [tmp_path / f"worker{w}.out" for w in range(WORKERS)]
    env = {**os.environ, "PROVSTORE_LEASE_SECONDS": "3"}
    procs = []
    for w, out in enumerate(outs):
        with open(out, "w") as f:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", WORKER, str(store), str(w), str(ROUNDS), str(KEYS),
                 str(log)], stdout=f, stderr=subprocess.STDOUT, env=env))
    deadline = time.monotonic() + 240
    try:
        _wait_for_acks(outs, procs, 4, deadline)
        # -l: the new server must not inherit (and hold open) pg_ctl's pipes.
        restarted = cluster._run("pg_ctl", "-D", str(cluster.data), "-l", str(cluster.log),
                                 "-m", "fast", "-w", "-t", "60", "restart")
        assert restarted.returncode == 0, restarted.stderr
        _wait_for_acks(outs, procs, 24, deadline)
        admin = create_engine(cluster.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            killed = conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = 'faults' AND pid <> pg_backend_pid()")).scalar()
        admin.dispose()
        assert killed, "no backend of the workers was running"
        codes = [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = [out.read_text() for out in outs]
    assert codes == [0] * WORKERS, "\n\n".join(o[-3000:] for o in outputs)
    errors = sum(o.count("\nerror ") + o.startswith("error ") for o in outputs)
    print(f"pg faults: {WORKERS} workers, {errors} provstore errors retried")

    ctx = provstore.open(store)
    try:
        for out in outs:
            for _, op, name, value in _acks(out):
                if op == "bind":  # w<worker>_<round> was bound to its round
                    assert ctx[name] == int(name.split("_")[1]), name
                else:  # every worker got the one committed result of the key
                    assert int(value) == int(name) ** 2
        with ctx.store.engine.connect() as conn:
            done = Counter(conn.execute(text(
                "SELECT key FROM calls WHERE status = 'done'")).scalars())
        assert sorted(done.values()) == [1] * KEYS  # exactly one finished call per key
        bodies = Counter(log.read_text().split())
        assert set(bodies) == {str(k) for k in range(KEYS)}
    finally:
        locations.close(ctx.store)


def test_a_stopped_server_gives_provstore_errors_then_work_resumes(
        cluster: PostgresCluster, tmp_path: Path) -> None:
    """Every kind of operation on a store whose server is down says so in provstore's words.

    A reader connection that was never opened in this thread, one the
    shutdown cut, a write and a new tracked call's lookup each raise
    :class:`StoreError`, never the driver's ``OperationalError``; once the
    server is back the same context works without being reopened.
    """
    ctx = provstore.open(tmp_path / "study", db=cluster.create_database("down"))
    try:
        @ctx.track
        def square(i: int) -> int:
            return i * i

        ctx["x"] = 1
        assert square(3) == 9
        cluster.pause()
        fresh_thread: list[BaseException] = []

        def read_in_a_new_thread() -> None:
            try:
                ctx["x"]
            except BaseException as exc:  # the test inspects it
                fresh_thread.append(exc)

        worker = threading.Thread(target=read_in_a_new_thread)
        worker.start()
        worker.join()
        assert len(fresh_thread) == 1 and isinstance(fresh_thread[0], StoreError), fresh_thread
        for op in (lambda: ctx["x"], lambda: ctx.__setitem__("y", 2), lambda: square(4),
                   lambda: ctx["x"], lambda: verify(ctx.store), lambda: gc(ctx.store)):
            with pytest.raises(StoreError, match="lost the connection"):
                op()
        assert square(3) == 9  # a result this process already loaded needs no server
        cluster.resume()
        assert ctx["x"] == 1 and square(3) == 9 and square(4) == 16
        ctx["y"] = 2
        assert ctx["y"] == 2
    finally:
        locations.close(ctx.store)
