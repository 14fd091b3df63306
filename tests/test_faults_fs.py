"""Filesystem faults on real filesystems: a full disk, unwritable and deleted directories.

The full disk is a real 2 MiB tmpfs mounted for the test (the suite runs as
root in CI); permissions are checked by a child process that drops root with
``setpriv``. Every fault must come out as a provstore ``StorageError`` naming
the path and errno (``StorageFullError`` for ENOSPC), leaving no temporary
file, no object file and no row behind.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner, Result

import provstore
from provstore import locations, maintenance
from provstore.cli import cli
from provstore.errors import StorageError, StorageFullError, StoreError
from provstore.saving import prepare
from provstore.scope import Segment

# Root without any capability: file permissions bind it like any owner (and it
# can still reach an interpreter under /root, which another user may not).
UNPRIVILEGED = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("filesystem-fault tests mount a tmpfs and drop privileges: run them as "
                    "root (CI does), e.g. in the project's container", pytrace=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs, unmounted at teardown."""
    _need_root()
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mnt} ({done.stderr.strip()}); these tests "
                    "need root and CAP_SYS_ADMIN", pytrace=False)
    try:
        yield mnt
    finally:
        for store in locations.open_stores():
            if mnt in store.root.parents or store.root == mnt:
                locations.close(store)
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged child can reach (pytest's tmp_path is root-only)."""
    _need_root()
    path = Path(tempfile.mkdtemp(prefix="provstore-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _fill(mnt: Path, leave: int) -> Path:
    """Fill *mnt* with one file until about *leave* bytes remain free."""
    filler = mnt / "filler"
    st = os.statvfs(mnt)
    size = max(st.f_bavail * st.f_frsize - leave, 0)
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * size)  # a last partial block may not fit
    return filler


def _rows(store_dir: Path) -> tuple[int, int]:
    db = sqlite3.connect(store_dir / "provstore.db")
    try:
        return (db.execute("SELECT count(*) FROM artifacts").fetchone()[0],
                db.execute("SELECT count(*) FROM bindings").fetchone()[0])
    finally:
        db.close()


def _nothing_partial(store_dir: Path, rows: tuple[int, int]) -> None:
    assert list((store_dir / "tmp").iterdir()) == []
    assert _rows(store_dir) == rows


def test_full_disk_on_an_object_write_is_storage_full(tmpfs: Path) -> None:
    store_dir = tmpfs / "study"
    ctx = provstore.open(store_dir)
    ctx.small = np.arange(10)
    before = _rows(store_dir)
    objects_before = sorted(ctx.store.objects.iter_files())
    with pytest.raises(StorageFullError) as info:
        ctx.big = np.ones(1_000_000)  # 8 MB on a 2 MiB filesystem
    assert info.value.errno == errno.ENOSPC
    assert str(store_dir / "tmp") in str(info.value)
    _nothing_partial(store_dir, before)
    assert sorted(ctx.store.objects.iter_files()) == objects_before
    assert "big" not in ctx
    ctx.after = np.arange(5)  # the store still works once space is there
    np.testing.assert_array_equal(ctx.after, np.arange(5))


# nibabel leaves its file object unclosed when a write fails (an upstream leak,
# reported as an unraisable ResourceWarning when it is collected).
NIBABEL_LEAK = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.mark.parametrize("fmt", ["hdf5", pytest.param("nifti", marks=NIBABEL_LEAK)])
def test_full_disk_on_an_hdf5_or_nifti_write_is_storage_full(tmpfs: Path, fmt: str) -> None:
    store_dir = tmpfs / "study"
    ctx = provstore.open(store_dir)
    before = _rows(store_dir)
    value = ({"a": np.ones(300_000), "b": np.zeros(300_000)} if fmt == "hdf5"
             else nib.Nifti1Image(np.ones((128, 64, 64), dtype=np.float32), np.eye(4)))
    with pytest.raises(StorageFullError):  # 4.8 MB, 2.1 MB: more than the 2 MiB there is
        ctx.big = value
    gc.collect()  # close what nibabel leaked here, under this test's warning filter
    _nothing_partial(store_dir, before)


def test_full_disk_on_a_file_ingest_is_storage_full(tmpfs: Path, tmp_path: Path) -> None:
    source = tmp_path / "scan.npy"
    np.save(source, np.ones(200_000))  # 1.6 MB, outside the small filesystem
    store_dir = tmpfs / "study"
    ctx = provstore.open(store_dir)
    before = _rows(store_dir)
    _fill(tmpfs, leave=300_000)
    with pytest.raises(StorageFullError) as info:
        ctx.scan = provstore.File(source)
    assert info.value.errno == errno.ENOSPC
    _nothing_partial(store_dir, before)


def test_full_disk_on_the_database_is_storage_full(tmpfs: Path) -> None:
    store_dir = tmpfs / "study"
    ctx = provstore.open(store_dir)
    ctx.first = "kept"
    before = _rows(store_dir)
    filler = _fill(tmpfs, leave=64_000)
    with pytest.raises(StorageFullError) as info:
        ctx.text = "x" * 900_000  # inline JSON: the row itself needs the space
    assert "provstore.db" in str(info.value)
    assert "disk is full" in str(info.value)
    filler.unlink()
    _nothing_partial(store_dir, before)
    assert ctx.first == "kept" and "text" not in ctx
    ctx.text = "fits now"
    assert ctx.text == "fits now"


def test_deleted_objects_directory_is_a_storage_error(tmp_path: Path) -> None:
    store_dir = tmp_path / "study"
    ctx = provstore.open(store_dir)
    before = _rows(store_dir)
    shutil.rmtree(store_dir / "objects")
    with pytest.raises(StorageError) as info:
        ctx.x = np.arange(100)
    assert info.value.errno == errno.ENOENT
    assert str(store_dir / "objects") in str(info.value)
    _nothing_partial(store_dir, before)


def test_deleted_tmp_directory_is_a_storage_error(tmp_path: Path) -> None:
    store_dir = tmp_path / "study"
    ctx = provstore.open(store_dir)
    before = _rows(store_dir)
    shutil.rmtree(store_dir / "tmp")
    with pytest.raises(StorageError) as info:
        ctx.x = np.arange(100)
    assert str(store_dir / "tmp") in str(info.value)
    (store_dir / "tmp").mkdir()
    _nothing_partial(store_dir, before)


UNPRIVILEGED_BIND = textwrap.dedent(
    """
    import sys, numpy as np, provstore
    ctx = provstore.open(sys.argv[1])
    try:
        ctx.x = np.arange(1000)
    except provstore.errors.ProvstoreError as exc:
        print(type(exc).__name__, exc.errno, exc, sep="|")
    else:
        print("stored")
    """
)


@pytest.mark.parametrize("locked", ["objects", "tmp"])
def test_unwritable_directory_is_a_storage_error(shared_dir: Path, locked: str) -> None:
    store_dir = shared_dir / "study"
    ctx = provstore.open(store_dir)
    ctx.ready = 1
    locations.close(ctx.store)
    before = _rows(store_dir)
    (store_dir / locked).chmod(0o555)  # read-only, even to its owner without capabilities
    done = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", UNPRIVILEGED_BIND,
                           str(store_dir)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    kind, code, message = done.stdout.strip().split("|", 2)
    assert (kind, int(code)) == ("StorageError", errno.EACCES), done.stdout
    assert str(store_dir / locked) in message
    _nothing_partial(store_dir, before)


# --------------------------------------------- export and graph -o: planted links
VICTIM = b"precious: must never change\n"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    return victim


@pytest.fixture
def exported(ctx: provstore.Context, tmp_path: Path) -> tuple[provstore.Context, Path]:
    ctx.a = np.arange(10)
    out = tmp_path / "shared"
    out.mkdir()
    return ctx, out


def test_export_ignores_a_link_planted_at_the_partial_name(
        exported: tuple[provstore.Context, Path], tmp_path: Path) -> None:
    ctx, out = exported
    victim = _victim(tmp_path)
    planted = out / ".a.npy.partial"
    planted.symlink_to(victim)
    target = maintenance.export(ctx, "a", out / "a.npy")
    assert victim.read_bytes() == VICTIM
    assert planted.is_symlink()
    np.testing.assert_array_equal(np.load(target), np.arange(10))
    assert sorted(p.name for p in out.iterdir()) == [".a.npy.partial", "a.npy",
                                                     "a.npy.provstore.json"]


@pytest.mark.parametrize("at", ["a.npy", "a.npy.provstore.json"])
def test_export_never_writes_through_a_planted_link(
        exported: tuple[provstore.Context, Path], tmp_path: Path, at: str) -> None:
    ctx, out = exported
    victim = _victim(tmp_path)
    (out / at).symlink_to(victim)
    with pytest.raises(StoreError, match=r"symbolic link.*--force"):
        maintenance.export(ctx, "a", out / "a.npy")
    assert victim.read_bytes() == VICTIM
    assert sorted(p.name for p in out.iterdir()) == [at]  # nothing written
    target = maintenance.export(ctx, "a", out / "a.npy", force=True)
    assert victim.read_bytes() == VICTIM  # the link was replaced, not followed
    assert not target.is_symlink() and not (out / at).is_symlink()
    np.testing.assert_array_equal(np.load(target), np.arange(10))


def test_export_refuses_to_overwrite_without_force(
        exported: tuple[provstore.Context, Path]) -> None:
    ctx, out = exported
    (out / "a.npy").write_bytes(b"mine")
    with pytest.raises(StoreError, match="already a file"):
        maintenance.export(ctx, "a", out / "a.npy")
    assert (out / "a.npy").read_bytes() == b"mine"
    assert not (out / "a.npy.provstore.json").exists()
    with pytest.raises(StoreError, match="already a file"):
        maintenance.export(ctx, "a", out)  # a directory: the same a.npy inside
    maintenance.export(ctx, "a", out / "a.npy", force=True)
    np.testing.assert_array_equal(np.load(out / "a.npy"), np.arange(10))


def test_export_refuses_an_existing_sidecar_without_force(
        exported: tuple[provstore.Context, Path]) -> None:
    ctx, out = exported
    (out / "a.npy.provstore.json").write_text("{}")
    with pytest.raises(StoreError, match="already a file"):
        maintenance.export(ctx, "a", out / "a.npy")
    assert not (out / "a.npy").exists()
    assert (out / "a.npy.provstore.json").read_text() == "{}"
    maintenance.export(ctx, "a", out / "a.npy", force=True)
    assert json.loads((out / "a.npy.provstore.json").read_text())["name"] == "a"


def test_export_into_a_missing_directory_names_it(
        exported: tuple[provstore.Context, Path], tmp_path: Path) -> None:
    ctx, _ = exported
    missing = tmp_path / "no" / "such"
    with pytest.raises(StoreError) as info:
        maintenance.export(ctx, "a", missing / "a.npy")
    assert f"the directory {missing} does not exist" in str(info.value)
    assert "objects" not in str(info.value)


def test_export_command_refuses_then_forces(exported: tuple[provstore.Context, Path],
                                            tmp_path: Path) -> None:
    ctx, out = exported
    victim = _victim(tmp_path)
    (out / "a.npy").symlink_to(victim)
    refused = _cli(ctx, "export", "a", str(out / "a.npy"))
    assert refused.exit_code == 2 and "--force" in refused.output
    forced = _cli(ctx, "export", "a", str(out / "a.npy"), "--force")
    assert forced.exit_code == 0, forced.output
    assert victim.read_bytes() == VICTIM and not (out / "a.npy").is_symlink()


def test_graph_output_never_follows_links_nor_overwrites(
        exported: tuple[provstore.Context, Path], tmp_path: Path) -> None:
    ctx, out = exported
    victim = _victim(tmp_path)
    dot = out / "a.dot"
    dot.symlink_to(victim)
    refused = _cli(ctx, "graph", "a", "-o", str(dot))
    assert refused.exit_code == 2 and "--force" in refused.output
    assert victim.read_bytes() == VICTIM
    forced = _cli(ctx, "graph", "a", "-o", str(dot), "--force")
    assert forced.exit_code == 0, forced.output
    assert victim.read_bytes() == VICTIM and not dot.is_symlink()
    assert dot.read_text().startswith("digraph")
    assert [p.name for p in out.iterdir()] == ["a.dot"]  # no temporary left


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_which_names_a_path_that_is_not_a_file(exported: tuple[provstore.Context, Path],
                                               kind: str) -> None:
    ctx, out = exported
    path = out / "nothing" if kind == "missing" else out
    with pytest.raises(StoreError, match=r"no such file|not a regular file"):
        maintenance.which(ctx.store, path)


def _cli(ctx: provstore.Context, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", str(ctx.store.root), *args])


# ------------------------------------------------------- lookalike scopes in ls
def test_ls_prints_lookalike_scopes_apart(ctx: provstore.Context) -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    ctx.scope(p=composed).x = 1
    ctx.scope(p=decomposed).y = 2  # normalized: the same scope
    assert ctx.scopes() == [f"p={composed}"]
    # A store written before values were normalized may hold both spellings,
    # and an invisible character: ls must not print them identically.
    store = ctx.store
    for text in (f"p={decomposed}", "p=a\u202eb"):
        sid = store.scope_id((Segment(text, "p", text[2:]),), create=True)
        assert sid is not None
        store.bind(sid, "z", prepare(store, 3))
    result = _cli(ctx, "ls")
    assert result.exit_code == 0, result.output
    listed = [line.strip() for line in result.output.splitlines()]
    assert f"p={composed}" in listed
    assert "p=cafe\\u0301" in listed and "p=a\\u202eb" in listed
    assert not any("\u202e" in line or "\u0301" in line for line in listed)


# ----------------------------------------------- a call whose outputs cannot be stored
FAILING_CALL = textwrap.dedent(
    """
    import sys, numpy as np, provstore
    ctx = provstore.open(sys.argv[1])

    @ctx.track
    def double(x):
        return np.full(100, 2 * x)

    try:
        double(1)
    except provstore.errors.StorageFullError as exc:
        print("StorageFullError", exc.errno)
    """
)


@pytest.mark.parametrize("fault", ["publish.write:enospc", "txn.before_commit:enospc@3"])
def test_a_call_whose_outputs_cannot_be_stored_releases_its_lease(tmp_path: Path,
                                                                  fault: str) -> None:
    # Otherwise every retry waits for the lease to expire (30 s by default).
    store_dir = tmp_path / "study"
    locations.close(provstore.open(store_dir).store)
    done = subprocess.run([sys.executable, "-c", FAILING_CALL, str(store_dir)],
                          env={**os.environ, "PROVSTORE_FAULT": fault},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["StorageFullError", str(errno.ENOSPC)]
    db = sqlite3.connect(store_dir / "provstore.db")
    try:
        assert db.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
        assert [r[0] for r in db.execute("SELECT status FROM calls")] == ["failed"]
        assert db.execute("SELECT count(*) FROM call_outputs").fetchone()[0] == 0
    finally:
        db.close()
