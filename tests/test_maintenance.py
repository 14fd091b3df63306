"""verify, gc, which and export on real stores (reliability plan V1, V2, P6)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from sqlalchemy.exc import IntegrityError

import provstore
from provstore import maintenance as m
from provstore.errors import CorruptObjectError, MissingKeyError, StoreError
from sql import scalar, sql

HOUR = 3600.0


def _object(ctx: provstore.Context, name: str) -> Path:
    v = ctx.history(name).latest
    assert v.artifact_id is not None
    row = ctx.store.artifact(v.artifact_id)
    return ctx.store.objects.path(row.digest, row.suffix)


def _damage(path: Path, change: Callable[[Path], None]) -> None:
    """Change *path*, then restore its read-only mode and its mtime (the DVC shortcut bait)."""
    before = path.stat()
    os.chmod(path, 0o644)
    change(path)
    os.chmod(path, 0o444)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert after.st_mtime_ns == before.st_mtime_ns
    assert after.st_mode == before.st_mode


def _flip(offset: int, bit: int = 0) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ (1 << bit)]))
    return change


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 1)


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0")


def _orphan(ctx: provstore.Context, age: float, content: bytes = b"orphan") -> Path:
    """An object file published by a writer that died before its row committed."""
    digest = f"{random.getrandbits(128):032x}"
    path = ctx.store.objects.path(digest, ".npy")
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    os.chmod(path, 0o444)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def _artifact_count(store_dir: Path) -> int:
    return int(scalar(store_dir, "SELECT count(*) FROM artifacts"))


@pytest.fixture
def filled(ctx: provstore.Context) -> provstore.Context:
    ctx.a = np.arange(1000, dtype=np.float64)
    ctx.small = np.zeros(0)
    ctx.config = {"threshold": 0.2}
    with ctx.scope(subject="01"):
        ctx.img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    return ctx


# ------------------------------------------------------------------- verify
def test_verify_passes_on_a_healthy_store(filled: provstore.Context) -> None:
    report = m.verify(filled.store)
    assert report.ok and report.problems == []
    assert report.objects == 3 and report.inline == 1
    assert "all intact" in str(report)


@pytest.mark.parametrize(("change", "kind"), [
    (_flip(200), "hash"),
    (_flip(7999, bit=7), "hash"),
    (_truncate, "size"),
    (_append, "size"),
])
def test_verify_detects_changed_bytes_despite_mode_and_mtime(
        filled: provstore.Context, change: Callable[[Path], None], kind: str) -> None:
    _damage(_object(filled, "a"), change)
    report = m.verify(filled.store)
    assert not report.ok
    [problem] = report.problems
    assert problem.kind == kind
    assert [str(b) for b in problem.bindings] == ["a v1"]
    assert "a v1" in str(report)


def test_verify_detects_a_deleted_object(filled: provstore.Context) -> None:
    path = _object(filled, "subject=01/img")
    path.unlink()
    [problem] = m.verify(filled.store).problems
    assert problem.kind == "missing"
    assert problem.bindings[0].path == "subject=01/img"


def test_verify_detects_two_swapped_objects(ctx: provstore.Context) -> None:
    ctx.x, ctx.y = np.arange(10), np.arange(10) + 1
    px, py = _object(ctx, "x"), _object(ctx, "y")
    data_x, data_y = px.read_bytes(), py.read_bytes()
    _damage(px, lambda p: p.write_bytes(data_y))
    _damage(py, lambda p: p.write_bytes(data_x))
    problems = m.verify(ctx.store).problems
    assert sorted((p.kind, p.bindings[0].name) for p in problems) == [("hash", "x"), ("hash", "y")]


def test_verify_finds_every_single_bit_flip(ctx: provstore.Context) -> None:
    rng = random.Random(7)
    for n in (1, 512, 100_000):
        ctx[f"v{n}"] = np.arange(n, dtype=np.int8)
    for _ in range(30):
        path = _object(ctx, f"v{rng.choice([1, 512, 100_000])}")
        offset, bit = rng.randrange(path.stat().st_size), rng.randrange(8)
        _damage(path, _flip(offset, bit))
        assert [p.kind for p in m.verify(ctx.store).problems] == ["hash"]
        _damage(path, _flip(offset, bit))  # flip back
    assert m.verify(ctx.store).ok


def test_verify_reports_stray_files_and_orphans_in_their_categories(
        filled: provstore.Context) -> None:
    orphan = _orphan(filled, age=0)
    stray = filled.store.objects.objects / "notes.txt"
    stray.write_text("written by hand")
    report = m.verify(filled.store)
    assert {(p.kind, p.path) for p in report.problems} == {
        ("orphan", str(orphan.relative_to(filled.store.root))), ("stray", "objects/notes.txt")}
    assert [p.kind for p in report.errors] == ["stray"]
    stray.unlink()
    report = m.verify(filled.store)
    assert report.ok and [p.severity for p in report.problems] == ["notice"]


def test_verify_names_the_calls_of_a_damaged_artifact(ctx: provstore.Context) -> None:
    @ctx.track
    def double(x: Any) -> Any:
        return x * 2

    ctx.x = np.arange(100)
    ctx.y = double(ctx.x)
    _damage(_object(ctx, "x"), _flip(150))
    [problem] = m.verify(ctx.store).problems
    assert [(c.role, c.function.split(":")[-1]) for c in problem.calls] == [
        ("input", "test_verify_names_the_calls_of_a_damaged_artifact.<locals>.double")]


def test_verify_checks_inline_values_and_foreign_keys(filled: provstore.Context,
                                                      store_dir: Path, db_backend: str) -> None:
    sql(store_dir, "UPDATE artifacts SET inline = :bad WHERE inline IS NOT NULL",
        {"bad": b"{not json"}, write=True)
    ghost = ("INSERT INTO bindings (scope_id, name, version, artifact_id, created) "
             "VALUES (1, 'ghost', 1, 999, '2024-01-01')")
    if db_backend == "sqlite":
        # A connection outside provstore leaves SQLite's foreign keys off: the row
        # goes in, and verify's PRAGMA foreign_key_check must find it.
        sql(store_dir, ghost, write=True)
        expected = ["database", "inline"]
    else:
        # PostgreSQL enforces foreign keys for every client: no such row can exist.
        with pytest.raises(IntegrityError):
            sql(store_dir, ghost, write=True)
        expected = ["inline"]
    kinds = sorted(p.kind for p in m.verify(filled.store).problems)
    assert kinds == expected


def test_verify_reports_progress(filled: provstore.Context) -> None:
    seen: list[tuple[str, int, int]] = []
    m.verify(filled.store, progress=lambda *a: seen.append(a))
    assert seen == [("hashing objects", i, 3) for i in (1, 2, 3)] + [
        ("decoding inline values", 1, 1)]


# ----------------------------------------------------------------------- gc
def test_gc_dry_run_removes_nothing(filled: provstore.Context, store_dir: Path) -> None:
    old = _orphan(filled, age=2 * HOUR)
    filled.a = np.ones(3)
    filled.a = np.ones(4)
    report = m.gc(filled.store, keep_versions=1)
    assert report.dry_run and report.bindings == 2 and report.artifacts == 2
    assert {f.reason for f in report.files} == {"orphan", "unreferenced"}
    assert old.exists() and len(filled.history("a")) == 3 and _artifact_count(store_dir) == 6


def test_gc_removes_old_orphans_and_keeps_young_ones(filled: provstore.Context) -> None:
    old, young = _orphan(filled, age=2 * HOUR), _orphan(filled, age=60)
    report = m.gc(filled.store, dry_run=False)
    assert not old.exists() and young.exists()
    assert [f.path for f in report.files] == [str(old.relative_to(filled.store.root))]
    assert report.young == [str(young.relative_to(filled.store.root))]
    assert m.verify(filled.store).ok
    np.testing.assert_array_equal(filled.a, np.arange(1000))


def test_gc_with_zero_grace_on_a_quiescent_store(filled: provstore.Context) -> None:
    # grace=0 also deletes orphans published a moment ago: safe only when no
    # process is writing, since such a file may belong to a row about to commit.
    fresh = _orphan(filled, age=0)
    report = m.gc(filled.store, dry_run=False, grace_seconds=0)
    assert not fresh.exists() and report.young == []
    assert m.verify(filled.store).ok and filled["subject=01/img"].shape == (4, 4, 4)


def test_keep_versions_keeps_current_versions_and_call_outputs(ctx: provstore.Context,
                                                               store_dir: Path) -> None:
    calls: list[int] = []

    @ctx.track
    def double(x: Any) -> Any:
        calls.append(1)
        return x * 2

    for i in range(4):
        ctx.a = np.full(10, i)
    ctx.b = double(ctx.a)
    ctx.b = np.zeros(2)  # the call output is now bound by an old version only
    ctx.c = np.ones(5)
    del ctx.c  # a deletion is a version too, and the current one
    report = m.gc(ctx.store, dry_run=False, keep_versions=1)
    assert report.bindings == 3 + 1 + 1
    assert [len(ctx.history(n)) for n in ("a", "b", "c")] == [1, 1, 1]
    assert ctx.history("c").latest.deleted and "c" not in ctx
    np.testing.assert_array_equal(double(ctx.a), np.full(10, 6))  # still a hit
    assert len(calls) == 1
    assert m.verify(ctx.store).ok
    assert report.artifacts == 3  # a v1-v3; c v1 is the newest row, kept (see the next tests)
    assert len(list(ctx.store.objects.iter_files())) == _artifact_count(store_dir) == 4


def test_keep_versions_two(ctx: provstore.Context) -> None:
    for i in range(5):
        ctx.a = np.full(10, i)
    m.gc(ctx.store, dry_run=False, keep_versions=2)
    assert [v.number for v in ctx.history("a")] == [4, 5]
    # Versions keep their numbers: gc leaves a gap below them.
    np.testing.assert_array_equal(ctx.get("a", version=4), np.full(10, 3))
    np.testing.assert_array_equal(ctx.get("a", version=-2), np.full(10, 3))
    with pytest.raises(MissingKeyError, match=r"versions 4\.\.5, not 1"):
        ctx.get("a", version=1)


def test_gc_keeps_the_newest_artifact_row_so_its_id_is_never_reused(
        ctx: provstore.Context, store_dir: Path) -> None:
    x, y = np.arange(3), np.arange(4)
    ctx.a, ctx.a, ctx.a = x, y, x  # y, the newest artifact row, is unreferenced now
    report = m.gc(ctx.store, dry_run=False, keep_versions=1)
    assert report.artifacts == 0 and _artifact_count(store_dir) == 2
    ctx.b = np.arange(5)
    assert ctx.history("b").latest.artifact_id == 3


def test_gc_spares_the_inputs_of_a_running_call(ctx: provstore.Context) -> None:
    reports: list[m.GcReport] = []

    @ctx.track
    def slow(x: Any) -> Any:
        reports.append(m.gc(ctx.store, dry_run=False, keep_versions=1))
        return x + 1

    ctx.a = np.arange(3)
    old = ctx.a
    ctx.a = np.arange(4)
    ctx.a = np.arange(5)  # only the running call still uses `old`
    np.testing.assert_array_equal(slow(old), np.arange(3) + 1)
    assert reports[0].protected == 1  # `old`, whose only binding version was pruned
    assert reports[0].artifacts == 1  # arange(4): nothing uses it
    assert m.verify(ctx.store).ok


def test_gc_puts_back_a_file_republished_during_the_sweep(
        filled: provstore.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    from provstore.maintenance import collect

    old = _orphan(filled, age=2 * HOUR)
    scan = collect.scan_objects

    def scan_then_republish(store: Any) -> dict[Path, os.stat_result]:
        found = scan(store)
        tmp = old.with_name("republished")
        tmp.write_bytes(old.read_bytes())
        os.replace(tmp, old)  # a writer publishing the same digest: a new inode
        return found

    monkeypatch.setattr(collect, "scan_objects", scan_then_republish)
    report = m.gc(filled.store, dry_run=False)
    assert old.exists() and report.restored and not report.files


def test_gc_rejects_bad_options(ctx: provstore.Context) -> None:
    with pytest.raises(ValueError, match="keep_versions"):
        m.gc(ctx.store, keep_versions=0)
    with pytest.raises(ValueError, match="grace"):
        m.gc(ctx.store, grace_seconds=-1)


WRITER = textwrap.dedent(
    """
    import sys, numpy as np, provstore
    ctx = provstore.open(sys.argv[1])

    @ctx.track
    def double(x):
        return x * 2

    for i in range(int(sys.argv[2])):
        ctx[f"x{i}"] = np.full(2000, i, dtype=np.int64)
        ctx[f"y{i}"] = double(ctx[f"x{i}"])
        ctx.counter = np.array([i])
        # Results bound nowhere, which --keep-calls and --max-bytes drop
        # meanwhile; asking again hits this process's memo of a dropped call.
        scratch = double(np.full(500, i, dtype=np.int64))
        again = double(np.full(500, max(i - 1, 0), dtype=np.int64))
        assert int(scratch[0]) == 2 * i and int(again[0]) == 2 * max(i - 1, 0)
    print("done", flush=True)
    """
)


def test_gc_never_removes_reachable_objects_while_a_writer_binds(
        ctx: provstore.Context, store_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    n = 150
    ctx.seed = np.arange(3)
    writer = subprocess.Popen([sys.executable, str(script), str(store_dir), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweeps = 0
    while writer.poll() is None or sweeps == 0:
        if sweeps % 3 == 2:  # the real command, in its own process
            done = subprocess.run([sys.executable, "-m", "provstore", "--store", str(store_dir),
                                   "gc", "--apply", "--keep-versions", "2", "--keep-calls", "1"],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        elif sweeps % 3 == 1:
            m.gc(ctx.store, dry_run=False, keep_versions=2, max_bytes=0)
        else:
            m.gc(ctx.store, dry_run=False, keep_versions=2, keep_calls=1, older_than="0s")
        sweeps += 1
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0 and out.strip() == "done", err
    assert sweeps > 1
    assert m.verify(ctx.store).ok
    for i in range(n):
        np.testing.assert_array_equal(ctx[f"x{i}"], np.full(2000, i))
        np.testing.assert_array_equal(ctx[f"y{i}"], np.full(2000, 2 * i))
    assert int(ctx.counter[0]) == n - 1 and len(ctx.history("counter")) <= n


# -------------------------------------------------------------- which, export
@pytest.mark.parametrize(("name", "file"), [
    ("a", "a.npy"), ("subject=01/img", "img.nii"), ("config", "config.json")])
def test_which_finds_what_export_wrote(filled: provstore.Context, tmp_path: Path,
                                       name: str, file: str) -> None:
    target = m.export(filled, name, tmp_path / file)
    assert target == tmp_path / file
    [match] = m.which(filled.store, target)
    assert match.artifact_id == filled.history(name).latest.artifact_id
    assert [b.path for b in match.bindings] == [name]
    sidecar = json.loads(Path(f"{target}.provstore.json").read_text())
    assert sidecar["path"] == name and sidecar["version"] == 1
    assert sidecar["digest"] == filled.history(name).latest.digest


def test_export_writes_standard_files_and_the_call(ctx: provstore.Context,
                                                   tmp_path: Path) -> None:
    @ctx.track
    def double(x: Any) -> Any:
        return x * 2

    ctx.x = np.arange(4)
    ctx.y = double(ctx.x)
    target = m.export(ctx, "y", tmp_path)  # a directory: named after the binding
    assert target == tmp_path / "y.npy"
    np.testing.assert_array_equal(np.load(target), np.arange(4) * 2)
    call = json.loads(Path(f"{target}.provstore.json").read_text())["call"]
    assert call["function"].endswith("double") and call["inputs"]["x"]["names"] == ["x"]


def test_which_matches_by_content_and_by_ingested_file(ctx: provstore.Context,
                                                       tmp_path: Path) -> None:
    pretty = tmp_path / "settings.json"
    ctx.settings = {"a": [1, 2]}
    pretty.write_text('{\n  "a": [1, 2]\n}\n')  # other bytes, same value
    assert [mt.how for mt in m.which(ctx.store, pretty)] == ["content"]
    raw = tmp_path / "raw.npy"
    np.save(raw, np.arange(7))
    ctx.raw = provstore.File(raw)
    [match] = m.which(ctx.store, raw)
    assert match.bindings[0].name == "raw"
    unknown = tmp_path / "unknown.npy"
    np.save(unknown, np.arange(8))
    assert m.which(ctx.store, unknown) == []


def test_export_refuses_what_it_cannot_write_faithfully(filled: provstore.Context,
                                                        tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"ending in \.npy"):
        m.export(filled, "a", tmp_path / "a.nii")
    del filled.small
    with pytest.raises(MissingKeyError, match="deleted"):
        m.export(filled, "small", tmp_path / "small.npy")
    _damage(_object(filled, "a"), _flip(300))
    with pytest.raises(CorruptObjectError, match="verify"):
        m.export(filled, "a", tmp_path / "a.npy")
    assert list(tmp_path.iterdir()) == [tmp_path / "study"]


def test_list_runs_shows_crashed_runs(filled: provstore.Context, store_dir: Path) -> None:
    sql(store_dir, "INSERT INTO runs (uuid, host, pid, started, heartbeat, status) VALUES "
        "('dead', 'h', 1, '2020-01-01', '2020-01-01', 'running')", write=True)
    runs = m.list_runs(filled.store)
    assert [r.status for r in runs] == ["crashed", "running"]
    assert m.list_runs(filled.store, limit=1)[0].host == "h"


def test_a_value_whose_stored_copy_gc_removed_is_stored_again(ctx: provstore.Context) -> None:
    # A loaded array is linked to its row without being written again; after
    # `gc --keep-versions` deletes that row, binding it or returning it from a
    # tracked call must store it afresh, not break a foreign key.
    ctx.x = np.arange(1000.0)
    loaded = ctx.x
    ctx.x = np.zeros(3)
    report = m.gc(ctx.store, dry_run=False, grace_seconds=0, keep_versions=1)
    assert report.artifacts == 1 and not _object_of(ctx, loaded).exists()

    ctx.y = loaded
    assert np.array_equal(ctx.y, np.arange(1000.0))

    ctx.z = np.ones(5)
    ones = ctx.z
    ctx.z = np.zeros(5)
    m.gc(ctx.store, dry_run=False, grace_seconds=0, keep_versions=1)

    @ctx.track
    def passthrough(n: int) -> np.ndarray:
        return ones

    assert np.array_equal(passthrough(1), np.ones(5))
    assert m.verify(ctx.store).ok


def _object_of(ctx: provstore.Context, value: np.ndarray) -> Path:
    digest = provstore.hashing.digest(value)
    return ctx.store.objects.path(digest, ".npy")
