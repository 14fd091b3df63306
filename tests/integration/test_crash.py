"""kill -9 at any instant leaves a store that opens with every committed name intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import provstore
from provstore.hashing import file_digest

BIG_SAVE = textwrap.dedent(
    """
    import sys, numpy as np, provstore
    ctx = provstore.open(sys.argv[1])
    for i in range(5):
        ctx[f"small{i}"] = np.full(1000, i, dtype=np.int64)
    print("committed", flush=True)
    ctx.big = np.ones(125_000_000)      # 1 GB
    print("big done", flush=True)
    """
)


def _check_store(store_dir: Path) -> provstore.Context:
    """Every row points at an intact object; no partial file is visible."""
    ctx = provstore.open(store_dir)
    with ctx.store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT digest, suffix, size, file_digest FROM artifacts WHERE inline IS NULL"
        ).all()
    referenced = set()
    for digest, suffix, size, fdigest in rows:
        path = ctx.store.objects.path(digest, suffix)
        referenced.add(path)
        assert path.stat().st_size == size
        assert file_digest(path) == fdigest
    for path in ctx.store.objects.iter_files():
        if path not in referenced:  # published, then killed before the commit: whole file
            assert path.suffix == ".npy"
            np.load(path, mmap_mode="r")
    assert list(ctx.store.objects.tmp.iterdir()) == []  # debris swept on open
    return ctx


def test_kill_during_a_1gb_save(store_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "big.py"
    script.write_text(BIG_SAVE)
    proc = subprocess.Popen([sys.executable, str(script), str(store_dir)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "committed"
    tmp_dir = store_dir / "tmp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once the 1 GB file is partly written
        sizes = [p.stat().st_size for p in tmp_dir.iterdir()] if tmp_dir.exists() else []
        if any(0 < s < 1_000_000_000 for s in sizes):
            break
        time.sleep(0.005)
    else:
        proc.kill()
        proc.communicate()
        pytest.fail("the big write never started")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    ctx = _check_store(store_dir)
    for i in range(5):
        np.testing.assert_array_equal(ctx[f"small{i}"], np.full(1000, i))
    assert "big" not in ctx


LOOP = textwrap.dedent(
    """
    import sys, numpy as np, provstore
    ctx = provstore.open(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    for i in range(10_000):
        with ctx.scope(step=i % 7):
            ctx[f"a{i}"] = rng.random(int(rng.integers(1, 200_000)))
            ctx.meta = {"i": i}
        print(i, flush=True)
    """
)


@pytest.mark.slow
def test_kill_at_random_instants(store_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    rng = np.random.default_rng(1)
    acknowledged: list[int] = []
    for trial in range(8):
        proc = subprocess.Popen([sys.executable, str(script), str(store_dir), str(trial)],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(0.6 + float(rng.random()) * 1.2)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        acknowledged.append(int(out.split()[-1]) if out.split() else -1)
        ctx = _check_store(store_dir)
        last = acknowledged[-1]
        if last >= 0:  # everything acknowledged before the kill is there
            assert ctx.scope(step=last % 7).meta == {"i": last}
            assert f"a{last}" in ctx.scope(step=last % 7)
    assert max(acknowledged) > 0
