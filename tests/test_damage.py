"""A store whose database is damaged, emptied, lost or replaced (docs/guarantees.md, Damage).

Real SQLite files damaged byte by byte, real PostgreSQL databases emptied,
real processes killed: the promise is that provstore refuses with a
DatabaseDamagedError naming the file and the fix, and never writes a fresh
schema over existing objects nor lets gc delete them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

import provstore
from provstore import locations, maintenance
from provstore.cli import cli
from provstore.errors import (
    CorruptObjectError,
    DatabaseDamagedError,
    StoreError,
    StoreNotFoundError,
)
from sql import scalar, sql

EXIT_NEGATIVE, EXIT_ERROR, EXIT_DAMAGED = 1, 2, 3


def run(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", str(store), *args], catch_exceptions=False)


def make_study(location: Path) -> provstore.Context:
    ctx = provstore.open(location)
    ctx.a = np.arange(10)
    ctx.b = np.linspace(0, 1, 50)
    ctx.c = {"subject": "01", "threshold": 0.5}
    return ctx


def object_files(location: Path) -> list[Path]:
    return sorted(p for p in (location / "objects").rglob("*") if p.is_file())


def forget(location: Path) -> None:
    """Close this process's engines on *location* so the next open starts afresh."""
    for store in locations.open_stores():
        if store.root == location:
            locations.close(store)


def empty_database(location: Path, backend: str) -> None:
    """Lose the database: truncate the SQLite file, or drop every table on the server."""
    forget(location)
    if backend == "sqlite":
        for extra in ("-wal", "-shm"):
            Path(f"{location / 'provstore.db'}{extra}").unlink(missing_ok=True)
        (location / "provstore.db").write_bytes(b"")
    else:
        sql(location, "DROP SCHEMA public CASCADE; CREATE SCHEMA public", write=True)


def database_bytes(location: Path) -> bytes:
    forget(location)
    return (location / "provstore.db").read_bytes()


# ------------------------------------------------ item 1: emptied or missing
def test_an_emptied_database_is_refused_and_nothing_is_deleted(store_dir: Path,
                                                                db_backend: str) -> None:
    make_study(store_dir)
    files = object_files(store_dir)
    assert len(files) == 2
    empty_database(store_dir, db_backend)
    for f in files:
        os.utime(f, (0, 0))  # old enough for any grace period
    with pytest.raises(DatabaseDamagedError, match="holds object files") as info:
        provstore.open(store_dir)
    assert "backup" in str(info.value) and "guarantees.md" in str(info.value)
    for args in (["verify"], ["gc", "--apply", "--grace", "0"], ["ls"], ["runs"]):
        result = run(store_dir, *args)
        assert result.exit_code == EXIT_DAMAGED, (args, result.output)
        assert "provstore: error:" in result.stderr and "backup" in result.stderr
    assert object_files(store_dir) == files
    if db_backend == "sqlite":  # nothing was written into the emptied file
        assert (store_dir / "provstore.db").stat().st_size == 0
    else:
        assert scalar(store_dir, "SELECT count(*) FROM information_schema.tables "
                                 "WHERE table_schema = 'public'") == 0


def test_a_missing_database_next_to_objects_is_refused(tmp_path: Path) -> None:
    study = tmp_path / "study"
    make_study(study)
    forget(study)
    for name in ("provstore.db", "provstore.db-wal", "provstore.db-shm"):
        (study / name).unlink(missing_ok=True)
    for create in (True, False):
        with pytest.raises(DatabaseDamagedError, match=r"provstore\.db is missing"):
            provstore.open(study, create=create)
    assert run(study, "verify").exit_code == EXIT_DAMAGED
    assert not (study / "provstore.db").exists()


def test_the_documented_recovery_without_a_backup_starts_an_empty_store(tmp_path: Path) -> None:
    study = tmp_path / "study"
    make_study(study)
    empty_database(study, "sqlite")
    (study / "objects").rename(study / "objects.lost")
    ctx = provstore.open(study)
    assert ctx.names() == []
    assert len(list((study / "objects.lost").rglob("*.npy"))) == 2  # kept aside, for salvage


