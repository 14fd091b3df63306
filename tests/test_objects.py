"""The object directory: validated paths, atomic publication, read-only files, sweeping."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from provstore.errors import CorruptObjectError, StoreError
from provstore.objects import ObjectDir

DIGEST = "0123456789abcdef0123456789abcdef"


def test_paths_come_only_from_hex_digests(tmp_path: Path) -> None:
    objects = ObjectDir(tmp_path)
    assert objects.path(DIGEST, ".npy") == tmp_path / "objects" / "01" / f"{DIGEST[2:]}.npy"
    for bad in ["../../etc/passwd", "ABCDEF0123456789ABCDEF0123456789", "xyz", "", "0" * 31]:
        with pytest.raises(CorruptObjectError):
            objects.path(bad, ".npy")
    for suffix in ["/x", ".NPY", "../a", ".toolongsuffix"]:
        with pytest.raises(StoreError):
            objects.path(DIGEST, suffix)


def test_publish_is_atomic_and_read_only(tmp_path: Path) -> None:
    objects = ObjectDir(tmp_path)
    objects.publish(DIGEST, ".bin", lambda p: p.write_bytes(b"payload"))
    final = objects.path(DIGEST, ".bin")
    assert final.read_bytes() == b"payload"
    assert stat.S_IMODE(final.stat().st_mode) & 0o222 == 0
    assert list(objects.tmp.iterdir()) == []


def test_a_failed_write_publishes_nothing(tmp_path: Path) -> None:
    objects = ObjectDir(tmp_path)

    def failing(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        objects.publish(DIGEST, ".bin", failing)
    assert not objects.exists(DIGEST, ".bin")
    assert list(objects.tmp.iterdir()) == []


def test_republishing_identical_content_is_harmless(tmp_path: Path) -> None:
    objects = ObjectDir(tmp_path)
    for _ in range(2):
        objects.publish(DIGEST, ".bin", lambda p: p.write_bytes(b"same"))
    assert objects.path(DIGEST, ".bin").read_bytes() == b"same"


def test_sweep_removes_debris_of_dead_writers_only(tmp_path: Path) -> None:
    objects = ObjectDir(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    from provstore.objects import _HOST

    stale = objects.tmp / f"{_HOST}-{dead_pid}-abc.npy"
    live = objects.tmp / f"{_HOST}-{os.getpid()}-def.npy"
    foreign_recent = objects.tmp / "otherhost-1-ghi.npy"
    foreign_old = objects.tmp / "otherhost-2-jkl.npy"
    for p in (stale, live, foreign_recent, foreign_old):
        p.write_bytes(b"x")
    os.utime(foreign_old, (0, 0))
    removed = objects.sweep()
    assert sorted(removed) == sorted([stale, foreign_old])
    assert live.exists() and foreign_recent.exists()
