"""History with lineage: producing calls, the upstream graph, the tree and explain()."""

from __future__ import annotations

import html
import importlib
import linecache
import os
import re
import socket
import sys
import textwrap
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event

import provstore
from provstore import maintenance
from provstore.context import Context
from provstore.errors import NotFoundError
from provstore.lineage import BoundName, CallInfo, InputInfo, LineageGraph
from provstore.store import Store

HERE = __name__


@provstore.track
def scale(x: Any, k: float = 2) -> Any:
    return x * k


@provstore.track
def shift(a: Any, b: float) -> Any:
    return a + b


@provstore.track
def split(a: Any, b: float) -> tuple[Any, Any]:
    return a + b, a - b


@provstore.track
def step(x: int) -> int:
    return x + 1


@provstore.track
def noisy(n: int) -> Any:
    return np.random.default_rng().random(n)


@provstore.track
def never_called(x: int) -> int:
    return x


def _chain(ctx: Context, tmp_path: Path) -> Path:
    """File → raw (ingested) → scale → y → shift → z."""
    path = tmp_path / "raw.npy"
    np.save(path, np.arange(6.0))
    ctx.raw = provstore.File(path)
    ctx.y = scale(ctx.raw, k=3)
    ctx.z = shift(ctx.y, 1.0)
    return path


def _ids(ctx: Context, *names: str) -> list[int]:
    ids = [ctx.history(n).latest.artifact_id for n in names]
    assert all(i is not None for i in ids)
    return [int(i) for i in ids if i is not None]


# ------------------------------------------------------------------ calls
def test_version_call_fields(ctx: Context, tmp_path: Path) -> None:
    _chain(ctx, tmp_path)
    raw_id, y_id, z_id = _ids(ctx, "raw", "y", "z")
    h = ctx.history("z")
    c = h.call
    assert isinstance(c, CallInfo)
    assert c is h.latest.call and c.id == h.latest.call_id
    assert c.function == f"{HERE}:shift" and c.status == "done" and c.error is None
    assert c.params == {"a": {"artifact": y_id}, "b": 1.0}
    assert list(c.inputs) == ["a", "b"]
    a, b = c.inputs["a"], c.inputs["b"]
    assert isinstance(a, InputInfo) and a.artifact_id == y_id
    assert a.names == (BoundName("y", True),) and a.name_count == 1
    assert b.artifact_id is None and b.file_path is None and b.summary == 1.0
    assert c.outputs == (z_id,) and c.output_kind == "single"
    assert c.run is not None and c.run.pid == os.getpid()
    assert c.duration is not None and c.duration > 0
    assert c.finished is not None and c.started <= c.finished
    assert "return a + b" in (c.source or "") and c.deps == {} and c.pinned is None
    assert c.host == socket.gethostname() and c.pid == os.getpid() and c.takeover_of is None
    assert c.key == shift.key(ctx.y, 1.0) and len(c.code_digest) == 32
    assert c.label == f"{HERE}:shift({c.code_digest[:12]})" and c.describe_params() == "b=1.0"

    y_call = ctx.history("y").call
    assert y_call is not None and y_call.function == f"{HERE}:scale"
    assert y_call.params == {"x": {"artifact": raw_id}, "k": 3}
    assert [n.path for n in y_call.inputs["x"].names] == ["raw"]
    assert ctx.history("raw").call is None  # ingested, not computed


def test_names_cover_old_bindings_in_any_scope(ctx: Context, tmp_path: Path) -> None:
    _chain(ctx, tmp_path)
    with ctx.scope(subject="01"):
        ctx.copy = ctx.y
    ctx.y = 0  # y no longer holds the input of shift
    a = ctx.history("z").call.inputs["a"]  # type: ignore[union-attr]
    assert set(a.names) == {BoundName("subject=01/copy", True), BoundName("y", False)}
    assert a.names[0].current  # current bindings first
    assert "y (old)" in a.describe_names()


def test_tuple_outputs_bound_separately_link_to_one_call(ctx: Context) -> None:
    ctx.base = np.arange(4.0)
    total, diff = split(ctx.base, 2.0)
    ctx.total = total
    ctx.diff = diff
    t, d = ctx.history("total").call, ctx.history("diff").call
    assert t is not None and d is not None and t.id == d.id
    assert t.output_kind == "tuple" and t.outputs == tuple(_ids(ctx, "total", "diff"))


