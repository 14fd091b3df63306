"""Every ```python block of README.md and docs/*.md runs as written.

Each page runs in a fresh interpreter (a subprocess) in an empty temporary directory: its
blocks in order, as one script whose line *n* is line *n* of the page, so a failure names the
page, the block and the line, with the script's stderr. Interactive blocks (``>>>``) run their
input lines; the output shown is not compared (it holds dates, pids, digests).

**Adding a block.** Write it to run as a reader would paste it, after the page's earlier
blocks: with its imports, defining what it uses. When it uses names the text gives from
context (``load_signal``, ``img``, files under ``raw/``), or ``...`` placeholders, say so in a
marker, an HTML comment right above the fence (hidden on the rendered page, plain in the
source), then run ``pytest tests/test_docs.py -k <page>``:

- ``<!-- docs-test prelude: CODE -->``: run CODE first, in the same interpreter (code may also
  sit on the lines between ``prelude:`` and ``-->``). ``tests/docs_preludes.py`` has helpers
  (``write_study_files()``, ``load_signal``, ``smooth``, ``image()``). A prelude sets the
  scene; it never does what the block shows.
- ``<!-- docs-test file: NAME.py -->``: the block is a module later blocks import; it is
  written to NAME.py in the working directory, not run.
- ``<!-- docs-test script: NAME.py -->``: the block is a program of its own (such as one that
  starts a Dask ``LocalCluster`` under ``if __name__ == "__main__":``, whose workers re-import
  it); it is written to NAME.py and run as its own process, at its place among the blocks.
- ``<!-- docs-test skip: REASON -->``: it cannot run here. It is not run, and it is reported
  as a skipped test naming the page, the line and REASON (``pytest -ra`` lists them).

A marker that is not right above a Python block fails the page.

Some things a page names cannot exist here; the test swaps them for real local ones in the
blocks' text, and nothing else:

- a ``postgresql+psycopg://...`` URL: a new, empty database on the suite's own throwaway
  PostgreSQL server (``pg_cluster``), one per distinct URL in a page;
- ``tcp://scheduler:8786``: the scheduler of a real two-worker Dask cluster started for the
  page (``tests/docs_cluster.py``), with the working directory on the workers' path;
- ``/shared/``: a ``shared/`` directory inside the working directory.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from docs_blocks import Block, DocError, Program, assemble, parse

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
# Pages that start process pools, Dask clusters or PostgreSQL databases.
SLOW = {"docs/parallel.md", "docs/scaling-out.md", "docs/sklearn-nilearn.md"}
PG_URL = re.compile(r"postgresql\+psycopg://[^\s\"'<>)]+")
SCHEDULER = "tcp://scheduler:8786"
_counter = itertools.count()


def _parsed(doc: str) -> list[Block]:
    try:
        return parse(ROOT / doc, doc)
    except DocError:
        return []  # test_doc_runs reports it


def _unrunnable() -> list[Block]:
    return [b for doc in DOCS for b in _parsed(doc) if b.skip is not None]


@pytest.mark.parametrize(
    "doc", [pytest.param(d, marks=[pytest.mark.slow] if d in SLOW else []) for d in DOCS])
def test_doc_runs(doc: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    blocks = parse(ROOT / doc, doc)
    if not any(b.skip is None for b in blocks):
        return  # no Python to run: the page still parsed, its markers checked
    work = tmp_path / "work"
    work.mkdir()
    text = "\n".join(line for b in blocks if b.skip is None for line in b.code)
    with _substitutions(text, work, request) as swaps:
        main = Path(doc).stem + ".py"
        program = assemble(blocks, main, swaps)
        if main in program.files:
            pytest.fail(f"{doc}: a 'docs-test file:' marker takes the script's name {main}")
        for name, content in {main: program.script, **program.files}.items():
            (work / name).write_text(content)
        proc = subprocess.run([sys.executable, main], cwd=work, env=_env(work),
                              capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(_failure(doc, program, proc), pytrace=False)


@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in _unrunnable()]
                         or [pytest.param(None, id="none")])
def test_unrunnable_block_is_declared(block: Block | None) -> None:
    # Counted and listed (pytest -ra) rather than passed over in silence.
    if block is None:
        return  # every block runs
    pytest.skip(f"{block.where} not run: {block.skip}")


def test_markers_are_read(tmp_path: Path) -> None:
    # The marker reader itself, on a page written for it.
    page = ("# t\n<!-- docs-test prelude: x = 1 -->\n```python\nprint(x)\n```\n\n"
            "<!-- docs-test prelude:\nimport math\ny = math.pi\n-->\n```python\n"
            ">>> y\n3.14...\n```\n<!-- docs-test skip: needs a GPU -->\n```python\n"
            "gpu()\n```\n<!-- docs-test file: mod.py -->\n```python\nZ = 2\n```\n")
    path = tmp_path / "t.md"
    path.write_text(page)
    first, second, third, fourth = parse(path, "t.md")
    assert first.prelude == {2: "x = 1"} and first.statements() == {4: "print(x)"}
    assert second.prelude == {8: "import math", 9: "y = math.pi"}
    assert second.statements() == {12: "y"}
    assert (third.skip, fourth.file) == ("needs a GPU", "mod.py")
    program = assemble([first, second, third, fourth], "t.py")
    assert program.script.split("\n")[3] == "print(x)"
    assert program.files["mod.py"].split("\n")[20] == "Z = 2"
    assert program.skipped == [third]


def test_a_stray_marker_fails_the_page(tmp_path: Path) -> None:
    path = tmp_path / "t.md"
    path.write_text("<!-- docs-test prelude: x = 1 -->\n\nprose\n```python\nx\n```\n")
    with pytest.raises(DocError, match="not right above"):
        parse(path, "t.md")
    path.write_text("<!-- docs-test prelud: x = 1 -->\n```python\nx\n```\n")
    with pytest.raises(DocError, match="unknown marker"):
        parse(path, "t.md")
    path.write_text("```python\nx = 1\n>>> x\n1\n```\n")
    (block,) = parse(path, "t.md")
    with pytest.raises(DocError, match="before the first '>>>'"):
        block.statements()
    path.write_text("Quote one as `<!-- docs-test skip: why -->` in prose.\n")
    assert parse(path, "t.md") == []


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVSTORE")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(work)])
    return env


@contextmanager
def _substitutions(text: str, work: Path,
                   request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """The replacements this page needs (see the module docstring), set up for its run."""
    swaps: dict[str, str] = {"/shared/": f"{work}/shared/"}
    with ExitStack() as stack:
        urls = sorted(set(PG_URL.findall(text)))
        if urls:
            swaps.update(stack.enter_context(_databases(urls, request)))
        if SCHEDULER in text:
            swaps[SCHEDULER] = stack.enter_context(_dask_cluster(work))
        pattern = re.compile("|".join(re.escape(k) for k in sorted(swaps, key=len,
                                                                  reverse=True)))
        yield lambda line: pattern.sub(lambda m: swaps[m.group(0)], line)


@contextmanager
def _databases(urls: list[str], request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    backends = os.environ.get("PROVSTORE_TEST_BACKENDS", "sqlite,postgresql")
    if "postgresql" not in backends:
        pytest.skip(f"PROVSTORE_TEST_BACKENDS={backends} excludes the PostgreSQL this page uses")
    cluster = request.getfixturevalue("pg_cluster")
    names = [f"docs_{next(_counter)}_{os.getpid()}" for _ in urls]
    try:
        yield {url: cluster.create_database(name) for url, name in zip(urls, names)}
    finally:
        for name in names:
            cluster.drop_database(name)


@contextmanager
def _dask_cluster(work: Path) -> Iterator[str]:
    address = work.parent / "scheduler-address"
    proc = subprocess.Popen([sys.executable, str(TESTS / "docs_cluster.py"), str(address)],
                            cwd=work, env=_env(work), stdin=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not address.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Dask cluster for the docs did not start (exit {proc.poll()})")
            time.sleep(0.1)
        yield address.read_text()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _failure(doc: str, program: Program, proc: subprocess.CompletedProcess[str]) -> str:
    """Name the block whose line the traceback ends in, then show stdout and stderr."""
    frames = [(Path(f).name, int(n)) for f, n in re.findall(r'File "([^"]+)", line (\d+)',
                                                             proc.stderr)]
    ours = [f for f in frames if f in program.origin]
    # A script block's own traceback beats the line that launched it.
    ours = [f for f in ours if f not in program.launchers] or ours
    block, at = (program.origin[ours[-1]], ours[-1][1]) if ours else (None, 0)
    where = (f"{doc}:{at}: the block at lines {block.line}-{block.last_line} failed"
             if block else f"{doc}: a block failed")
    return (f"{where} (exit {proc.returncode})\n"
            f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-8000:]}")
