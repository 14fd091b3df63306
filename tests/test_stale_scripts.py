"""``stale`` on scripts: checked from their files, never by running them (issue 10).

A script runs in a real process and records its results; the script file is
then edited (or removed) and ``provstore stale`` runs as the installed console
script, as a user would type it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import provstore
from sql import sql

PIPELINE = """\
import sys

import provstore

ctx = provstore.open(sys.argv[1])
SCALE = 3
OFFSET = 1


def helper(x):
    return x * SCALE


@provstore.track
def score(x):
    return helper(x) + 1


@provstore.track
def double(v):
    return 2 * v


@provstore.track
def shift(x):
    return x + OFFSET


if __name__ == "__main__":
    ctx.a = score(2)
    ctx.b = double(ctx.a)
    ctx.c = shift(2)
"""


def provstore_cli(store: Path, *args: str) -> str:
    script = Path(sys.executable).with_name("provstore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "provstore"]
    done = subprocess.run([*command, "--store", str(store), *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_script(path: Path, store: Path) -> None:
    done = subprocess.run([sys.executable, path.name, str(store)], cwd=path.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_stale_sees_a_changed_helper_constant_in_a_script(store_dir: Path,
                                                          tmp_path: Path) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE)
    run_script(script, store_dir)
    assert provstore_cli(store_dir, "stale").splitlines() == ["nothing is stale in the root scope"]

    script.write_text(PIPELINE.replace("SCALE = 3", "SCALE = 4"))
    call = provstore.open(store_dir).history("a").call
    assert call is not None and call.defined_at == "__main__:score"
    assert provstore_cli(store_dir, "stale").splitlines() == [
        f"a v1: code changed: __main__.SCALE (call {call.id})",
        "  and downstream: b v1"]
    [found] = json.loads(provstore_cli(store_dir, "stale", "--json"))["stale"]
    assert (found["path"], found["downstream"]) == ("a", ["b v1"])

    script.write_text(PIPELINE.replace("return helper(x) + 1", "return helper(x) + 2"))
    assert provstore_cli(store_dir, "stale").splitlines()[0] == (
        f"a v1: code changed: __main__:score (call {call.id})")


def test_stale_counts_what_it_cannot_check(store_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE)
    run_script(script, store_dir)
    script.unlink()
    assert provstore_cli(store_dir, "stale").splitlines() == [
        "nothing is stale in the root scope of what could be checked",
        f"3 results not checked: {script} is gone"]
    ctx = provstore.open(store_dir)
    assert ctx.stale() == [] and len(ctx.stale().unchecked) == 3
    assert [s.reason for s in ctx.stale(unimportable=True)] == [
        f"not checked: {script} is gone"] * 3


def test_python_c_results_are_not_checked_and_say_why(store_dir: Path,
                                                      tmp_path: Path) -> None:
    code = textwrap.dedent(f"""\
        import provstore
        ctx = provstore.open({str(store_dir)!r})

        @provstore.track
        def inc(x):
            return x + 1

        ctx.d = inc(1)
        """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert provstore_cli(store_dir, "stale").splitlines()[1:] == [
        "1 result not checked: defined in an interactive session or python -c "
        "(no source on disk)"]


def test_calls_recorded_before_defined_at_are_still_checked(store_dir: Path,
                                                             tmp_path: Path) -> None:
    """Rows of older stores: no defined_at, the script function listed as __main__:f."""
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE)
    run_script(script, store_dir)
    sql(store_dir, "UPDATE calls SET defined_at = NULL, "
                   "function = '__main__:' || substr(function, length('pipeline:') + 1)",
        write=True)
    assert {r["function"] for r in sql(store_dir, "SELECT function FROM calls")} == {
        "__main__:score", "__main__:double", "__main__:shift"}
    script.write_text(PIPELINE.replace("OFFSET = 1", "OFFSET = 2"))
    [line] = provstore_cli(store_dir, "stale").splitlines()
    assert line.startswith("c v1: code changed: __main__.OFFSET (call ")
    assert provstore.open(store_dir).history("c").call.defined_at is None  # type: ignore[union-attr]