def test_content_linked_call(ctx: Context) -> None:
    ctx.x = np.arange(5.0)
    result = scale(ctx.x)
    # Another process binds an equal value: no identity, no recent call known.
    other = Store(ctx.store.url, ctx.store.root)
    try:
        Context(other).copy = np.array(result)
        h = ctx.history("copy")
        assert h.latest.call_id is None  # the binding does not name a call...
        call = h.call
        assert call is not None and call.function == f"{HERE}:scale"  # ...content does
        assert call.outputs == (h.latest.artifact_id,)
        assert h.upstream().producer(h.upstream().root.id) is not None
    finally:
        other.close()
    ctx.plain = 42
    assert ctx.history("plain").call is None


def test_calls_of_many_versions_take_a_bounded_number_of_queries(ctx: Context) -> None:
    for i in range(25):
        ctx.y = step(i)
    ctx.y = 1000  # a plain assignment in between
    h = ctx.history("y")
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(ctx.store.engine, "before_cursor_execute", count)
    try:
        calls = [v.call for v in h.versions]
    finally:
        event.remove(ctx.store.engine, "before_cursor_execute", count)
    assert len({c.id for c in calls if c is not None}) == 25 and calls[-1] is None
    assert len(statements) <= 5  # content links, calls, inputs, outputs, names


# ------------------------------------------------------------------ graph
def test_upstream_graph_of_a_chain(ctx: Context, tmp_path: Path) -> None:
    path = _chain(ctx, tmp_path)
    raw_id, y_id, z_id = _ids(ctx, "raw", "y", "z")
    h = ctx.history("z")
    g = h.upstream()
    assert isinstance(g, LineageGraph) and len(g) == 6 and not g.truncated
    assert sorted(n.kind for n in g) == ["artifact"] * 3 + ["call"] * 2 + ["file"]
    assert g.root.id == f"artifact:{z_id}" and g.root.names == (BoundName("z", True),)
    shift_call = f"call:{h.call.id}"  # type: ignore[union-attr]
    scale_call = f"call:{ctx.history('y').call.id}"  # type: ignore[union-attr]
    assert {(e.source, e.target, e.kind, e.name) for e in g.edges} == {
        (shift_call, f"artifact:{z_id}", "output", None),
        (f"artifact:{y_id}", shift_call, "input", "a"),
        (scale_call, f"artifact:{y_id}", "output", None),
        (f"artifact:{raw_id}", scale_call, "input", "x"),
        (f"file:{path}", f"artifact:{raw_id}", "ingested", None),
    }
    assert len(g.edges) == 5
    assert [c.function for c in g.calls()] == [f"{HERE}:shift", f"{HERE}:scale"]
    assert g[scale_call].depth == 1 and f"file:{path}" in g
    assert [n.path for n in g.of_kind("file")] == [str(path)]
    assert len(g.edges_of("input")) == 2
    assert g.producer(f"artifact:{y_id}", shift_call) == g[scale_call]
    assert h.upstream(1).root == h.upstream(-1).root == g.root
    assert "3 artifacts, 2 calls, 1 files" in repr(g)


def test_graph_of_plain_and_ingested_versions(ctx: Context, tmp_path: Path) -> None:
    ctx.a = 5
    g = ctx.history("a").upstream()
    assert [n.kind for n in g] == ["artifact", "assignment"]
    (edge,) = g.edges
    assert edge.kind == "assigned" and g[edge.source].path == ctx.history("a").latest.origin
    path = tmp_path / "in.npy"
    np.save(path, np.zeros(3))
    ctx.raw = provstore.File(path)
    g = ctx.history("raw").upstream()
    assert [n.kind for n in g] == ["artifact", "file"]
    assert [e.kind for e in g.edges] == ["ingested"]
    del ctx.a
    with pytest.raises(ValueError, match="deletion"):
        ctx.history("a").upstream()


QUOTED = r'"(?:[^"\\]|\\.)*"'
DOT_NODE = re.compile(rf"^  {QUOTED} \[label={QUOTED}, shape=\w+\];$")
DOT_EDGE = re.compile(rf"^  {QUOTED} -> {QUOTED}( \[label={QUOTED}\])?;$")


