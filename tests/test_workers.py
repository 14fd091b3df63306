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
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sql import sql
from tracked_samples import bodies, pids

TESTS = Path(__file__).parent
ITEMS = [1, 2, 3]

# The user's script. EXECUTOR runs f(x, log) for every x in ITEMS in two
# worker processes and returns the results in order.
SCRIPT = textwrap.dedent('''
    import json
    import os
    import sys

    import provstore
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


    def with_loky(logs):
        import joblib

        return {name: joblib.Parallel(n_jobs=2)(joblib.delayed(f)(x, logs[name]) for x in ITEMS)
                for name, f in FUNCTIONS.items()}


    def with_pool(method, logs):
        import multiprocessing

        with multiprocessing.get_context(method).Pool(2) as pool:
            return {name: pool.starmap(f, [(x, logs[name]) for x in ITEMS])
                    for name, f in FUNCTIONS.items()}


    def with_futures(logs):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=spawn) as pool:
            return {name: list(pool.map(f, ITEMS, [logs[name]] * len(ITEMS)))
                    for name, f in FUNCTIONS.items()}


    def with_dask(logs):
        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            out = {}
            for name, f in FUNCTIONS.items():
                if name.startswith("script"):
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
            "module": [1, 4, 9], "module_nested": [122, 145, 170]}
# The log of each tracked body, and the function identity it records.
BODIES = {"script": "__main__:smooth", "script_nested": "__main__:smooth_twice",
          "script_nested.inner": "__main__:smooth",
          "module": "tracked_samples:square", "module_nested": "tracked_samples:square_plus_one",
          "module_nested.inner": "tracked_samples:square"}


def items(body: str) -> list[int]:
    """The arguments each body is called with (nested calls add 10)."""
    return [x + 10 for x in ITEMS] if body.endswith(".inner") else ITEMS


def run_script(script: Path, store: Path, log: Path, executor: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, str(script), str(store), str(log), executor],
                          cwd=script.parent, env=env, capture_output=True, text=True,
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
    assert sorted(c["function"] for c in calls) == sorted(
        f for f in BODIES.values() for _ in ITEMS)
    assert {c["status"] for c in calls} == {"done"}
    assert first["pid"] not in {c["pid"] for c in calls}
