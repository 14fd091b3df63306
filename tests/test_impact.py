"""Comparing lineages and what a change affects: History.diff, dependents, stale, CLI."""

from __future__ import annotations

import importlib
import itertools
import json
import linecache
import os
import sys
import textwrap
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from provstore.cli import cli
from provstore.context import Context
from provstore.errors import NotFoundError

Loader = Callable[[str], types.ModuleType]

PIPELINE = """
import numpy as np

def helper(x):
    return x + {offset}

def smooth(img, sigma):
    return helper(np.asarray(img) * sigma)

def threshold(img, level):
    return np.asarray(img) > level
"""


@pytest.fixture
def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loader]:
    """Write one module to tmp_path and import it afresh (same name every time)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"impact_mod_{uuid.uuid4().hex[:10]}"

    stamps = itertools.count(1_700_000_000)

    def _load(source: str) -> types.ModuleType:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        # Each edit gets a later mtime: an edit of the same size within one
        # timestamp tick looks unchanged to mtime+size caches (linecache's too).
        stamp = next(stamps)
        os.utime(path, (stamp, stamp))
        linecache.cache.pop(str(path), None)
        importlib.invalidate_caches()
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        return importlib.import_module(name)

    yield _load
    sys.modules.pop(name, None)


def _pipeline(ctx: Context, mod: types.ModuleType, sigmas: tuple[float, ...] = (1.0, 2.0),
              ) -> None:
    """bold (assigned) → smooth(sigma) → sm → threshold → mask, one scope per sigma."""
    smooth, threshold = ctx.track(mod.smooth), ctx.track(mod.threshold)
    with ctx.scope(subject="01"):
        if "bold" not in ctx.names(inherited=False):
            ctx.bold = np.arange(8.0)
        for sigma in sigmas:
            with ctx.scope(sigma=sigma):
                ctx.sm = smooth(ctx.bold, sigma)
                ctx.mask = threshold(ctx.sm, 5)


# ------------------------------------------------------------------ diff
def test_diff_reports_a_param_change(ctx: Context, load: Loader) -> None:
    _pipeline(ctx, load(PIPELINE.format(offset=1)))
    d = ctx.history("subject=01/sigma=2.0/mask").diff(ctx.history("subject=01/sigma=1.0/mask"))
    assert not d.identical
    text = str(d)
    assert "code: same" in text  # threshold's code
    assert "input img: subject=01/sigma=2.0/sm" in text
    assert "img: param sigma: 2.0 → 1.0" in text  # one level up: smooth's parameter
    assert "img: inputs: same (img)" in text  # both smoothed the same bold
    kinds = {(x["kind"], x["where"]) for x in d.to_dict()["divergences"]}
    assert kinds == {("input", ""), ("param", "img")}
    json.dumps(d.to_dict())


def test_diff_of_a_param_at_the_top(ctx: Context, load: Loader) -> None:
    _pipeline(ctx, load(PIPELINE.format(offset=1)))
    d = ctx.history("subject=01/sigma=1.0/sm").diff(ctx.history("subject=01/sigma=2.0/sm"))
    [param] = d.divergences
    assert (param.kind, param.where, param.text) == ("param", "", "param sigma: 1.0 → 2.0")
    assert "inputs: same (img)" in str(d)


def test_diff_reports_a_code_change_with_the_source_diff(ctx: Context, load: Loader) -> None:
    _pipeline(ctx, load(PIPELINE.format(offset=1)), sigmas=(1.0,))
    old = ctx.history("subject=01/sigma=1.0/sm")  # read now: v1 is its current version
    _pipeline(ctx, load(PIPELINE.format(offset=10)), sigmas=(1.0,))
    new = ctx.history("subject=01/sigma=1.0/sm")
    assert len(new) == 2
    d = new.diff(old)
    code = d.divergences[0]
    assert code.kind == "code" and "changed" in code.text
    details = "\n".join(code.details)
    assert "dependencies changed:" in details and ":helper:" in details
    assert "source: unchanged" in details  # smooth itself is the same: only helper changed
    assert "inputs: same (img)" in str(d) and "param" not in str(d)


def test_diff_shows_the_unified_diff_of_the_stored_sources(ctx: Context, load: Loader) -> None:
    v1 = PIPELINE.format(offset=1)
    _pipeline(ctx, load(v1), sigmas=(1.0,))
    old = ctx.history("subject=01/sigma=1.0/sm")
    _pipeline(ctx, load(v1.replace("* sigma)", "* sigma * 2)")), sigmas=(1.0,))
    [code, *_] = ctx.history("subject=01/sigma=1.0/sm").diff(old).divergences
    details = "\n".join(code.details)
    assert "-    return helper(np.asarray(img) * sigma * 2)" in details
    assert "+    return helper(np.asarray(img) * sigma)" in details


def test_identical_lineage(ctx: Context, load: Loader) -> None:
    mod = load(PIPELINE.format(offset=1))
    _pipeline(ctx, mod, sigmas=(2.0,))
    ctx.copy = ctx.track(mod.threshold)(ctx["subject=01/sigma=2.0/sm"], 5)  # a cache hit
    d = ctx.history("copy").diff(ctx.history("subject=01/sigma=2.0/mask"))
    assert d.identical
    v = ctx.history("copy").latest
    assert str(d).splitlines()[1:3] == [
        f"value: same artifact {v.artifact_id} ({(v.digest or '')[:12]})", "identical lineage"]
    assert d.to_dict()["identical"] is True


def test_diff_of_plain_assignments(ctx: Context) -> None:
    ctx.a = np.arange(3)
    ctx.b = np.arange(4)
    ctx.c = np.arange(3)
    assert ctx.history("a").diff(ctx.history("c")).identical
    [origin] = ctx.history("a").diff(ctx.history("b")).divergences
    assert origin.kind == "origin" and "test_impact.py" in origin.text


# ------------------------------------------------------------ dependents
def test_dependents_through_a_two_step_chain(ctx: Context, load: Loader) -> None:
    _pipeline(ctx, load(PIPELINE.format(offset=1)), sigmas=(2.0,))
    found = ctx.dependents("subject=01/bold")
    assert [(d.path, d.depth) for d in found] == [
        ("subject=01/sigma=2.0/sm", 1), ("subject=01/sigma=2.0/mask", 2)]
    assert found[0].function.endswith(":smooth") and found[1].function.endswith(":threshold")
    assert found[1].version == 1 and "via" in str(found[1])
    direct = ctx.dependents("subject=01/bold", transitive=False)
    assert [d.path for d in direct] == ["subject=01/sigma=2.0/sm"]
    assert ctx.dependents("subject=01/sigma=2.0/mask") == []
    with ctx.scope(subject="01"):  # names resolve like reads
        assert [d.path for d in ctx.dependents("bold")] == [d.path for d in found]


def test_dependents_skip_rebound_results_and_deleted_names(ctx: Context, load: Loader) -> None:
    _pipeline(ctx, load(PIPELINE.format(offset=1)), sigmas=(2.0,))
    with ctx.scope("subject=01/sigma=2.0"):
        ctx.mask = np.zeros(2)  # no longer computed from bold
    assert [d.path for d in ctx.dependents("subject=01/bold")] == ["subject=01/sigma=2.0/sm"]
    with ctx.scope(subject="01"):
        del ctx.bold
    with pytest.raises(NotFoundError, match="deleted"):
        ctx.dependents("subject=01/bold")


# ------------------------------------------------------------------ stale
def test_nothing_is_stale_after_a_fresh_run(ctx: Context, load: Loader) -> None:
    _pipeline(ctx, load(PIPELINE.format(offset=1)))
    assert ctx.stale() == []


def test_stale_after_editing_a_helper(ctx: Context, load: Loader) -> None:
    mod = load(PIPELINE.format(offset=1))
    _pipeline(ctx, mod)
    load(PIPELINE.format(offset=10))  # edited and reloaded: smooth's helper changed
    found = ctx.stale()
    assert [s.path for s in found] == ["subject=01/sigma=1.0/sm", "subject=01/sigma=2.0/sm"]
    assert found[0].reason == f"code changed: {mod.__name__}:helper"
    assert found[0].call_id == ctx.history("subject=01/sigma=1.0/sm").call.id  # type: ignore[union-attr]
    assert [s.path for s in ctx.scope("subject=01/sigma=2.0").stale()] == [
        "subject=01/sigma=2.0/sm"]
    assert len(ctx.history("subject=01/sigma=1.0/sm")) == 1  # nothing recomputed or deleted


def test_stale_after_rebinding_an_input(ctx: Context, load: Loader) -> None:
    _pipeline(ctx, load(PIPELINE.format(offset=1)))
    with ctx.scope(subject="01"):
        ctx.bold = np.arange(9.0)
    found = ctx.stale()
    assert [(s.path, s.reason) for s in found] == [
        ("subject=01/sigma=1.0/sm", "input img rebound: subject=01/bold v1 → v2"),
        ("subject=01/sigma=2.0/sm", "input img rebound: subject=01/bold v1 → v2")]
    with ctx.scope("subject=01/sigma=1.0"):
        ctx.sm = np.zeros(3)  # the mask's input rebound too
    assert ("subject=01/sigma=1.0/mask", "input img rebound: subject=01/sigma=1.0/sm v1 → v2"
            ) in [(s.path, s.reason) for s in ctx.stale()]


def test_unchecked_results_are_counted_and_listed_on_request(ctx: Context) -> None:
    @ctx.track
    def local(x: Any) -> Any:
        return x + 1

    ctx.y = local(np.arange(3))
    found = ctx.stale()
    assert found == []
    why = f"{__name__}:{local.__qualname__} is defined inside a function"
    assert [(u.path, u.reason) for u in found.unchecked] == [("y", why)]
    assert found.summary() == [f"1 result not checked: {why}"]
    [s] = ctx.stale(unimportable=True)
    assert (s.path, s.reason) == ("y", f"not checked: {why}")
    assert s.to_dict()["reasons"] == [f"not checked: {why}"]


# -------------------------------------------------------------------- CLI
def run(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", str(store), *args], catch_exceptions=False)


def test_cli_stale(ctx: Context, store_dir: Path, load: Loader) -> None:
    _pipeline(ctx, load(PIPELINE.format(offset=1)))
    result = run(store_dir, "stale")
    assert result.exit_code == 0 and "nothing is stale" in result.output
    with ctx.scope(subject="01"):
        ctx.bold = np.arange(9.0)
    result = run(store_dir, "stale", "subject=01/sigma=2.0")
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "subject=01/sigma=2.0/sm v1: input img rebound: subject=01/bold v1 → v2 (call "
        f"{ctx.history('subject=01/sigma=2.0/sm').call.id})",  # type: ignore[union-attr]
        "  and downstream: subject=01/sigma=2.0/mask v1"]
    data = json.loads(run(store_dir, "stale", "--json").output)
    assert [s["path"] for s in data["stale"]] == ["subject=01/sigma=1.0/sm",
                                                  "subject=01/sigma=2.0/sm"]
    assert data["stale"][0]["reason"].startswith("input img rebound")
    assert data["stale"][0]["downstream"] == ["subject=01/sigma=1.0/mask v1"]
    assert data["unchecked"] == []


def test_cli_diff(ctx: Context, store_dir: Path, load: Loader) -> None:
    _pipeline(ctx, load(PIPELINE.format(offset=1)))
    a, b = "subject=01/sigma=1.0/sm", "subject=01/sigma=2.0/sm"
    result = run(store_dir, "diff", a, b)
    assert result.exit_code == 0
    assert "param sigma: 1.0 → 2.0" in result.output
    data = json.loads(run(store_dir, "diff", a, a, "--json").output)
    assert data["identical"] is True and data["a"] == a
    data = json.loads(run(store_dir, "diff", f"{a}", "subject=01/sigma=2.0/mask", "--depth",
                          "2", "--json").output)
    assert data["divergences"][0]["kind"] == "function"
    missing = CliRunner().invoke(cli, ["--store", str(store_dir), "diff", a, "nope"])
    assert missing.exit_code == 2 and "nope" in missing.output


# ----------------------------------------------------- helper sources, versions
HELPED = """
SCALE = 2

