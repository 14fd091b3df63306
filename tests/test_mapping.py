"""ctx.map and plain parallel use of tracked functions, in real processes and threads.

Tracked bodies append one line per execution to a log file opened with
``O_APPEND``; the log's path is an ignored parameter, so it changes no key.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

import provstore
from provstore.context import active_context
from provstore.mapping import WorkerTraceback
from sql import sql
from tracked_samples import bodies, fragile, square


def where(x: int) -> str:
    here = active_context()
    assert here is not None
    here[f"x{x}"] = x
    return here.path


def square_in(ctx: provstore.Context, x: int, log: str) -> int:
    # The pattern for workers that do not inherit the parent's store (spawn, loky).
    with ctx:
        return square(x, log)


def _calls(store_dir: Path, function: str) -> dict[str, int]:
    rows = sql(store_dir, "SELECT status, count(*) AS n FROM calls WHERE function LIKE :f "
               "GROUP BY status", {"f": f"%:{function}"})
    return {r["status"]: r["n"] for r in rows}


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "bodies.log"


def test_default_pool_computes_each_once_then_hits(ctx: provstore.Context, log: Path,
                                                   store_dir: Path) -> None:
    f = functools.partial(square, log=str(log))
    first = list(ctx.map(f, range(12)))
    assert first == [x * x for x in range(12)]
    assert bodies(log) == list(range(12))
    assert len({line.split()[1] for line in log.read_text().splitlines()} - {str(os.getpid())}) > 0

    again = list(ctx.map(f, range(12), chunksize=5))
    assert again == first
    assert bodies(log) == list(range(12))  # all hits: no body ran
    assert _calls(store_dir, "square") == {"done": 12}


def test_thread_pool(ctx: provstore.Context, log: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(ctx.map(functools.partial(square, log=str(log)), range(10),
                               executor=pool))
    assert results == [x * x for x in range(10)]
    assert bodies(log) == list(range(10))


def test_explicit_process_pool(ctx: provstore.Context, log: Path) -> None:
    with ProcessPoolExecutor(2) as pool:
        results = list(ctx.map(functools.partial(square, log=str(log)), [5, 1, 5, 2],
                               executor=pool, chunksize=2))
    assert results == [25, 1, 25, 4]
    assert bodies(log) == [1, 2, 5]  # the repeated item ran once


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_calls_run_in_the_current_scope(ctx: provstore.Context, kind: str) -> None:
    view = ctx.scope(sweep="a")
    executor = ThreadPoolExecutor(2) if kind == "thread" else None
    try:
        paths = list(view.map(where, range(4), executor=executor))
    finally:
        if executor is not None:
            executor.shutdown()
    assert paths == ["sweep=a"] * 4
    assert [view[f"x{i}"] for i in range(4)] == [0, 1, 2, 3]
    assert "x0" not in ctx.names(inherited=False)

    # Inside `with view:`, ctx itself points at the scope, and map follows it.
    with ctx.scope(sweep="b"):
        assert list(ctx.map(where, [7], executor=ThreadPoolExecutor(1))) == ["sweep=b"]
    assert ctx.scope(sweep="b").x7 == 7


def test_a_failing_item_raises_when_reached_and_the_rest_commit(
        ctx: provstore.Context, log: Path, store_dir: Path) -> None:
    results = ctx.map(functools.partial(fragile, log=str(log)), range(8))
    assert [next(results) for _ in range(3)] == [100, 101, 102]
    with pytest.raises(ValueError, match="item 3 is bad") as info:
        next(results)
    assert isinstance(info.value.__cause__, WorkerTraceback)
    assert "in fragile" in info.value.__cause__.text
    assert _calls(store_dir, "fragile") == {"done": 7, "failed": 1}
    assert bodies(log) == list(range(8))


def test_thread_failure_keeps_its_own_traceback(ctx: provstore.Context, log: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        results = ctx.map(functools.partial(fragile, log=str(log)), [1, 3], executor=pool)
        assert next(results) == 101
        with pytest.raises(ValueError, match="item 3") as info:
            next(results)
    assert info.value.__cause__ is None
    assert info.traceback[-1].name == "fragile"


def test_chunksize_must_be_positive(ctx: provstore.Context) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        ctx.map(where, [1], chunksize=0)


def test_empty_iterable(ctx: provstore.Context) -> None:
    assert list(ctx.map(where, [])) == []


# -- without ctx.map ------------------------------------------------------------------------


def test_fork_pool_workers_inherit_the_last_opened_store(ctx: provstore.Context, log: Path,
                                                         store_dir: Path) -> None:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(functools.partial(square, log=str(log)), range(6))
    assert results == [x * x for x in range(6)]
    assert _calls(store_dir, "square") == {"done": 6}
    assert square(4, str(log)) == 16  # a hit in the parent
    assert bodies(log) == list(range(6))


def test_joblib_loky_with_the_context_as_an_argument(ctx: provstore.Context, log: Path,
                                                     store_dir: Path) -> None:
    joblib = pytest.importorskip("joblib")
    results = joblib.Parallel(n_jobs=2, backend="loky")(
        joblib.delayed(square_in)(ctx, x, str(log)) for x in range(6))
    assert results == [x * x for x in range(6)]
    assert _calls(store_dir, "square") == {"done": 6}
    assert bodies(log) == list(range(6))


def test_spawn_executor_with_ctx_map(ctx: provstore.Context, log: Path) -> None:
    # spawn children inherit nothing: ctx.map ships the context with each chunk.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(ctx.map(functools.partial(square, log=str(log)), range(4),
                               executor=pool))
    assert results == [0, 1, 4, 9]
    assert bodies(log) == list(range(4))


def test_progress_bar_on_request(ctx: provstore.Context, log: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with ThreadPoolExecutor(2) as pool:
        results = list(ctx.map(functools.partial(square, log=str(log)), range(3),
                               executor=pool, progress=True))
    assert results == [0, 1, 4]
    assert "3/3" in capsys.readouterr().err


def test_no_progress_bar_when_stderr_is_not_a_terminal(
        ctx: provstore.Context, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ThreadPoolExecutor(1) as pool:
        list(ctx.map(functools.partial(square, log=str(log)), [1], executor=pool))
    assert capsys.readouterr().err == ""


def test_the_default_pool_never_forks_a_process_whose_threads_hold_locks(
        store_dir: Path, tmp_path: Path) -> None:
    # A fork() copies every lock of the parent, held ones included, but none
    # of the threads that would release them: a worker needing one waits
    # forever. Here the lock is the caller's own; in a real program it can be
    # any library's, held by any thread at the wrong moment.
    (tmp_path / "guarded.py").write_text(
        "import threading\n\nGUARD = threading.Lock()\n\n\n"
        "def square(x):\n    with GUARD:\n        return x * x\n")
    (tmp_path / "main.py").write_text(
        "import sys\n\nimport provstore\nimport guarded\n\n"
        "if __name__ == '__main__':\n"
        "    ctx = provstore.open(sys.argv[1])\n"
        "    with guarded.GUARD:  # held by this process for the whole map\n"
        "        print(list(ctx.map(guarded.square, range(4))))\n")
    provstore.open(store_dir)
    main = subprocess.Popen([sys.executable, "main.py", str(store_dir)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = main.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(main.pid, signal.SIGKILL)  # the script and its stuck workers
        main.communicate()
        raise AssertionError("ctx.map hung: its workers inherited a held lock") from None
    assert main.returncode == 0, err
    assert out.strip() == "[0, 1, 4, 9]"
