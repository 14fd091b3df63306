"""Resources: a store that opens, closes or refuses to open leaves no connection behind.

The garbage collector is switched off while the stores come and go: provstore
must close what it opened itself, on every path, rather than leave it to a
collection that may come late (and that Python 3.13 reports as an unclosed
``sqlite3.Connection``, a ResourceWarning).
"""

from __future__ import annotations

import gc
import os
import sqlite3
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import provstore
from provstore.api import database_url
from provstore.errors import StoreError, StoreNotFoundError, StoreVersionError
from sql import sql

REFUSALS = 200
FD_DIR = Path("/proc/self/fd")
pytestmark = pytest.mark.skipif(not FD_DIR.is_dir(),
                                reason="counts open descriptors through /proc/self/fd (Linux)")


def sockets_open() -> int:
    """The number of sockets this process holds open."""
    found = 0
    for fd in os.listdir(FD_DIR):
        try:
            found += os.readlink(FD_DIR / fd).startswith("socket:")
        except OSError:  # closed meanwhile
            continue
    return found


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def collected_resource_warnings() -> list[str]:
    """Collect garbage now; return the ResourceWarnings it raised (unclosed files, databases)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def newer_store(path: Path) -> Path:
    """An SQLite store whose schema version is newer than this provstore's."""
    # Made by another process, as by a newer provstore: this one has never opened it.
    code = "import provstore, sys; provstore.open(sys.argv[1]).x = 1"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    sql(path, "UPDATE alembic_version SET version_num = '9999'", write=True)
    return path


def not_a_database(path: Path) -> Path:
    path.mkdir()
    (path / "provstore.db").write_bytes(b"this is not sqlite at all" * 100)
    return path


def foreign_database(path: Path) -> Path:
    path.mkdir()
    con = sqlite3.connect(path / "provstore.db")
    con.execute("CREATE TABLE other (x)")
    con.commit()
    con.close()
    return path


def test_refused_opens_leave_no_descriptor_open(tmp_path: Path, no_gc: None) -> None:
    newer = newer_store(tmp_path / "newer")
    garbage = not_a_database(tmp_path / "garbage")
    foreign = foreign_database(tmp_path / "foreign")
    refusals: list[tuple[type[Exception], Callable[[], object]]] = [
        (StoreVersionError, lambda: provstore.open(newer)),
        (StoreError, lambda: provstore.open(garbage)),
        (StoreError, lambda: provstore.open(foreign)),
        (StoreNotFoundError, lambda: provstore.open(tmp_path / "missing", create=False)),
    ]
    # Counted on the stores' own files: other threads of a long test session
    # (heartbeats of earlier tests' stores) open and close descriptors too.
    before = fds_under(tmp_path)
    for i in range(REFUSALS):
        error, refused_open = refusals[i % len(refusals)]
        with pytest.raises(error):
            refused_open()
    assert fds_under(tmp_path) == before
    assert collected_resource_warnings() == []


def test_a_newer_database_refused_through_db_leaves_no_connection(
        store_dir: Path, tmp_path: Path, no_gc: None) -> None:
    provstore.open(store_dir).x = 1
    url = database_url(store_dir, None)
    sql(store_dir, "UPDATE alembic_version SET version_num = '9999'", write=True)
    elsewhere = tmp_path / "elsewhere"  # a directory this process has no Store for yet
    before, sockets = fds_under(tmp_path), sockets_open()
    for _ in range(REFUSALS // 4):
        with pytest.raises(StoreVersionError, match="9999"):
            provstore.open(elsewhere, db=url)
    assert fds_under(tmp_path) == before  # SQLite: the database file and its -wal, -shm
    # PostgreSQL: a socket per connection. Other threads of the session may
    # hold a few more or fewer meanwhile; one left per refusal would be 50.
    assert sockets_open() - sockets < 5
    assert collected_resource_warnings() == []


def test_a_closed_store_holds_nothing_and_closes_again(tmp_path: Path, no_gc: None) -> None:
    # Counted on the store's own files: other threads of a long test session
    # may open or close descriptors of their own meanwhile.
    store = tmp_path / "study"
    ctx = provstore.open(store)
    assert "x" not in ctx  # a read: this thread's reader connection is open
    assert fds_under(store) > 0
    ctx.store.close()
    assert fds_under(store) == 0
    ctx.store.close()  # closing twice is harmless
    assert fds_under(store) == 0
    assert "x" not in ctx  # and a closed store reconnects on its next read
    assert fds_under(store) > 0
    ctx.store.close()
    assert collected_resource_warnings() == []


def fds_under(path: Path) -> int:
    """Descriptors of this process open on files under *path*."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        found += target.startswith(f"{path}{os.sep}")
    return found


def test_a_process_closes_its_stores_at_exit(tmp_path: Path) -> None:
    # Python 3.13 reports connections left to the interpreter's shutdown.
    store = tmp_path / "study"
    code = ("import provstore, sys; ctx = provstore.open(sys.argv[1]); ctx.x = 1; "
            "assert ctx.x == 1")
    out = subprocess.run([sys.executable, "-W", "always::ResourceWarning", "-c", code, str(store)],
                         capture_output=True, text=True, check=True)
    assert "ResourceWarning" not in out.stderr, out.stderr