# The store's directory holds no store: every command says so, exits 2 and
# creates nothing; an empty database file stays empty.
COMMANDS = [["ls"], ["show", "x"], ["history", "x"], ["runs"], ["verify"], ["gc"],
            ["gc", "--apply"], ["export", "x", "OUT"], ["which", "FILE"], ["upgrade"],
            ["graph", "x"], ["stale"], ["diff", "x", "y"], ["dependents", "x"]]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: "-".join(a))
def test_commands_never_create_a_store(tmp_path: Path, args: list[str]) -> None:
    some_file = tmp_path / "some.txt"
    some_file.write_text("content")
    args = [str(some_file) if a == "FILE" else str(tmp_path / "out.npy") if a == "OUT" else a
            for a in args]
    missing = tmp_path / "nowhere"
    result = run(missing, *args)
    assert result.exit_code == EXIT_ERROR and "no provstore store" in result.stderr
    assert not missing.exists()
    hollow = tmp_path / "hollow"
    hollow.mkdir()
    (hollow / "provstore.db").write_bytes(b"")
    result = run(hollow, *args)
    assert result.exit_code == EXIT_ERROR, result.output
    assert "no provstore store" in result.stderr
    assert (hollow / "provstore.db").stat().st_size == 0
    assert sorted(p.name for p in hollow.iterdir()) == ["provstore.db"]


def test_open_with_create_false_leaves_an_empty_server_database_empty(store_dir: Path,
                                                                     db_backend: str) -> None:
    provstore.open(store_dir)
    empty_database(store_dir, db_backend)
    with pytest.raises(StoreNotFoundError, match="empty"):
        provstore.open(store_dir, create=False)
    provstore.open(store_dir).x = 1  # create=True makes the store, as documented
    assert provstore.open(store_dir, create=False).x == 1


# ------------------------------------------------------------ gc interlock
def test_gc_refuses_when_the_database_names_none_of_the_objects(store_dir: Path) -> None:
    make_study(store_dir)
    files = object_files(store_dir)
    # A database restored from a copy made before any array was stored.
    for table in ("bindings", "call_outputs", "call_inputs", "files"):
        sql(store_dir, f"DELETE FROM {table}", write=True)
    sql(store_dir, "DELETE FROM artifacts WHERE inline IS NULL", write=True)
    forget(store_dir)
    for f in files:
        os.utime(f, (0, 0))
    ctx = provstore.open(store_dir)
    with pytest.raises(DatabaseDamagedError, match="names 0 of the 2 files"):
        maintenance.gc(ctx.store, dry_run=False, grace_seconds=0)
    result = run(store_dir, "gc", "--apply", "--grace", "0")
    assert result.exit_code == EXIT_DAMAGED and "--force" in result.stderr
    assert object_files(store_dir) == files
    forced = run(store_dir, "gc", "--apply", "--grace", "0", "--force")
    assert forced.exit_code == 0 and "removed 2 orphan" in forced.output
    assert object_files(store_dir) == []


def test_gc_refuses_when_orphans_outnumber_the_named_files(tmp_path: Path) -> None:
    study = tmp_path / "study"
    make_study(study)
    shard = study / "objects" / "ee"
    shard.mkdir()
    for i in range(25):
        orphan = shard / (f"{i:030x}" + ".npy")
        orphan.write_bytes(b"no row names me")
        os.utime(orphan, (0, 0))
    result = run(study, "gc", "--apply")
    assert result.exit_code == EXIT_DAMAGED and "names 2 of the 27 files" in result.stderr
    assert len(object_files(study)) == 27
    assert run(study, "gc", "--apply", "--force").exit_code == 0
    assert len(object_files(study)) == 2
    # A handful of crash debris next to the named files needs no --force.
    (shard / ("f" * 30 + ".npy")).write_bytes(b"debris")
    os.utime(shard / ("f" * 30 + ".npy"), (0, 0))
    assert run(study, "gc", "--apply").exit_code == 0
    assert len(object_files(study)) == 2


