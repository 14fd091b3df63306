"""Launch-independent, refactor-safe call identity (issue 10, DESIGN §5).

The same code with the same arguments shares its result wherever it lives and
however it is launched: as a script (``__main__``), in spawn workers
(``__mp_main__``), after a move into a module or a rename. Every test here runs
real Python processes on a real store; each body appends a line to an
O_APPEND log, so the tests count exactly how many times a body ran.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import provstore
from provstore.codeversion import code_version, defined_at, function_identity
from provstore.errors import InvalidNameError
from provstore.lineage.reader import LineageReader

# The body of every scripted function: log one line per execution, then compute.
MARK = """\
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, f"{x}\\n".encode())
    os.close(fd)
"""

HELPERS = """\
SCALE = 3


def helper(x):
    return x * SCALE


@provstore.track(ignore=("log",))
def NAME(x, log):
""" + MARK + """\
    return helper(x) + 1
"""

SCRIPT = """\
import os
import sys

import provstore

ctx = provstore.open(sys.argv[1])

{body}

if __name__ == "__main__":
    log = sys.argv[2]
{main}
"""


def run_script(path: Path, store: Path, log: Path) -> str:
    done = subprocess.run([sys.executable, str(path), str(store), str(log)], cwd=path.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def bodies(log: Path) -> list[int]:
    return sorted(int(x) for x in log.read_text().split()) if log.exists() else []


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path


@pytest.mark.parametrize("new_name", ["score", "rank"], ids=["moved", "moved-and-renamed"])
def test_a_script_function_moved_into_a_module_keeps_its_results(
        store_dir: Path, project: Path, new_name: str) -> None:
    log = project / "bodies.log"
    script = write(project / "first.py", SCRIPT.format(
        body=HELPERS.replace("NAME", "score"),
        main="    print([score(x, log) for x in range(3)])"))
    assert run_script(script, store_dir, log).strip() == "[1, 4, 7]"
    assert bodies(log) == [0, 1, 2]

    write(project / "scoring.py", "import os\n\nimport provstore\n\n\n"
          + HELPERS.replace("NAME", new_name))
    second = write(project / "second.py", SCRIPT.format(
        body=f"from scoring import {new_name}",
        main=f"    print([{new_name}(x, log) for x in range(4)])"))
    assert run_script(second, store_dir, log).strip() == "[1, 4, 7, 10]"
    assert bodies(log) == [0, 1, 2, 3]  # only the new argument ran

    calls = _calls(provstore.open(store_dir))
    assert [(c.function, c.defined_at) for c in calls] == [
        ("first:score", "__main__:score")] * 3 + [(f"scoring:{new_name}", f"scoring:{new_name}")]


def _calls(ctx: provstore.Context) -> list[provstore.lineage.CallInfo]:
    """Every call in the store, oldest first (the first thousand ids)."""
    reader = LineageReader(ctx.store)
    return sorted(reader.calls(range(1, 1000)).values(), key=lambda c: c.id)


def test_spawn_workers_hit_what_the_script_computed(store_dir: Path, project: Path) -> None:
    log = project / "bodies.log"
    script = write(project / "pooled.py", SCRIPT.format(
        body=HELPERS.replace("NAME", "score") + textwrap.dedent("""

            def job(x):
                return score(x, sys.argv[2])
            """),
        main=textwrap.indent(textwrap.dedent("""\
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            print([score(x, log) for x in range(3)])
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(2, mp_context=spawn) as pool:
                print(list(ctx.map(job, range(5), executor=pool)))
            """), "    ")))
    out = run_script(script, store_dir, log).split("\n")
    assert out[:2] == ["[1, 4, 7]", "[1, 4, 7, 10, 13]"]
    assert bodies(log) == [0, 1, 2, 3, 4]  # the workers computed 3 and 4 only
    calls = _calls(provstore.open(store_dir))
    assert {c.defined_at for c in calls} == {"__main__:score"}
    assert {c.function for c in calls} == {"pooled:score"}


def test_two_scripts_defining_score_are_not_mixed(store_dir: Path, project: Path) -> None:
    log = project / "bodies.log"
    for stem, body, out in (("alpha", "x + 1", "out_a"), ("beta", "x * 10", "out_b")):
        script = write(project / f"{stem}.py", SCRIPT.format(
            body=f"@provstore.track(ignore=('log',))\ndef score(x, log):\n{MARK}"
                 f"    return {body}\n",
            main=f"    ctx.{out} = score(2, log)\n"
                 "    print(sorted(f.name for f in ctx.find(function=score)))"))
        assert run_script(script, store_dir, log).strip() == f"[{out!r}]"
    ctx = provstore.open(store_dir)
    assert (ctx.out_a, ctx.out_b) == (3, 20)
    assert [f.name for f in ctx.find(function="alpha:score")] == ["out_a"]
    assert [f.name for f in ctx.find(function="beta:score")] == ["out_b"]
    assert ctx.find(function="__main__:score") == []


# ------------------------------------------------------------------ in-process


def test_equal_code_shares_results_and_a_name_separates_them(ctx: provstore.Context,
                                                            tmp_path: Path) -> None:
    log = tmp_path / "log"

    def first(x: int) -> int:
        _mark(log, x)
        return x + 1

    def second(x: int) -> int:  # the same code under another name
        _mark(log, x)
        return x + 1

    assert ctx.track(first)(1) == ctx.track(second)(1) == 2
    assert bodies(log) == [1]  # the rename kept the result
    named = ctx.track(first, name="preproc.inc")
    assert named.identity == "preproc.inc" and named.key_identity == "name:preproc.inc"
    assert named(1) == 2 and bodies(log) == [1, 1]  # a name is part of the key
    assert ctx.track(second, name="preproc.inc")(1) == 2 and bodies(log) == [1, 1]
    ctx.named = named(1)
    assert [f.function for f in ctx.find(function=named)] == ["preproc.inc"]
    assert ctx.history("named").latest.call.function == "preproc.inc"


def test_pinned_functions_do_not_share_a_pin(ctx: provstore.Context, tmp_path: Path) -> None:
    log = tmp_path / "log"

    def one(x: int) -> int:
        _mark(log, x)
        return x + 1

    def two(x: int) -> int:
        _mark(log, x)
        return x * 100

    assert ctx.track(one, version="1")(2) == 3
    assert ctx.track(two, version="1")(2) == 200  # same pin, other function: computed
    assert bodies(log) == [2, 2]


def test_identity_names() -> None:
    ns: dict[str, object] = {"__name__": "__mp_main__", "__file__": "/somewhere/run.py"}
    exec(compile("def f(x):\n    return x\n", "/somewhere/run.py", "exec"), ns)
    assert defined_at(ns["f"]) == "__main__:f"
    assert function_identity(ns["f"]) == "run:f"
    notebook: dict[str, object] = {"__name__": "__main__"}
    exec(compile("def f(x):\n    return x\n", "<ipython-input-3>", "exec"), notebook)
    assert function_identity(notebook["f"]) == "__main__:f"
    assert code_version(notebook["f"]).digest == code_version(ns["f"]).digest
    with pytest.raises(InvalidNameError, match="name="):
        provstore.track(lambda x: x, name="")


def _mark(log: Path, x: int) -> None:
    with open(log, "a") as f:
        f.write(f"{x}\n")


def test_dask_workers_hit_what_the_script_computed(store_dir: Path, project: Path) -> None:
    log = project / "bodies.log"
    script = write(project / "daskrun.py", SCRIPT.format(
        body=HELPERS.replace("NAME", "score") + textwrap.dedent("""

            def job(x):
                return score(x, sys.argv[2])
            """),
        main=textwrap.indent(textwrap.dedent("""\
            import distributed

            print([score(x, log) for x in range(3)])
            with distributed.LocalCluster(processes=True, n_workers=1, threads_per_worker=1,
                                          dashboard_address=None) as cluster, \\
                    distributed.Client(cluster) as client:
                print(list(ctx.map(job, range(5), executor=client.get_executor())))
            """), "    ")))
    out = run_script(script, store_dir, log).split("\n")
    assert out[:2] == ["[1, 4, 7]", "[1, 4, 7, 10, 13]"]
    assert bodies(log) == [0, 1, 2, 3, 4]
    calls = _calls(provstore.open(store_dir))
    assert {(c.function, c.defined_at) for c in calls} == {("daskrun:score", "__main__:score")}
    assert len({c.pid for c in calls}) == 2  # computed in the script and in the worker
