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
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import provstore
from provstore import locations
from provstore.errors import StorageError, StorageFullError

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


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


def test_full_disk_on_an_hdf5_write_is_storage_full(tmpfs: Path) -> None:
    store_dir = tmpfs / "study"
    ctx = provstore.open(store_dir)
    before = _rows(store_dir)
    with pytest.raises(StorageFullError):
        ctx.nested = {"a": np.ones(300_000), "b": np.zeros(300_000)}
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
    for root, dirs, files in os.walk(store_dir):
        for n in dirs + files:
            os.chown(os.path.join(root, n), 65534, 65534)
    os.chown(store_dir, 65534, 65534)
    os.chown(store_dir / locked, 0, 0)  # owned by root, 0755: read-only to nobody
    (store_dir / locked).chmod(0o755)
    done = subprocess.run([*NOBODY, sys.executable, "-c", UNPRIVILEGED_BIND, str(store_dir)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    kind, code, message = done.stdout.strip().split("|", 2)
    assert (kind, int(code)) == ("StorageError", errno.EACCES), done.stdout
    assert str(store_dir / locked) in message
    _nothing_partial(store_dir, before)