def _dot_body(dot: str) -> list[str]:
    lines = dot.strip().splitlines()
    assert lines[:3] == ["digraph lineage {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    assert lines[-1] == "}"
    body = lines[3:-1]
    assert all(DOT_NODE.match(line) or DOT_EDGE.match(line) for line in body), body
    return body


def test_to_dot_is_valid_and_has_the_edges(ctx: Context, tmp_path: Path) -> None:
    _chain(ctx, tmp_path)
    g = ctx.history("z").upstream()
    dot = g.to_dot()
    body = _dot_body(dot)
    assert sum(bool(DOT_EDGE.match(line)) for line in body) == len(g.edges) == 5
    (y_id,) = _ids(ctx, "y")
    assert f'"artifact:{y_id}" -> "call:{g.calls()[0].id}" [label="a"];' in dot
    weird = tmp_path / 'we"ird\\.npy'  # quotes and backslashes are escaped
    np.save(weird, np.zeros(2))
    ctx.q = provstore.File(weird)
    dot = ctx.history("q").upstream().to_dot()
    assert len(_dot_body(dot)) == 3 and 'we\\"ird\\\\.npy' in dot


def test_to_frame(ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _chain(ctx, tmp_path)
    g = ctx.history("z").upstream()
    frame = g.to_frame()
    assert len(frame) == len(g) and list(frame["kind"]).count("call") == 2
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas"):
        g.to_frame()


def test_recursive_walk_of_a_deep_chain(ctx: Context) -> None:
    ctx.start = 0
    value = ctx.start
    for _ in range(50):
        value = step(value)
    ctx.end = value
    h = ctx.history("end")
    g = h.upstream()
    assert len(g.calls()) == 50 and not g.truncated
    assert max(n.depth for n in g.of_kind("call")) == 49
    (assigned,) = g.of_kind("assignment")
    assert assigned.path == ctx.history("start").latest.origin
    assert len(g.edges) == 50 * 2 + 1  # output + input per call, the assignment
    short = h.upstream(depth=10)
    assert len(short.calls()) == 10 and short.truncated
    assert not short.of_kind("assignment")
    assert "deeper lineage" in str(h)  # the tree stops at TREE_DEPTH levels
    with pytest.raises(ValueError, match="at least 1"):
        h.upstream(depth=0)


def test_diamond_is_walked_and_drawn_once(ctx: Context) -> None:
    ctx.start = 5
    top = step(ctx.start)
    left, right = scale(top, 2), scale(top, 3)
    ctx.bottom = shift(left, right)
    h = ctx.history("bottom")
    g = h.upstream()
    assert sorted(c.function.split(":")[1] for c in g.calls()) == [
        "scale", "scale", "shift", "step"]
    text = str(h)
    assert text.count(f"{HERE}:step(") == 2 and "drawn above" in text


# ------------------------------------------------------------------- text
def test_str_draws_the_tree_then_the_versions(ctx: Context, tmp_path: Path) -> None:
    path = _chain(ctx, tmp_path)
    text = str(ctx.history("z"))
    lines = text.splitlines()
    assert lines[0].startswith("z = npy  float64  6")
    assert re.match(rf"← {HERE}:shift\(\w{{12}}\)  b=1\.0$", lines[1])
    assert re.match(rf"  a ← y ← {HERE}:scale\(\w{{12}}\)  k=3$", lines[2])
    assert lines[3] == f"    x ← raw ← ingested from {path}"
    assert "z: 1 version(s)" in text and "from call" in text
    assert str(ctx.history("raw")).splitlines()[1] == f"← ingested from {path}"
    ctx.n = 1
    assert "← assigned at " in str(ctx.history("n"))
    h = ctx.history("z")
    tree = str(h).split("\n\n")[0]  # the tree part; versions become a table
    assert f"<pre>{html.escape(tree)}</pre>" in h._repr_html_()


def test_str_of_a_deleted_name(ctx: Context) -> None:
    ctx.x = 1
    del ctx.x
    text = str(ctx.history("x"))
    assert text.startswith("x = deleted  (v2)") and "x: 2 version(s)" in text
    assert ctx.history("x").call is None


# ---------------------------------------------------------------- explain
def test_explain_first_computation_and_plain_values(ctx: Context, tmp_path: Path) -> None:
    _chain(ctx, tmp_path)
    assert "first computation" in ctx.explain("z")
    assert "not computed by a tracked call" in ctx.explain("raw")
    ctx.plain = 1
    ctx.plain = step(1)
    assert "first computation" in ctx.explain("plain")
    del ctx.plain
    assert "was deleted" in ctx.explain("plain")


def test_explain_after_changing_an_argument(ctx: Context, tmp_path: Path) -> None:
    path = _chain(ctx, tmp_path)
    ctx.y = scale(ctx.raw, k=4)
    text = ctx.explain("y")
    assert "compared with v1" in text and "code: unchanged" in text
    assert re.search(r"  k: \w{12} → \w{12}  \(3 → 4\)", text)
    assert "inputs unchanged: x" in text
    np.save(path.with_name("other.npy"), np.ones(6))
    ctx.other = provstore.File(path.with_name("other.npy"))
    ctx.y = scale(ctx.other, k=4)
    assert re.search(r"  x: \w{12} → \w{12}  \(raw → other\)", ctx.explain("y"))


def test_explain_forced_recompute(ctx: Context) -> None:
    ctx.r = noisy(3)
    ctx.r = noisy.recompute(3)
    text = ctx.explain("r")
    assert "same key: forced recompute" in text and "compared with v1" in text


def test_explain_reused_result(ctx: Context) -> None:
    ctx.y = step(1)
    ctx.y = step(2)
    ctx.y = step(1)  # a hit: the call of v1 again
    text = ctx.explain("y")
    assert "a cached result was reused" in text


Loader = Callable[[str], types.ModuleType]


@pytest.fixture
def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loader]:
    """Write one module to tmp_path and import it afresh (same name every time)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"lineage_mod_{uuid.uuid4().hex[:10]}"

    def _load(source: str) -> types.ModuleType:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        linecache.cache.pop(str(path), None)
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        return importlib.import_module(name)

    yield _load
    sys.modules.pop(name, None)


V1 = """
def helper(x):
    return x + 1