def helper(x):
    return x + 1

def smooth(x):
    return helper(x) * SCALE
"""


def test_explain_and_diff_show_a_changed_helper_and_constant(ctx: Context, store_dir: Path,
                                                             load: Loader) -> None:
    mod = load(HELPED)
    ctx.r = ctx.track(mod.smooth)(1)
    mod = load(HELPED.replace("x + 1", "x + 5").replace("SCALE = 2", "SCALE = 3"))
    smooth = ctx.track(mod.smooth)
    explained = smooth.explain(1)  # before the call: a miss, compared with the last call
    ctx.r = smooth(1)
    for text in (explained, ctx.history("r").explain(),
                 str(ctx.history("r").diff(version=1)),
                 run(store_dir, "diff", "r@1", "r@2").output,
                 run(store_dir, "explain", "r").output):
        assert f"{mod.__name__}:helper diff:" in text, text
        assert "-    return x + 1" in text and "+    return x + 5" in text
        assert f"{mod.__name__}.SCALE diff:" in text
        assert "    -2\n" in text and "    +3" in text


def test_diff_two_versions_of_one_name(ctx: Context, store_dir: Path, load: Loader) -> None:
    mod = load(HELPED)
    for x in (1, 2, 3):
        ctx.r = ctx.track(mod.smooth)(x)
    h = ctx.history("r")
    d = h.diff(version=1, other_version=3)
    assert (d.a, d.b) == ("r@1", "r@3")
    assert [div.text for div in d.divergences] == ["param x: 1 → 3"]
    assert h.diff(version=2).b == "r@3"
    assert [div.text for div in h.diff(ctx.history("r"), version=-2).divergences] == [
        "param x: 2 → 3"]
    with pytest.raises(NotFoundError, match=r"r has versions 1\.\.3, not 7"):
        h.diff(version=7)
    out = run(store_dir, "diff", "r@1", "r@2").output
    assert out.splitlines()[0] == "r@1 vs r@2" and "param x: 1 → 2" in out
    bad = CliRunner().invoke(cli, ["--store", str(store_dir), "diff", "r@x", "r"])
    assert bad.exit_code == 2 and "r@x" in bad.output


RICH = """
import functools

LEVELS = (1, 2.5, -3, "a", b"b", None, True, {"k": [1, 2]}, {4, 5})
if True:
    FACTOR = 2


class Scaler:
    '''Scales.'''

    def __init__(self, by):
        self.by = by

    def apply(self, x):
        return x * self.by


@functools.lru_cache(maxsize=None)
def base(n):
    return n + len(LEVELS)


def rich(x):
    '''The tracked one.'''
    return Scaler(FACTOR).apply(x) + base(1)
"""


def test_unchanged_code_is_never_reported_stale(ctx: Context, load: Loader) -> None:
    """Static digests of classes, decorated helpers and literal constants match the live ones."""
    mod = load(RICH)
    ctx.r = ctx.track(mod.rich)(1)
    found = ctx.stale()
    assert found == [] and found.unchecked == []
    load(RICH.replace("return x * self.by", "return x * self.by * 1"))
    assert [s.reason for s in ctx.stale()] == [f"code changed: {mod.__name__}:Scaler"]
    load(RICH.replace("FACTOR = 2", "FACTOR = 3").replace("-3,", "-4,"))
    assert [s.reason for s in ctx.stale()] == [
        f"code changed: {mod.__name__}.FACTOR, {mod.__name__}.LEVELS"]
