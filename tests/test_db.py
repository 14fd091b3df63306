"""The database: Alembic migrations, schema versions, pragmas, concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

import provstore
from provstore.api import database_url
from provstore.db.engine import make_engine
from provstore.db.models import Base
from provstore.db.schema import SCHEMA_HEAD, SCHEMA_REVISIONS, check_schema, migrations_dir
from provstore.errors import ProvstoreError, StoreError, StoreNotFoundError, StoreVersionError
from sql import scalar, sql


def test_schema_head_matches_alembic() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    script = ScriptDirectory.from_config(cfg)
    assert script.get_heads() == [SCHEMA_HEAD]
    ordered = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    assert tuple(ordered) == SCHEMA_REVISIONS


def test_migrated_schema_matches_models(ctx: provstore.Context, store_dir: Path) -> None:
    ctx.x = 1
    engine = create_engine(database_url(store_dir, None))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path: Path) -> None:
    store_dir = tmp_path / "study"  # SQLite's pragmas: not the parametrized store_dir
    ctx = provstore.open(store_dir)
    ctx.x = 1
    con = sqlite3.connect(store_dir / "provstore.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    with ctx.store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30_000


def test_a_newer_schema_is_refused_naming_both_versions(store_dir: Path) -> None:
    provstore.open(store_dir).x = 1
    sql(store_dir, "UPDATE alembic_version SET version_num = '9999'", write=True)
    code = f"import provstore; provstore.open({str(store_dir)!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "StoreVersionError" in out.stderr
    assert "9999" in out.stderr and SCHEMA_HEAD in out.stderr


def test_an_old_store_is_upgraded_on_open_with_its_data(tmp_path: Path) -> None:
    from alembic import command

    store_dir = tmp_path / "study"  # an SQLite file as the first release wrote it
    store_dir.mkdir(parents=True)
    engine = make_engine(f"sqlite:///{store_dir / 'provstore.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    with engine.connect() as conn:  # a store as the first release wrote it
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, SCHEMA_REVISIONS[0])
        conn.commit()
    engine.dispose()
    code = (
        "import sys, sqlite3; con = sqlite3.connect(sys.argv[1]); "
        "con.execute(\"INSERT INTO scopes VALUES (1, NULL, '', NULL, NULL, '', 0)\"); "
        "con.execute(\"INSERT INTO artifacts VALUES (1, 'xxh3_128', 'ab', 'json', '', 1, NULL, "
        "X'31', '{}', '{}', '2026-01-01 00:00:00', NULL)\"); "
        "con.execute(\"INSERT INTO bindings VALUES (1, 1, 'x', 1, 1, '2026-01-01 00:00:00', NULL, "
        "NULL)\"); con.commit()"
    )
    subprocess.run([sys.executable, "-c", code, str(store_dir / "provstore.db")], check=True)
    ctx = provstore.open(store_dir)
    assert ctx.x == 1
    con = sqlite3.connect(store_dir / "provstore.db")
    assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_HEAD
    con.close()


def test_store_version_error_from_check(store_dir: Path) -> None:
    provstore.open(store_dir).x = 1
    sql(store_dir, "UPDATE alembic_version SET version_num = '0042'", write=True)
    engine = make_engine(database_url(store_dir, None))
    with pytest.raises(StoreVersionError, match=rf"0042.*newer than {SCHEMA_HEAD}"):
        check_schema(engine)
    engine.dispose()


def test_a_file_that_is_not_a_database_gives_a_clear_error(tmp_path: Path) -> None:
    loc = tmp_path / "store"
    loc.mkdir()
    (loc / "provstore.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a provstore database") as info:
        provstore.open(loc)
    assert isinstance(info.value, ProvstoreError)


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    loc = tmp_path / "store"
    loc.mkdir()
    con = sqlite3.connect(loc / "provstore.db")
    con.execute("CREATE TABLE other (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a provstore store"):
        provstore.open(loc)


def test_location_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(StoreError, match="takes the store's directory"):
        provstore.open(f)


def test_create_false_on_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError) as info:
        provstore.open(tmp_path / "missing", create=False)
    assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / "missing").exists()


def test_opening_an_existing_store_changes_nothing(store_dir: Path) -> None:
    provstore.open(store_dir).x = 1
    before = sql(store_dir, "SELECT * FROM bindings ORDER BY id")
    subprocess.run([sys.executable, "-c", f"import provstore; provstore.open({str(store_dir)!r})"],
                   check=True)
    assert sql(store_dir, "SELECT * FROM bindings ORDER BY id") == before
    assert scalar(store_dir, "SELECT count(*) FROM runs") == 1  # reads open no run


def test_env_var_names_the_default_location(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVSTORE", str(tmp_path / "from-env"))
    provstore.open().x = 1
    assert (tmp_path / "from-env" / "provstore.db").is_file()


WRITER = textwrap.dedent(
    """
    import sys, provstore
    ctx = provstore.open(sys.argv[1])
    worker = sys.argv[2]
    common = ctx.scope("common")   # made before the with-block: not redirected by it
    with ctx.scope(worker=worker):
        for i in range(int(sys.argv[3])):
            ctx[f"n{i}"] = i
            ctx.shared = i          # every worker rebinds one name in its scope
            common[f"w{worker}-{i}"] = i
    """
)


def test_concurrent_writer_processes_lose_nothing(store_dir: Path, tmp_path: Path) -> None:
    provstore.open(store_dir)  # create first so the race is on writes, not creation
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    n_procs, n_writes = 6, 60
    procs = [subprocess.Popen([sys.executable, str(script), str(store_dir), str(w), str(n_writes)],
                              stderr=subprocess.PIPE, text=True) for w in range(n_procs)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n_procs, errors
    assert not any("locked" in e for e in errors)
    ctx = provstore.open(store_dir)
    for w in range(n_procs):
        scope = ctx.scope(worker=str(w))
        assert [scope[f"n{i}"] for i in range(n_writes)] == list(range(n_writes))
        assert [v.number for v in scope.history("shared").versions] == list(
            range(1, n_writes + 1)
        )
    assert len(ctx.scope("common").names(inherited=False)) == n_procs * n_writes


def test_concurrent_creation_of_a_new_store(tmp_path: Path) -> None:
    loc = tmp_path / "fresh"
    code = "import sys, provstore; provstore.open(sys.argv[1])[sys.argv[2]] = 1"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(loc), f"x{i}"],
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert provstore.open(loc).names() == ["x0", "x1", "x2", "x3"]


def _connect_to_new_files(root: str, count: int, barrier: Any, found: Any) -> None:
    errors = []
    for i in range(count):
        barrier.wait()  # both processes connect to file i at the same instant
        engine = make_engine(f"sqlite:///{root}/db{i}.sqlite")
        try:
            engine.connect().close()
        except Exception as exc:  # the test reports every kind
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        finally:
            engine.dispose()
    found.put(errors)


def test_two_processes_connecting_to_a_new_file_at_once_both_succeed(tmp_path: Path) -> None:
    """Turning a new file to WAL mode at the same instant as another process works.

    Both connections hold a shared lock and want an exclusive one, so SQLite
    answers one of them "database is locked" at once, without waiting for
    its busy timeout: 28 of 400 connections failed so, and two processes
    creating one store (bench_tracking's race) failed at open.
    """
    spawn = multiprocessing.get_context("spawn")
    barrier, found = spawn.Barrier(2), spawn.Queue()
    procs = [spawn.Process(target=_connect_to_new_files, args=(str(tmp_path), 150, barrier, found))
             for _ in range(2)]
    for p in procs:
        p.start()
    errors = [found.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert errors == [[], []]


def test_hot_path_lookups_use_indexes(tmp_path: Path) -> None:
    """Every prebuilt lookup on the hot path is answered by an index, never a scan.

    SQLite's EXPLAIN QUERY PLAN, on an SQLite store: PostgreSQL's planner
    rightly scans the tiny tables of a test store whatever its indexes.
    """
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    from provstore.db import queries as q

    ctx = provstore.open(tmp_path / "study")
    ctx.x = 1
    statements = {
        "ARTIFACT_BY_DIGEST": (q.ARTIFACT_BY_DIGEST, {"algorithm": "a", "digest": "d",
                                                      "format": "f"}),
        "ANY_ARTIFACT_BY_DIGEST": (q.ANY_ARTIFACT_BY_DIGEST, {"algorithm": "a", "digest": "d"}),
        "FINISHED_CALL": (q.FINISHED_CALL, {"key": "k"}),
        "HEADS_FOR_NAME": (q.HEADS_FOR_NAME, {"name": "x", "chain": [1, 2]}),
        "HEAD": (q.HEAD, {"scope_id": 1, "name": "x"}),
        "CALL_OUTPUTS": (q.CALL_OUTPUTS, {"call_id": 1}),
        "LEASE_BY_KEY": (q.LEASE_BY_KEY, {"key": "k"}),
        "FILE_BY_STAT": (q.FILE_BY_STAT, {"path": "p", "size": 1, "mtime_ns": 1, "inode": 1}),
    }
    with ctx.store.engine.connect() as conn:
        for label, (stmt, params) in statements.items():
            # Constant test values rendered inline: EXPLAIN needs the full text.
            compiled = stmt.params(params).compile(dialect=sqlite_dialect.dialect(),
                                                   compile_kwargs={"literal_binds": True})
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
            details = " | ".join(str(row[-1]) for row in plan)
            # SEARCH is an index lookup; SCAN reads a whole table or index.
            scans = [d for d in details.split(" | ")
                     if d.startswith("SCAN") and d != "SCAN CONSTANT ROW"]
            assert not scans, f"{label} scans a table: {details}"


@pytest.mark.parametrize("nth", [1, 3, 12])
def test_a_store_killed_while_its_schema_is_made_opens_cleanly(tmp_path: Path, nth: int) -> None:
    # Killed between two statements of the first migration, a new SQLite
    # store must not be left with half a schema that every later open then
    # fails to create again ("table code_versions already exists").
    store_dir = tmp_path / "new"
    code = f"import provstore; provstore.open({str(store_dir)!r}).x = 1"
    env = {**os.environ, "PROVSTORE_FAULT": f"schema.statement:kill@{nth}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == -signal.SIGKILL, out.stderr
    ctx = provstore.open(store_dir)
    ctx.x = 2
    assert provstore.open(store_dir).x == 2