# ---------------------------------------------------- item 3: damaged bytes
def flip_bytes(path: Path, offsets: list[int], mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    for off in offsets:
        data[off] ^= mask
    path.write_bytes(bytes(data))


def test_garbled_pages_give_a_database_damaged_error_not_a_traceback(tmp_path: Path) -> None:
    study = tmp_path / "study"
    make_study(study)
    db = study / "provstore.db"
    size = len(database_bytes(study))
    flip_bytes(db, list(range(4096, size, 97)))
    with pytest.raises(DatabaseDamagedError) as info:
        provstore.open(study)
    message = str(info.value)
    assert str(db) in message and "backup" in message
    result = run(study, "verify")
    assert result.exit_code == EXIT_DAMAGED, result.output
    assert str(db) in result.stderr and "Traceback" not in result.output


def test_a_damaged_table_definition_gives_a_database_damaged_error(tmp_path: Path) -> None:
    # A flipped byte inside the schema text SQLite keeps in the file: the
    # revision still reads, and then a column provstore needs is missing.
    study = tmp_path / "study"
    make_study(study)
    forget(study)  # a new process's view: nothing loaded yet
    conn = sqlite3.connect(study / "provstore.db")
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute("UPDATE sqlite_master SET sql = replace(sql, 'created DATETIME', "
                 "'creaXed DATETIME') WHERE name = 'artifacts'")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseDamagedError, match="no such column") as info:
        _ = provstore.open(study).a
    assert str(study / "provstore.db") in str(info.value)


def test_a_damaged_header_is_refused(tmp_path: Path) -> None:
    study = tmp_path / "study"
    make_study(study)
    db = study / "provstore.db"
    database_bytes(study)
    flip_bytes(db, list(range(0, 100)))
    with pytest.raises(DatabaseDamagedError, match="not a provstore database"):
        provstore.open(study)
    assert run(study, "verify").exit_code == EXIT_DAMAGED
    assert run(study, "gc", "--apply", "--grace", "0").exit_code == EXIT_DAMAGED
    assert len(object_files(study)) == 2


def _page_of(db: Path, index_of: str) -> int:
    con = sqlite3.connect(db)
    try:
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE type = 'index' "
                           "AND tbl_name = ?", (index_of,)).fetchone()[0]
        (page_size,) = con.execute("PRAGMA page_size").fetchone()
    finally:
        con.close()
    return int((root - 1) * page_size)


def test_verify_reports_what_integrity_check_finds(tmp_path: Path) -> None:
    study = tmp_path / "study"
    ctx = make_study(study)
    ctx.store.runs.run_id()
    db = study / "provstore.db"
    database_bytes(study)
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    # An index of the ingested-files table: verify reads no row of it, but
    # integrity_check walks every page.
    start = _page_of(db, "files")
    flip_bytes(db, list(range(start, start + 4000, 13)), mask=0x21)
    result = run(study, "verify", "--json")
    assert result.exit_code in (EXIT_NEGATIVE, EXIT_DAMAGED), result.output
    if result.exit_code == EXIT_NEGATIVE:
        report = json.loads(result.output)
        found = [p["message"] for p in report["problems"] if p["kind"] == "database"]
        assert found and all(m.startswith("integrity_check: ") for m in found)
    else:
        assert "integrity_check" in result.stderr


def test_random_byte_damage_never_escapes_as_a_raw_error(tmp_path: Path) -> None:
    """SQLite's malformed-file tests, ported: flip bytes anywhere, get a StoreError or a
    report, never a driver exception."""
    study = tmp_path / "study"
    make_study(study)
    pristine = database_bytes(study)
    rng = random.Random(20261207)
    outcomes: dict[int, int] = {}
    for trial in range(30):
        forget(study)
        data = bytearray(pristine)
        for _ in range(rng.choice((1, 8, 64))):
            data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        (study / "provstore.db").write_bytes(bytes(data))
        result = run(study, "verify", "--json")
        assert result.exit_code in (0, EXIT_NEGATIVE, EXIT_DAMAGED), (trial, result.output)
        outcomes[result.exit_code] = outcomes.get(result.exit_code, 0) + 1
        try:
            ctx = provstore.open(study)
            _read_everything(ctx)
        except (StoreError, CorruptObjectError):
            pass
    assert outcomes.get(EXIT_DAMAGED) or outcomes.get(EXIT_NEGATIVE), outcomes


def _read_everything(ctx: provstore.Context) -> Any:
    for name in ctx.names():
        ctx.get(name, verify=True)
        str(ctx.history(name))


