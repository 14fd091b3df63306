"""WAL checkpoints run on the periodic thread, not inside a writer's commit (SQLite)."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import provstore
from provstore.db import checkpoints
from provstore.periodic import THREAD_NAME


def rows_in_main_file(database: Path, tmp_path: Path) -> int:
    """How many bindings the database file holds by itself, without its WAL."""
    copy = tmp_path / "main-only.db"
    shutil.copyfile(database, copy)
    try:
        conn = sqlite3.connect(copy)
        try:
            return int(conn.execute("SELECT count(*) FROM bindings").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError:  # copied mid-checkpoint: look again
        return -1


def test_commits_are_checkpointed_in_the_background(tmp_path: Path) -> None:
    store = tmp_path / "study"
    ctx = provstore.open(store)
    commits = checkpoints.EVERY_COMMITS + 1
    for i in range(commits):  # a few pages each: far below any automatic checkpoint
        ctx[f"x{i}"] = i
    deadline = time.monotonic() + 30
    # The checkpoint follows the 64th commit of the process (a few of them
    # were its run record's): most bindings are then in the file itself.
    while (found := rows_in_main_file(store / "provstore.db", tmp_path)) < commits // 2:
        if time.monotonic() > deadline:
            pytest.fail(f"the database file holds {found} of {commits} bindings: no checkpoint")
        time.sleep(0.05)
    names = [t.name for t in threading.enumerate() if t.name.startswith("provstore")]
    assert names == [THREAD_NAME]  # the process's one background thread did it


def test_writers_checkpoint_themselves_past_the_backstop(tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "study")
    ctx.x = 1
    conn = ctx.store.lite.connection() if ctx.store.lite is not None else None
    assert conn is not None
    limit = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert limit == checkpoints.AUTOCHECKPOINT_PAGES