def f(x):
    return helper(x) * 2
"""
V2 = """
def helper(x):
    return x + 10

def f(x):
    return helper(x) * 3
"""


def test_explain_after_changing_code(ctx: Context, load: Loader) -> None:
    old = ctx.track(load(V1).f)
    ctx.y = old(1)
    new = ctx.track(load(V2).f)
    assert old.identity == new.identity
    ctx.y = new(1)
    text = ctx.explain("y")
    assert "code: changed" in text and "dependencies changed:" in text
    assert re.search(rf"    {old.identity.split(':')[0]}:helper: \w{{12}} → \w{{12}}", text)
    assert "-    return helper(x) * 2" in text and "+    return helper(x) * 3" in text
    assert "inputs unchanged: x" in text


def test_tracked_function_explain(ctx: Context, load: Loader) -> None:
    assert "first computation" in never_called.explain(1)
    ctx.y = step(1)
    assert "\nhit: call" in step.explain(1)
    text = step.explain(ctx.y)  # 2: the value bound to y, linked by content
    assert "miss" in text and "code: unchanged" in text
    assert re.search(r"  x: \w{12} → \w{12}  \(1 → y\)", text)
    old = ctx.track(load(V1).f)
    old(1)
    new = ctx.track(load(V2).f)
    text = new.explain(1)
    assert "miss" in text and "code: changed" in text and "+    return helper(x) * 3" in text
    assert "inputs unchanged: x" in text


def test_history_finds_versions_by_number_after_gc_leaves_gaps(ctx: Context) -> None:
    for value in range(4):
        ctx.x = np.full(3, value)
    maintenance.gc(ctx.store, dry_run=False, keep_versions=1)
    h = ctx.history("x")
    assert [v.number for v in h.versions] == [4]
    assert h.version(4) is h.latest and h.version(-1) is h.latest
    graph = h.upstream(version=4)  # once an IndexError: position 4 of a 1-long list
    assert graph.root.artifact_id == h.latest.artifact_id
    # Once silently the lineage of version 4; now the collected version is named missing.
    for number in (1, 3, 5):
        with pytest.raises(NotFoundError, match=r"has versions 4, not " + str(number)):
            h.upstream(version=number)
    with pytest.raises(NotFoundError, match="has versions 4"):
        ctx.get("x", version=2)
