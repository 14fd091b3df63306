"""Retention (issue 13 §1): gc rules that free real bytes, pins, and what gc reports.

The scenario of the issue: a pipeline whose helper changed was rerun, and
``gc --keep-versions 1 --apply`` freed nothing, because the old calls kept
their outputs alive. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

import provstore
from provstore import maintenance as m
from provstore.cli import cli
from provstore.errors import MissingKeyError, NotFoundError, ReservedNameError
from provstore.lineage import format_size
from sql import scalar, sql


def run_cli(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", str(store), *args], catch_exceptions=False)


def disk(root: Path) -> dict[str, int]:
    """Every object file under *root*/objects with its size: the bytes on disk."""
    objects = root / "objects"
    return {str(p.relative_to(objects)): p.stat().st_size
            for p in objects.rglob("*") if p.is_file()}


def count(store_dir: Path, table: str) -> int:
    return int(scalar(store_dir, f"SELECT count(*) FROM {table}"))


PIPELINE = """
import numpy as np
import provstore

RUNS = []

def helper(x):
    return x * {factor}

@provstore.track
def smooth(x):
    RUNS.append("smooth")
    return helper(x) + 1.0

@provstore.track
def summarize(y):
    RUNS.append("summarize")
    return y.sum(axis=0)
"""


def run_pipeline(ctx: provstore.Context, mod: ModuleType) -> None:
    with ctx:
        for subject in ("01", "02", "03"):
            with ctx.scope(subject=subject):
                # Values chosen so that no two results are equal by chance.
                ctx.raw = np.full((100, 50), float(subject) + 0.5)
                ctx.smoothed = mod.smooth(ctx.raw)  # an intermediate bound to a name
                ctx.summary = mod.summarize(mod.smooth(ctx.raw * 10))  # and one bound nowhere


# ------------------------------------------------------------ the scenario
def test_after_a_helper_change_one_command_brings_the_store_back_to_its_current_results(
        ctx: provstore.Context, store_dir: Path, tmp_path: Path,
        module_factory: Callable[[str], ModuleType]) -> None:
    run_pipeline(ctx, module_factory(PIPELINE.format(factor=2)))
    mod = module_factory(PIPELINE.format(factor=3))  # the helper changed: everything reruns
    run_pipeline(ctx, mod)
    fresh = provstore.open(tmp_path / "fresh")  # the current code only, from scratch
    run_pipeline(fresh, mod)
    before = disk(store_dir)

    # The command of the issue still frees nothing: the old calls keep their outputs.
    assert run_cli(store_dir, "gc", "--apply", "--keep-versions", "1").exit_code == 0
    assert disk(store_dir) == before

    result = run_cli(store_dir, "gc", "--apply", "--keep-versions", "1", "--keep-calls", "1")
    assert result.exit_code == 0, result.output
    after = disk(store_dir)
    assert after == disk(tmp_path / "fresh")
    assert sum(after.values()) < sum(before.values())
    assert f"freed {format_size(sum(before.values()) - sum(after.values()))}" \
        in result.output
    assert m.verify(ctx.store).ok
    mod.RUNS.clear()
    run_pipeline(ctx, mod)  # every current result is still a hit
    assert mod.RUNS == []
    np.testing.assert_array_equal(ctx["subject=02/smoothed"], np.full((100, 50), 8.5))
    assert count(store_dir, "calls") == 3 * 3  # smooth bound, smooth unbound, summarize


# ------------------------------------------------------------------ rules
def _tracked(ctx: provstore.Context, log: list[Any]) -> Any:
    @ctx.track
    def f(x: int) -> Any:
        log.append(x)
        return np.full(1000, x, dtype=np.float64)

    return f


def test_keep_calls_keeps_the_newest_calls_of_each_function(ctx: provstore.Context,
                                                           store_dir: Path) -> None:
    log: list[int] = []
    f = _tracked(ctx, log)
    for x in range(5):
        f(x)
    report = m.gc(ctx.store, dry_run=False, keep_calls=2)
    assert report.calls == 3 and report.artifacts == 3 and count(store_dir, "calls") == 2
    log.clear()
    f(3), f(4), f(0)
    assert log == [0]  # the dropped call is computed again, the kept ones hit
    assert m.verify(ctx.store).ok


def test_keep_calls_counts_per_scope(ctx: provstore.Context) -> None:
    log: list[int] = []
    f = _tracked(ctx, log)
    for scope, base in (("a", 0), ("b", 10)):
        with ctx.scope(scope):
            for x in range(3):
                ctx.y = f(base + x)
    m.gc(ctx.store, dry_run=False, keep_versions=1, keep_calls=2)
    log.clear()
    for base in (0, 10):
        f(base + 1), f(base + 2)  # the two newest of each scope, not of the function
    assert log == []
    f(0), f(10)
    assert log == [0, 10]


def test_current_results_and_their_lineage_are_always_kept(ctx: provstore.Context) -> None:
    log: list[int] = []
    f = _tracked(ctx, log)

    @ctx.track
    def g(a: Any) -> Any:
        return a.sum()

    ctx.total = g(f(7))  # f(7) is bound nowhere, but the current total was made from it
    for x in range(3):
        f(x)
    m.gc(ctx.store, dry_run=False, keep_calls=1, older_than="0s")
    log.clear()
    f(7)
    assert log == []
    graph = ctx.history("total").upstream()
    assert {n.call.function.rsplit(".", 1)[-1] for n in graph.nodes
            if n.kind == "call" and n.call is not None} == {"f", "g"}


def _age(store_dir: Path, call_id: int, days: float) -> None:
    then = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=days)
    # As text: sqlite3's default datetime adapter is deprecated since Python 3.12.
    sql(store_dir, "UPDATE calls SET started = :t, finished = :t WHERE id = :id",
        {"t": then.strftime("%Y-%m-%d %H:%M:%S.%f"), "id": call_id}, write=True)


def _call_ids(store_dir: Path) -> list[int]:
    return [r["id"] for r in sql(store_dir, "SELECT id FROM calls ORDER BY id")]


def _four_calls_three_aged(ctx: provstore.Context,
                           store_dir: Path) -> tuple[Any, list[int], list[int]]:
    """f(0..3) computed, the first three made ten days old: f, its body log, the call ids."""
    log: list[int] = []
    f = _tracked(ctx, log)
    for x in range(4):
        f(x)
    ids = _call_ids(store_dir)
    for call_id in ids[:3]:
        _age(store_dir, call_id, days=10)
    return f, log, ids


def test_older_than_drops_calls_last_used_before_the_cutoff(ctx: provstore.Context,
                                                            store_dir: Path) -> None:
    f, log, ids = _four_calls_three_aged(ctx, store_dir)
    ctx.store.memo = type(ctx.store.memo)()  # a new session: hits go to the database
    f(1)  # an old result used today
    report = m.gc(ctx.store, dry_run=False, older_than="7d")
    assert report.calls == 2
    assert sorted(set(ids) - set(_call_ids(store_dir))) == [ids[0], ids[2]]
    log.clear()
    f(1), f(3), f(0)
    assert log == [0]


def test_older_than_takes_dates_ages_and_timedeltas(ctx: provstore.Context,
                                                    store_dir: Path) -> None:
    f = _tracked(ctx, [])
    f(1), f(2)
    _age(store_dir, _call_ids(store_dir)[0], days=3)
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    assert m.gc(ctx.store, older_than=dt.timedelta(days=2)).calls == 1
    assert m.gc(ctx.store, older_than="4d").calls == 0
    assert m.gc(ctx.store, older_than=future.date().isoformat()).calls == 1  # newest stays
    with pytest.raises(ValueError, match="neither an age"):
        m.gc(ctx.store, older_than="last tuesday")
    bad = run_cli(store_dir, "gc", "--older-than", "soon")
    assert bad.exit_code == 2 and "neither an age" in bad.output


def test_max_bytes_drops_the_least_recently_used_first(ctx: provstore.Context,
                                                       store_dir: Path) -> None:
    log: list[int] = []
    f = _tracked(ctx, log)
    for x in range(5):
        f(x)
    ctx.kept = f(0)  # bound: never evicted, even least recently used
    ids = _call_ids(store_dir)
    for age, call_id in zip((5, 4, 3, 2, 1), ids):
        _age(store_dir, call_id, days=age)
    ctx.store.memo = type(ctx.store.memo)()
    f(1)  # oldest but one, used now: the most recently used
    ctx.store.flush_hits()
    size = ctx.store.artifact(ctx.history("kept").latest.artifact_id or 0).size
    report = m.gc(ctx.store, dry_run=False, max_bytes=3 * size)
    assert report.kept_bytes <= 3 * size and report.calls == 2
    log.clear()
    f(0), f(1), f(4), f(2), f(3)
    assert log == [2, 3]  # f(2), f(3) were the least recently used unbound calls
    assert m.verify(ctx.store).ok


def test_max_bytes_never_drops_pinned_or_current_results(ctx: provstore.Context) -> None:
    f = _tracked(ctx, [])
    ctx.a = f(1)
    ctx.b = f(2)
    ctx.b = f(3)
    ctx.pin("b")
    report = m.gc(ctx.store, dry_run=False, max_bytes="1k")
    assert report.calls == 0 and report.kept_bytes > 1000
    assert "over the 1000 B limit" in str(report)
    assert len(ctx.history("b")) == 2 and m.verify(ctx.store).ok


def test_sizes_are_parsed_or_refused(ctx: provstore.Context, store_dir: Path) -> None:
    assert m.common.parse_size("10G") == 10**10 and m.common.parse_size("1.5KiB") == 1536
    assert m.common.parse_size(500) == 500 and m.common.parse_size("2 MB") == 2 * 10**6
    with pytest.raises(ValueError, match="not a size"):
        m.gc(ctx.store, max_bytes="lots")
    assert run_cli(store_dir, "gc", "--max-bytes", "lots").exit_code == 2
    with pytest.raises(ValueError, match="keep_calls"):
        m.gc(ctx.store, keep_calls=0)


# -------------------------------------------------------------------- pins
def test_a_pin_keeps_every_version_and_its_lineage(ctx: provstore.Context,
                                                   store_dir: Path) -> None:
    log: list[int] = []
    f = _tracked(ctx, log)

    @ctx.track
    def g(a: Any) -> Any:
        return a * 2

    for x in range(3):
        ctx.raw = np.full(10, x)
        ctx.y = g(f(x))  # f's result is bound nowhere
    ctx.pin("y")
    report = m.gc(ctx.store, dry_run=False, keep_versions=1, keep_calls=1)
    assert report.bindings == 2  # raw v1, v2: not pinned
    assert [v.number for v in ctx.history("y")] == [1, 2, 3]
    np.testing.assert_array_equal(ctx.get("y", version=1), np.full(1000, 0.0))
    upstream = ctx.history("y").upstream(version=1)
    assert sum(n.kind == "call" for n in upstream.nodes) == 2
    log.clear()
    g(f(0))
    assert log == []  # the pinned version's lineage still hits
    assert ctx.pins() == ["y"]
    assert m.verify(ctx.store).ok

    ctx.unpin("y")
    m.gc(ctx.store, dry_run=False, keep_versions=1, keep_calls=1)
    assert [v.number for v in ctx.history("y")] == [3]
    g(f(0))
    assert log == [0]


def test_pins_from_the_command_line_and_scopes(ctx: provstore.Context,
                                               store_dir: Path) -> None:
    with ctx.scope(subject="01"):
        ctx.mask = np.ones(3)
    ctx.score = 1
    assert run_cli(store_dir, "pin").output.strip() == "nothing is pinned"
    out = run_cli(store_dir, "pin", "subject=01/mask", "score")
    assert out.exit_code == 0 and "pinned subject=01/mask" in out.output
    assert ctx.pins() == ["score", "subject=01/mask"]
    assert ctx.scope(subject="01").pins() == ["score", "subject=01/mask"]
    assert json.loads(run_cli(store_dir, "pin", "--list", "--json").output) == [
        "score", "subject=01/mask"]
    assert run_cli(store_dir, "unpin", "score").exit_code == 0
    assert ctx.pins() == ["subject=01/mask"]
    missing = run_cli(store_dir, "unpin", "score")
    assert missing.exit_code == 2 and "not pinned" in missing.output
    with pytest.raises(NotFoundError, match="nope"):
        ctx.pin("nope")
    with pytest.raises(MissingKeyError, match="not pinned"):
        ctx.unpin("score")
    for reserved in ("pin", "unpin", "calls", "pins"):
        with pytest.raises(ReservedNameError):
            setattr(ctx, reserved, 1)


# ------------------------------------------------------------------ report
def test_gc_reports_what_it_would_free_and_what_it_freed(ctx: provstore.Context,
                                                         store_dir: Path) -> None:
    f = _tracked(ctx, [])
    for x in range(4):
        ctx.v = f(x)
    ctx.note = {"small": True}
    ctx.note = {"small": False}
    before = disk(store_dir)
    tables = ("bindings", "calls", "call_inputs", "call_outputs", "artifacts",
              "code_versions")
    rows_before = {t: count(store_dir, t) for t in tables}
    dry = m.gc(ctx.store, keep_versions=1, keep_calls=1)
    assert disk(store_dir) == before and rows_before == {t: count(store_dir, t) for t in tables}
    assert "would free" in str(dry) and "dry run" in str(dry)
    done = m.gc(ctx.store, dry_run=False, keep_versions=1, keep_calls=1)
    assert "freed" in str(done) and "would" not in str(done)
    assert (dry.rows, dry.bytes, [f.path for f in dry.files]) == (
        done.rows, done.bytes, [f.path for f in done.files])
    assert done.rows["calls"] == 3 and done.rows["bindings"] == 4
    for table in tables:
        assert count(store_dir, table) == rows_before[table] - done.rows[table]
    freed_on_disk = sum(before.values()) - sum(disk(store_dir).values())
    assert freed_on_disk == sum(f.size for f in done.files) == done.bytes - done.inline_bytes
    assert done.inline_bytes > 0  # the old note was inline
    assert m.verify(ctx.store).ok
    data = run_cli(store_dir, "gc", "--json", "--keep-calls", "1").output
    assert json.loads(data)["rows"]["calls"] == 0


def test_ingested_files_of_dropped_versions_are_freed(ctx: provstore.Context,
                                                      store_dir: Path, tmp_path: Path) -> None:
    for x in range(2):
        path = tmp_path / f"raw{x}.npy"
        np.save(path, np.full(500, x))
        ctx.raw = provstore.File(path)
    assert m.gc(ctx.store, dry_run=False, keep_versions=1).rows["files"] == 1
    assert count(store_dir, "files") == 1 and m.verify(ctx.store).ok
    np.testing.assert_array_equal(ctx.raw, np.full(500, 1))


def test_rules_given_together_keep_what_either_keeps(ctx: provstore.Context,
                                                     store_dir: Path) -> None:
    _, _, ids = _four_calls_three_aged(ctx, store_dir)
    # keep-calls 1 keeps f(3); older-than 7d keeps nothing more: f(0..2) go.
    assert m.gc(ctx.store, keep_calls=1, older_than="7d").calls == 3
    _age(store_dir, ids[2], days=1)
    report = m.gc(ctx.store, dry_run=False, keep_calls=1, older_than="7d")
    assert report.calls == 2 and _call_ids(store_dir) == ids[2:]


def test_a_pin_keeps_ingested_files_and_their_records(ctx: provstore.Context,
                                                      store_dir: Path, tmp_path: Path) -> None:
    for x in range(3):
        path = tmp_path / f"raw{x}.npy"
        np.save(path, np.full(500, x))
        ctx.raw = provstore.File(path)
        if x == 0:
            ctx.pin("raw")
    m.gc(ctx.store, dry_run=False, keep_versions=1, keep_calls=1, max_bytes=0)
    assert count(store_dir, "files") == 3 and len(ctx.history("raw")) == 3
    np.testing.assert_array_equal(ctx.get("raw", version=1), np.full(500, 0))
    assert m.verify(ctx.store).ok