# ------------------------------------------------- item 6: a new object root
def test_a_new_object_root_is_created(tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "db", root=tmp_path / "new" / "objects-root")
    ctx.x = np.arange(3)
    assert (tmp_path / "new" / "objects-root" / "objects").is_dir()
    assert provstore.open(tmp_path / "db", root=tmp_path / "new" / "objects-root").x[2] == 2


def test_a_missing_object_root_with_create_false_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        provstore.open(tmp_path / "db", root=tmp_path / "missing", create=False)
    assert not (tmp_path / "db").exists() and not (tmp_path / "missing").exists()
    provstore.open(tmp_path / "db2").x = 1
    with pytest.raises(StoreNotFoundError, match="object root"):
        provstore.open(tmp_path / "db2", root=tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


# ------------------------------------------- item 8: tampered inline values
def test_a_tampered_inline_value_is_detected(store_dir: Path) -> None:
    ctx = provstore.open(store_dir)
    ctx.params = {"threshold": 0.5}
    (row,) = sql(store_dir, "SELECT id, inline FROM artifacts WHERE inline IS NOT NULL")
    forged = bytes(row["inline"]).replace(b"0.5", b"0.9")
    assert len(forged) == len(bytes(row["inline"]))  # same size: only the digest can tell
    sql(store_dir, "UPDATE artifacts SET inline = :v WHERE id = :i",
        {"v": forged, "i": row["id"]}, write=True)
    forget(store_dir)
    ctx = provstore.open(store_dir)
    with pytest.raises(CorruptObjectError, match="no longer matches its recorded digest"):
        ctx.get("params", verify=True)
    report = maintenance.verify(ctx.store)
    (problem,) = report.of_kind("inline")
    assert "changed" in problem.message and not report.ok
    assert [str(b) for b in problem.bindings] == ["params v1"]
    assert run(store_dir, "verify").exit_code == EXIT_NEGATIVE


# --------------------------------------------------- item 11: a killed run
WRITER = """
import sys, time, provstore
ctx = provstore.open(sys.argv[1])
ctx.x = 1
print("ready", flush=True)
time.sleep(600)
"""


def test_a_killed_run_reads_crashed_at_once(store_dir: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", WRITER, str(store_dir)],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            ctx = provstore.open(store_dir)
            assert [r.status for r in maintenance.list_runs(ctx.store)] == ["running"]
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    (run_row,) = maintenance.list_runs(ctx.store)
    assert run_row.status == "crashed" and run_row.pid == proc.pid
    latest = ctx.history("x").latest
    assert latest.run is not None and latest.run.status == "crashed"
    listed = json.loads(run(store_dir, "runs", "--json").output)
    assert [r["status"] for r in listed] == ["crashed"]
    assert "crashed" in run(store_dir, "history", "x").output


def test_this_process_and_other_hosts_stay_running(store_dir: Path) -> None:
    ctx = provstore.open(store_dir)
    ctx.x = 1
    (mine,) = maintenance.list_runs(ctx.store)
    assert mine.status == "running"
    sql(store_dir, "UPDATE runs SET host = 'elsewhere', pid = 1", write=True)
    (other,) = maintenance.list_runs(ctx.store)
    assert other.status == "running"  # another host's pid cannot be asked


# ---------------------------------------- item 12: a store inside a store
def test_a_store_inside_another_store_is_refused(store_dir: Path) -> None:
    ctx = provstore.open(store_dir)
    ctx.x = np.arange(4)
    for inner in (store_dir / "objects", store_dir / "objects" / "ab",
                  store_dir / "tmp" / "deeper"):
        existed = inner.exists()
        with pytest.raises(StoreError, match="is inside the store"):
            provstore.open(inner)
        assert inner.exists() == existed
        assert not (inner / "provstore.db").exists()
    with pytest.raises(StoreError, match="is inside the store"):
        provstore.open(store_dir.parent / "elsewhere", root=store_dir / "objects")
    assert run(store_dir, "verify").exit_code == 0
    sibling = provstore.open(store_dir.parent / "sibling")
    sibling.y = 2
    assert provstore.open(store_dir).x[3] == 3
