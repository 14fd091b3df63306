"""ctx.map and tracked functions on a real ``dask.distributed`` cluster.

One ``LocalCluster`` of two single-threaded worker processes serves the whole
module (starting it costs seconds). Workers live across tests, so after each
test they close the stores it opened: every test's store is new to them.

Tracked bodies append one line ``"<item> <pid>"`` per execution to a log file
opened with ``O_APPEND``; the log's path is an ignored parameter, so it
changes no key. Workers import this module by name to find them.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import provstore
from provstore import locations
from provstore.context import active_context
from provstore.leases import lease_seconds
from provstore.mapping import WorkerTraceback
from sql import sql, timestamp
from tracked_samples import bodies, fragile, mark, pids, square

distributed = pytest.importorskip("dask.distributed")


@provstore.track(ignore=("log",))
def stuck_once(x: int, log: str) -> int:
    mark(log, x)
    if len(Path(log).read_text().splitlines()) == 1:
        time.sleep(60)  # the first attempt waits to be killed
    return x + 1000


def fit(x: int, log: str) -> str:
    # Binds through the map's scope, as a user's sweep step would.
    here = active_context()
    assert here is not None
    here[f"sq{x}"] = square(x, log)
    return here.path


def cube(x: int, log: str) -> int:
    # Plain here; tracked with ctx.track(cube) by a test.
    mark(log, x)
    return x**3


def _forget_stores() -> None:
    # In a worker: close every store it opened, as conftest does for this
    # process, so no pool or connection outlives the test's database.
    for store in locations.open_stores():
        locations.close(store)


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    # The scheduler starts an HTTP server even without a dashboard, on port
    # 8787 unless told otherwise; another suite on the machine may hold that
    # port, and distributed's warning about moving is an error here.
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                  dashboard_address=":0", scheduler_kwargs={"dashboard": False},
                                  ) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def workers(client: distributed.Client, store_dir: Path) -> Iterator[set[int]]:
    """The worker pids; on teardown (before store_dir's) the workers drop their stores."""
    client.wait_for_workers(2, timeout=30)  # a test may have killed one; its nanny restarts it
    pids = set(client.run(os.getpid).values())
    assert len(pids) == 2 and os.getpid() not in pids
    yield pids
    client.run(_forget_stores)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "bodies.log"


def test_sweep_computes_each_item_once_on_the_workers(
        client: distributed.Client, workers: set[int], store_dir: Path, log: Path) -> None:
    ctx = provstore.open(store_dir)
    f = functools.partial(square, log=str(log))
    first = list(ctx.map(f, range(12), executor=client.get_executor()))
    assert first == [x * x for x in range(12)]
    assert bodies(log) == list(range(12))
    assert pids(log) <= workers

    # pure=False: an identical submission would otherwise get Dask's copy of
    # the first map's results while it still holds them, and prove nothing.
    again = list(ctx.map(f, range(12), executor=client.get_executor(pure=False)))
    assert again == first
    assert bodies(log) == list(range(12))  # all hits: no body ran

    ctx.sq5 = first[5]  # linked to its call by content
    call = ctx.history("sq5").call
    assert call is not None
    assert (call.function, call.status, call.params["x"]) == ("tracked_samples:square", "done", 5)
    assert call.pid in workers and call.host == socket.gethostname()
    assert call.run is not None and call.run.pid == call.pid


def test_failing_item_raises_with_worker_traceback_and_the_rest_commit(
        client: distributed.Client, workers: set[int], store_dir: Path, log: Path) -> None:
    ctx = provstore.open(store_dir)
    f = functools.partial(fragile, log=str(log))
    results = ctx.map(f, range(8), executor=client.get_executor())
    assert [next(results) for _ in range(3)] == [100, 101, 102]
    with pytest.raises(ValueError, match="item 3 is bad") as info:
        next(results)
    cause = info.value.__cause__
    assert isinstance(cause, WorkerTraceback)
    assert "in fragile" in cause.text and "ValueError: item 3 is bad" in cause.text
    del results  # stop at the failure: the other calls still run and commit

    rest = [x for x in range(8) if x != 3]
    again = ctx.map(f, rest, executor=client.get_executor(pure=False))
    assert list(again) == [x + 100 for x in rest]
    assert bodies(log) == list(range(8))  # each body ran once: the rest are hits

    with pytest.raises(ValueError, match="item 3 is bad"):
        list(ctx.map(f, [3], executor=client.get_executor(pure=False)))
    assert bodies(log) == [0, 1, 2, 3, 3, 4, 5, 6, 7]  # a failed call computes again


def test_scoped_map_binds_in_the_scope(client: distributed.Client, workers: set[int],
                                       store_dir: Path, log: Path) -> None:
    ctx = provstore.open(store_dir)
    with ctx.scope(subject="01"):
        paths = list(ctx.map(functools.partial(fit, log=str(log)), range(4),
                             executor=client.get_executor()))
    assert paths == ["subject=01"] * 4

    here = ctx.scope(subject="01")
    assert [here[f"sq{x}"] for x in range(4)] == [0, 1, 4, 9]
    assert "sq0" not in ctx.names(inherited=False)
    assert sorted(found.path for found in ctx.find(square, subject="01")) == [
        f"subject=01/sq{x}" for x in range(4)]
    call = here.history("sq2").call
    assert call is not None and call.pid in workers
    assert bodies(log) == list(range(4))


def test_ctx_track_carries_its_store_to_a_worker(
        client: distributed.Client, workers: set[int], store_dir: Path, log: Path) -> None:
    ctx = provstore.open(store_dir)
    tracked = ctx.track(cube, ignore=("log",))
    assert client.submit(tracked, 3, str(log)).result() == 27
    assert pids(log) <= workers
    assert tracked(3, str(log)) == 27  # a hit here: the worker recorded it in this store
    assert bodies(log) == [3]


def test_worker_killed_mid_call_is_taken_over_at_once(
        client: distributed.Client, workers: set[int], store_dir: Path, log: Path) -> None:
    ctx = provstore.open(store_dir)
    results = ctx.map(functools.partial(stuck_once, log=str(log)), [1],
                      executor=client.get_executor())
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text().endswith("\n")):  # created, then written
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.02)
    (victim,) = pids(log)
    os.kill(victim, signal.SIGKILL)
    # Dask reruns the task on the other worker; the lease's owner is a dead
    # process of this host, so it is taken over without waiting for expiry.
    assert list(results) == [1001]
    assert bodies(log) == [1, 1]
    ctx.r = 1001
    call = ctx.history("r").call
    assert call is not None and call.status == "done" and call.takeover_of is not None
    assert call.pid not in (victim, os.getpid())
    # The recorded take-over came before the dead owner's lease could expire.
    (dead,) = sql(store_dir, "SELECT started, finished FROM calls WHERE status = 'expired'")
    assert timestamp(dead["finished"]) - timestamp(dead["started"]) < dt.timedelta(
        seconds=lease_seconds())


def test_a_store_recreated_at_the_same_path_is_not_served_from_a_worker_cache(
        client: distributed.Client, tmp_path: Path, log: Path) -> None:
    where = tmp_path / "study"  # SQLite by construction: the directory is the whole store
    f = functools.partial(square, log=str(log))
    try:
        old = provstore.open(where)
        assert list(old.map(f, [1, 2], executor=client.get_executor())) == [1, 4]
        shutil.rmtree(where)
        # This process has the same cache (reopening fails in sweep() with
        # FileNotFoundError); drop it to see what the workers do.
        locations.close(old.store)

        new = provstore.open(where)
        assert list(new.map(f, [1, 2, 3], executor=client.get_executor(pure=False))) == [1, 4, 9]
        assert bodies(log) == [1, 1, 2, 2, 3]  # a new, empty store: everything computes
    finally:
        client.run(_forget_stores)

