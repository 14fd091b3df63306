"""Tracked functions sent to workers by joblib, multiprocessing, concurrent.futures and Dask.

Each test runs a real script twice, as ``__main__`` in a subprocess: the
script opens the store and hands tracked functions to an executor's worker
processes. Some are defined in the script itself (workers that never ran the
script must receive them by value), some in ``tracked_samples`` (imported by
reference), one of which calls another tracked function. Bodies append
``"<item> <pid>"`` to an O_APPEND log per function, so the test counts how
many times, and in which processes, each body ran: once per item over both
runs, never in the parent, and recorded in the store the parent opened.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import provstore
from provstore.context import active_context
from sql import sql
from tracked_samples import bodies, pids, square, square_plus_one

TESTS = Path(__file__).parent
ITEMS = [1, 2, 3]

# The user's script. EXECUTOR runs f(x, log) for every x in ITEMS in two
# worker processes and returns the results in order.
SCRIPT = textwrap.dedent('''
    import json
    import linecache
    import os
    import sys

    import provstore
    import provstore.context
    from tracked_samples import mark, square, square_plus_one

    ITEMS = [1, 2, 3]


    @provstore.track(ignore=("log",))
    def smooth(x, log):
        mark(log, x)
        return x + 0.5


    @provstore.track(ignore=("log",))
    def smooth_twice(x, log):
        # Calls a tracked function of this script: it travels with this one.
        mark(log, x)
        return smooth(x + 10, log + ".inner") * 2


    FUNCTIONS = {"script": smooth, "script_nested": smooth_twice,
                 "module": square, "module_nested": square_plus_one}

    if __name__ == "__main__":
        # As in a notebook: a cell's source is in this process's linecache only.
        CELL, NAME = "def cell_smooth(x, log):\\n    mark(log, x)\\n    return x * 10\\n", "<cell>"
        linecache.cache[NAME] = (len(CELL), None, CELL.splitlines(True), NAME)
        exec(compile(CELL, NAME, "exec"))
        FUNCTIONS["cell"] = provstore.track(ignore=("log",))(cell_smooth)


    def with_loky(logs):
        import joblib

        return {name: joblib.Parallel(n_jobs=2)(joblib.delayed(f)(x, logs[name]) for x in ITEMS)
                for name, f in FUNCTIONS.items()}


    def with_pool(method, logs):
        import multiprocessing

        with multiprocessing.get_context(method).Pool(2) as pool:
            return {name: pool.starmap(f, [(x, logs[name]) for x in ITEMS])
                    for name, f in FUNCTIONS.items()}


    @provstore.track
    def keep_double(x):
        # Binds where ctx.map runs it: the scope the parent mapped in.
        provstore.context.active_context()[f"double{x}"] = 2 * x
        return 2 * x


    def with_futures(logs):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=spawn) as pool:
            out = {name: list(pool.map(f, ITEMS, [logs[name]] * len(ITEMS)))
                   for name, f in FUNCTIONS.items()}
            with ctx.scope(sweep="s"):
                assert list(ctx.map(keep_double, ITEMS, executor=pool)) == [2, 4, 6]
            return out


    def with_dask(logs):
        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            out = {}
            for name, f in FUNCTIONS.items():
                if name in ("script", "cell"):
                    futures = client.map(f, ITEMS, log=logs[name], pure=False)
                else:
                    futures = [client.submit(f, x, logs[name], pure=False) for x in ITEMS]
                out[name] = client.gather(futures)
            return out


    if __name__ == "__main__":
        store, log, executor = sys.argv[1:]
        logs = {name: f"{log}.{name}" for name in FUNCTIONS}
        ctx = provstore.open(store)
        if executor == "loky":
            results = with_loky(logs)
        elif executor in ("fork", "spawn"):
            results = with_pool(executor, logs)
        elif executor == "futures":
            results = with_futures(logs)
        else:
            results = with_dask(logs)
        # The parent's own calls find what the workers stored: same keys.
        direct = {name: [f(x, logs[name]) for x in ITEMS] for name, f in FUNCTIONS.items()}
        print(json.dumps({"pid": os.getpid(), "results": results, "direct": direct}))
''')

EXPECTED = {"script": [1.5, 2.5, 3.5], "script_nested": [23.0, 25.0, 27.0],
            "module": [1, 4, 9], "module_nested": [122, 145, 170], "cell": [10, 20, 30]}
# The log of each tracked body, and the function identity it records: a script's
# functions are listed under the module name the script would have (pipeline.py).
BODIES = {"script": "pipeline:smooth", "script_nested": "pipeline:smooth_twice",
          "script_nested.inner": "pipeline:smooth",
          "module": "tracked_samples:square", "module_nested": "tracked_samples:square_plus_one",
          "module_nested.inner": "tracked_samples:square", "cell": "pipeline:cell_smooth"}


def items(body: str) -> list[int]:
    """The arguments each body is called with (nested calls add 10)."""
    return [x + 10 for x in ITEMS] if body.endswith(".inner") else ITEMS


def _env() -> dict[str, str]:
    # Workers import tracked_samples from this directory.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])}


def run_script(script: Path, store: Path, log: Path, executor: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(script), str(store), str(log), executor],
                          cwd=script.parent, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    # A tracked function that ran untracked in a worker only warns there.
    assert "untracked" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("executor", ["loky", "fork", "spawn", "futures", "dask"])
def test_tracked_functions_run_once_in_workers_over_two_runs(
        executor: str, store_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(SCRIPT)
    log = tmp_path / "log"
    first = run_script(script, store_dir, log, executor)
    assert first["results"] == EXPECTED and first["direct"] == EXPECTED
    for name in BODIES:
        body_log = Path(f"{log}.{name}")
        assert bodies(body_log) == items(name), name
        assert first["pid"] not in pids(body_log), f"{name} ran in the parent"

    second = run_script(script, store_dir, log, executor)
    assert second["results"] == EXPECTED and second["direct"] == EXPECTED
    for name in BODIES:
        assert bodies(Path(f"{log}.{name}")) == items(name), f"{name} ran again"

    # Recorded in the store the parent opened, by the workers.
    calls = sql(store_dir, "SELECT function, status, pid FROM calls")
    mapped = ["pipeline:keep_double"] * len(ITEMS) if executor == "futures" else []
    assert sorted(c["function"] for c in calls) == sorted(
        [f for f in BODIES.values() for _ in ITEMS] + mapped)
    assert {c["status"] for c in calls} == {"done"}
    assert first["pid"] not in {c["pid"] for c in calls}
    if executor == "futures":
        # ctx.map's calls bind in the scope the parent mapped in.
        swept = provstore.open(store_dir).scope(sweep="s")
        assert [swept[f"double{x}"] for x in ITEMS] == [2, 4, 6]


def test_ctx_map_sends_lambdas_and_nested_functions_by_value(ctx: provstore.Context) -> None:
    def bind(x: int) -> str:
        here = active_context()
        assert here is not None
        here[f"x{x}"] = x
        return here.path

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=spawn) as pool, ctx.scope(sweep="b"):
        assert list(ctx.map(lambda x: x + 1, [1, 2], executor=pool)) == [2, 3]
        assert list(ctx.map(bind, [1, 2], executor=pool)) == ["sweep=b", "sweep=b"]
    assert ctx.scope(sweep="b").x2 == 2


# ---------------------------------------------------------------- in one process
def test_a_nested_recursive_function_pickles_by_value_with_its_key(ctx: provstore.Context) -> None:
    @provstore.track
    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    clone = pickle.loads(pickle.dumps(fib))
    assert clone is not fib and clone.identity == fib.identity
    assert clone.key(10) == fib.key(10)
    assert clone(10) == 55
    assert fib.is_cached(10)  # the clone stored it under the same key


def test_the_view_a_function_carries_yields_to_one_entered_where_it_runs(
        tmp_path: Path) -> None:
    a = provstore.open(tmp_path / "a")
    b = provstore.open(tmp_path / "b")
    with b:
        blob = pickle.dumps(square)  # carries b
    provstore.open(tmp_path / "c")  # opened last here
    clone = pickle.loads(blob)
    clone(2, os.devnull)
    with a:  # as ctx.map enters its view in a worker
        clone(3, os.devnull)
    assert [c["params"] for c in sql(tmp_path / "b", "SELECT params FROM calls")] == [
        '{"x": 2}']
    assert len(sql(tmp_path / "a", "SELECT id FROM calls")) == 1
    assert sql(tmp_path / "c", "SELECT id FROM calls") == []


def test_a_tracked_function_hashes_alike_in_any_scope(ctx: provstore.Context) -> None:
    # As an argument it is its code, not its pickle (which carries the store).
    from provstore import hashing

    with ctx.scope(sweep="a"):
        in_a = hashing.digest(square)
    assert hashing.digest(square) == in_a != hashing.digest(square_plus_one)


UNPICKLE = """
import pickle, sys
from provstore import locations
f = pickle.loads(open(sys.argv[1], "rb").read())
print(len(locations.open_stores()), "cloudpickle" in sys.modules)
"""


def test_unpickling_a_tracked_function_opens_no_store(ctx: provstore.Context,
                                                      tmp_path: Path) -> None:
    # A Dask scheduler unpickles tasks it never runs: it must not connect.
    blob = tmp_path / "f.pickle"
    blob.write_bytes(pickle.dumps(square))
    done = subprocess.run([sys.executable, "-c", UNPICKLE, str(blob)], env=_env(),
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "False"]


def test_import_provstore_leaves_cloudpickle_unimported() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys, provstore; "
                           "print('cloudpickle' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
