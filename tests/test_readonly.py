"""A store this user cannot write: an archived study, a read-only copy.

Every read works and nothing is written: no run, no ``tmp/`` sweep, no lock,
no ``-wal``/``-shm`` file. Root ignores permissions, so as root the readers
run as ``nobody`` through ``setpriv`` (util-linux); as any other user they
run as that user. The stores live in a fresh directory under the system
temporary directory that ``nobody`` can traverse.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import provstore
from provstore import locations

NOBODY = 65534


def _reader_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root, these tests need setpriv (util-linux) to read as "
                    "nobody: root bypasses file permissions", pytrace=False)
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def as_reader(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` as a user who may read but not write the store."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent"}
    env.pop("PROVSTORE", None)
    return subprocess.run([*_reader_prefix(), sys.executable, *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd or "/")


def provstore_as_reader(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return as_reader("-m", "provstore", "--store", str(store), *args)


def _make_writable(path: Path) -> None:
    for parent, dirs, files in os.walk(path):
        os.chmod(parent, 0o755)
        for name in files:
            os.chmod(os.path.join(parent, name), 0o644)
        del dirs  # walked by os.walk itself


def _freeze(path: Path) -> None:
    """``chmod -R a-w``."""
    for parent, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            p = os.path.join(parent, name)
            os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) & ~0o222)
        os.chmod(parent, stat.S_IMODE(os.stat(parent).st_mode) & ~0o222)


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every entry under *path* with its size and mtime: what a reader must not change."""
    found = {}
    for parent, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(parent, name))
            found[os.path.relpath(os.path.join(parent, name), path)] = (st.st_size,
                                                                       st.st_mtime_ns)
    return found


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="provstore-readonly-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        _make_writable(path)
        shutil.rmtree(path)


def close_all(location: Path) -> None:
    # The last connection to close checkpoints the WAL and removes -wal and -shm.
    for store in locations.open_stores():
        if store.root == location:
            locations.close(store)


@pytest.fixture
def archived(public_dir: Path) -> Path:
    """A study written by its owner, then made read-only (``chmod -R a-w``)."""
    study = public_dir / "study"
    ctx = provstore.open(study)

    @ctx.track
    def smooth(x: Any, width: int) -> Any:
        return np.convolve(x, np.ones(width) / width, mode="same")

    ctx.raw = np.arange(10.0)
    ctx.params = {"width": 3}
    with ctx.scope(subject="01"):
        ctx.smoothed = smooth(ctx.raw, 3)
    close_all(study)
    assert not Path(f"{study / 'provstore.db'}-wal").exists()
    _freeze(study)
    return study


READER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import provstore
    ctx = provstore.open(sys.argv[1])
    out = {
        "raw": float(ctx.get("raw", verify=True).sum()),
        "params": ctx.get("params", verify=True),
        "smoothed": float(ctx.scope(subject="01").smoothed.sum()),
        "names": ctx.names(),
        "history": str(ctx.history("subject=01/smoothed")),
        "unwritable": ctx.store.unwritable, "readonly": ctx.store.readonly,
    }
    print(json.dumps(out))
""")


def test_reading_a_store_without_write_permission(archived: Path) -> None:
    before = snapshot(archived)
    done = as_reader("-c", READER, str(archived))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["raw"] == 45.0 and out["params"] == {"width": 3}
    assert out["smoothed"] == pytest.approx(np.convolve(np.arange(10.0), np.ones(3) / 3,
                                                        mode="same").sum())
    assert out["names"] == ["params", "raw"] and "smooth" in out["history"]
    assert "not writable" in out["unwritable"] and out["readonly"] is True
    assert snapshot(archived) == before  # no run, no sweep, no lock, no -wal or -shm


@pytest.mark.parametrize("args", [["ls"], ["ls", "subject=01"], ["show", "raw"],
                                  ["history", "subject=01/smoothed"], ["runs"], ["verify"],
                                  ["gc"], ["stale"], ["dependents", "raw"]],
                         ids=lambda a: "-".join(a))
def test_commands_read_a_store_without_write_permission(archived: Path, args: list[str]) -> None:
    before = snapshot(archived)
    done = provstore_as_reader(archived, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert snapshot(archived) == before


def test_export_and_which_from_a_store_without_write_permission(archived: Path,
                                                                public_dir: Path) -> None:
    before = snapshot(archived)
    out_dir = public_dir / "out"
    out_dir.mkdir()
    out_dir.chmod(0o777)  # the reader's own place to write
    exported = provstore_as_reader(archived, "export", "raw", str(out_dir / "raw.npy"))
    assert exported.returncode == 0, exported.stderr
    assert np.load(out_dir / "raw.npy").sum() == 45.0
    found = provstore_as_reader(archived, "which", str(out_dir / "raw.npy"))
    assert found.returncode == 0, found.stderr
    assert "raw" in found.stdout
    assert snapshot(archived) == before


def test_writing_to_a_store_without_write_permission_says_so(archived: Path) -> None:
    before = snapshot(archived)
    code = ("import sys, provstore\nctx = provstore.open(sys.argv[1])\n"
            "try:\n    ctx.params = {'width': 5}\n"
            "except provstore.StoreError as exc:\n    print(type(exc).__name__, exc)\n")
    done = as_reader("-c", code, str(archived))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("StoreError") and "read-only" in done.stdout
    assert snapshot(archived) == before


WRITER = textwrap.dedent("""
    import os, signal, sys
    import provstore
    ctx = provstore.open(sys.argv[1])
    ctx.value = 1
    ctx.value = 2
    os.kill(os.getpid(), signal.SIGKILL)  # dies before any checkpoint: commits stay in -wal
""")


def test_a_killed_writers_wal_is_read_without_write_permission(public_dir: Path) -> None:
    study = public_dir / "study"
    killed = subprocess.run([sys.executable, "-c", WRITER, str(study)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert Path(f"{study / 'provstore.db'}-wal").stat().st_size > 0
    _freeze(study)
    before = snapshot(study)
    done = as_reader("-c", "import sys, provstore; print(provstore.open(sys.argv[1]).value)",
                     str(study))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"  # the last commit, which only the -wal file holds
    assert snapshot(study) == before


def test_a_read_only_store_that_needs_an_upgrade_says_so(archived: Path) -> None:
    _make_writable(archived)
    import sqlite3

    con = sqlite3.connect(archived / "provstore.db")
    con.execute("UPDATE alembic_version SET version_num = '0003'")
    con.commit()
    con.close()
    _freeze(archived)
    done = as_reader("-c", "import sys, provstore; provstore.open(sys.argv[1])", str(archived))
    assert done.returncode != 0
    assert "StoreError" in done.stderr and "cannot be upgraded" in done.stderr
