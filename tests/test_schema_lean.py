"""Schema 0005: lean call tables for the miss path.

``leases``, ``call_inputs`` and ``call_outputs`` are WITHOUT ROWID on SQLite,
``calls`` is indexed by key alone, and the indexes on
``artifacts.file_digest`` and ``call_inputs.artifact_id`` skip NULLs. Here:
what a new store has, that an old store keeps its rows and its hits through
the upgrade and back, and that the hot queries still use the indexes.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from sqlalchemy import create_engine, delete, inspect, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import Executable

import provstore
from provstore import locations
from provstore.api import database_url
from provstore.cli import cli
from provstore.db import lineage_queries as lq
from provstore.db import queries as q
from provstore.db.schema import SCHEMA_HEAD, migrations_dir
from sql import sql

LEAN = ("leases", "call_inputs", "call_outputs")
PARTIAL = {"ix_artifacts_file_digest": "file_digest", "ix_call_inputs_artifact_id": "artifact_id"}
TABLES = ("calls", "leases", "call_inputs", "call_outputs", "artifacts")
ORDER = {"calls": "id", "leases": "key", "call_inputs": "call_id, name",
         "call_outputs": "call_id, position", "artifacts": "id"}

# Two tracked functions in a script: every run of it that computes appends a
# line to the tally file, so a second run that appends nothing was all hits.
TRACK = textwrap.dedent(
    """
    import sys, provstore
    ctx = provstore.open(sys.argv[1])

    def ran():
        with open(sys.argv[2], "a") as tally:
            tally.write("ran\\n")

    @ctx.track
    def tiny(a, b):
        ran()
        return a + b

    @ctx.track
    def bounds(values):
        ran()
        return min(values), max(values)

    ctx.values = [3, 1, 2]
    print([tiny(i, i) for i in range(4)], bounds(ctx.values))
    """
)


def _sqlite_objects(db: Path) -> dict[str, str]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    finally:
        con.close()
    return dict(rows)


def test_a_new_sqlite_store_has_lean_call_tables(tmp_path: Path) -> None:
    store_dir = tmp_path / "study"
    provstore.open(store_dir).x = 1
    objects = _sqlite_objects(store_dir / "provstore.db")
    for table in LEAN:
        assert objects[table].rstrip().endswith("WITHOUT ROWID"), objects[table]
    assert "WITHOUT ROWID" not in objects["calls"]  # its id is the rowid
    for index, column in PARTIAL.items():
        assert objects[index].endswith(f"WHERE {column} IS NOT NULL"), objects[index]
    assert objects["ix_calls_key"] == 'CREATE INDEX ix_calls_key ON calls ("key")'
    assert "ix_calls_key_status" not in objects
    con = sqlite3.connect(store_dir / "provstore.db")
    partial = {row[1]: row[4] for table in ("artifacts", "call_inputs", "call_outputs")
               for row in con.execute(f"PRAGMA index_list({table})")}
    con.close()
    assert partial["ix_artifacts_file_digest"] == partial["ix_call_inputs_artifact_id"] == 1
    assert partial["ix_call_outputs_artifact_id"] == 0  # never NULL: nothing to skip


def test_the_indexes_on_each_backend(store_dir: Path) -> None:
    provstore.open(store_dir).x = 1
    indexes = {ix["name"]: ix for table in ("calls", "artifacts", "call_inputs")
               for ix in _inspect(store_dir, lambda i, t=table: i.get_indexes(t))}
    assert indexes["ix_calls_key"]["column_names"] == ["key"]
    assert "ix_calls_key_status" not in indexes
    for index, column in PARTIAL.items():
        where = {str(v) for k, v in indexes[index]["dialect_options"].items()
                 if k.endswith("_where")}
        assert {w.strip("()") for w in where} == {f"{column} IS NOT NULL"}, indexes[index]


def _inspect(store_dir: Path, read: Any) -> Any:
    engine = create_engine(database_url(store_dir, None, create=False), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return read(inspect(conn))
    finally:
        engine.dispose()


def _shape(url: str) -> dict[str, Any]:
    """What a schema is, comparable across ways of reaching it (not its SQL text)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            i = inspect(conn)
            return {t: (
                [(c["name"], str(c["type"]), c["nullable"]) for c in i.get_columns(t)],
                i.get_pk_constraint(t),
                sorted((fk["name"], fk["constrained_columns"], fk["referred_table"])
                       for fk in i.get_foreign_keys(t)),
                sorted((ix["name"], ix["column_names"], bool(ix["unique"]),
                        sorted((k, str(v)) for k, v in ix.get("dialect_options", {}).items()))
                       for ix in i.get_indexes(t)),
                i.get_table_options(t),
            ) for t in sorted(i.get_table_names())}
    finally:
        engine.dispose()


def _migrate(url: str, step: Any, revision: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    try:
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, revision)
            conn.commit()
    finally:
        engine.dispose()


def _empty_database(tmp_path: Path, db_backend: str, request: pytest.FixtureRequest) -> str:
    if db_backend == "sqlite":
        return f"sqlite:///{tmp_path / 'reference.db'}"
    cluster = request.getfixturevalue("pg_cluster")
    name = f"reference_{os.getpid()}"
    request.addfinalizer(lambda: cluster.drop_database(name))
    url: str = cluster.create_database(name)
    return url


def _rows(store_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {t: sql(store_dir, f"SELECT * FROM {t} ORDER BY {ORDER[t]}") for t in TABLES}


def _close_stores() -> None:
    # The schema changes under this process's open stores: drop them, so
    # that nothing here reads through a connection that saw the old one.
    for store in locations.open_stores():
        locations.close(store)


def _track(store_dir: Path, tmp_path: Path) -> tuple[str, int]:
    script, tally = tmp_path / "track.py", tmp_path / "tally.txt"
    script.write_text(TRACK)
    out = subprocess.run([sys.executable, str(script), str(store_dir), str(tally)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout, len(tally.read_text().splitlines()) if tally.exists() else 0


def test_an_old_store_keeps_its_calls_and_hits_through_upgrade_and_back(
        store_dir: Path, tmp_path: Path, db_backend: str,
        request: pytest.FixtureRequest) -> None:
    printed, computed = _track(store_dir, tmp_path)
    assert computed == 5
    url = database_url(store_dir, None, create=False)
    head = _shape(url)
    _close_stores()
    _migrate(url, command.downgrade, "0004")
    old = _shape(url)
    reference = _empty_database(tmp_path, db_backend, request)
    _migrate(reference, command.upgrade, "0004")
    assert old == _shape(reference)  # the downgrade restores 0004 exactly
    if db_backend == "sqlite":
        assert not any("WITHOUT ROWID" in s for s in _sqlite_objects(store_dir / "provstore.db")
                       .values())
    # An expired lease, as a killed process leaves one.
    call_id = sql(store_dir, "SELECT min(id) AS id FROM calls")[0]["id"]
    sql(store_dir, "INSERT INTO leases VALUES ('k-killed', 'owner', 1, '2026-01-01 00:00:00', "
                   "'host', 1, :c)", {"c": call_id}, write=True)
    before = _rows(store_dir)
    assert {r["artifact_id"] is None for r in before["call_inputs"]} == {True, False}
    assert sorted({r["position"] for r in before["call_outputs"]}) == [0, 1]

    upgraded = CliRunner().invoke(cli, ["--store", str(store_dir), "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"to {SCHEMA_HEAD}" in upgraded.output
    _close_stores()
    assert _shape(url) == head  # the same schema as a new store's
    assert _rows(store_dir) == before
    again, computed_again = _track(store_dir, tmp_path)
    assert (again, computed_again) == (printed, computed)  # every call a hit
    verified = CliRunner().invoke(cli, ["--store", str(store_dir), "verify"])
    assert verified.exit_code == 0, verified.output

    _close_stores()
    after = _rows(store_dir)
    _migrate(url, command.downgrade, "0004")
    assert _shape(url) == old
    assert _rows(store_dir) == after


def _plan(conn: sqlite3.Connection, stmt: Executable, **params: Any) -> str:
    compiled = stmt.params(**params).compile(dialect=sqlite.dialect(),
                                             compile_kwargs={"literal_binds": True})
    rows = conn.execute(f"EXPLAIN QUERY PLAN {compiled}").fetchall()
    return "\n".join(r[3] for r in rows)


def test_the_hot_queries_use_the_indexes(tmp_path: Path) -> None:
    store_dir = tmp_path / "study"
    printed, _ = _track(store_dir, tmp_path)
    assert printed
    ci, a = q.call_inputs, q.artifacts
    con = sqlite3.connect(store_dir / "provstore.db")
    try:
        plans = {
            "finished call": _plan(con, q.FINISHED_CALL, key="k"),
            "claim": _plan(con, q.CLAIM_STATE, key="k", code_digest="c"),
            "input of": _plan(con, select(ci.c.call_id).where(ci.c.artifact_id == 1)),
            "inputs of": _plan(con, select(ci.c.call_id, q.calls.c.function)
                               .join(q.calls, q.calls.c.id == ci.c.call_id)
                               .where(ci.c.artifact_id.in_([1, 2, 3]))),
            "downstream": _plan(con, lq.DOWNSTREAM_BINDINGS, root=1, max_depth=3),
            "by bytes": _plan(con, select(a.c.id).where(a.c.file_digest == "d")),
        }
        opened = _opened_by_gc_delete(con)
    finally:
        con.close()
    assert "calls USING INDEX ix_calls_key (key=?)" in plans["finished call"]
    assert "calls USING INDEX ix_calls_key (key=?)" in plans["claim"]
    assert "leases USING PRIMARY KEY (key=?)" in plans["claim"]
    for name in ("input of", "inputs of", "downstream"):
        assert "USING COVERING INDEX ix_call_inputs_artifact_id (artifact_id=?)" in plans[name]
    assert "USING COVERING INDEX ix_artifacts_file_digest (file_digest=?)" in plans["by bytes"]
    assert "TEMP B-TREE FOR ORDER BY" not in plans["finished call"]  # the index gives the order
    # Deleting artifacts (gc), SQLite checks that no input still refers to them.
    assert "ix_call_inputs_artifact_id" in opened and "call_inputs" not in opened


def _opened_by_gc_delete(con: sqlite3.Connection) -> set[str]:
    """The tables and indexes read by gc's delete of artifacts, with its foreign-key checks."""
    roots = dict(con.execute("SELECT rootpage, name FROM sqlite_master WHERE rootpage > 0"))
    con.execute("PRAGMA foreign_keys=ON")
    stmt = delete(q.artifacts).where(q.artifacts.c.id.in_([1, 2]))
    compiled = stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
    ops = con.execute(f"EXPLAIN {compiled}")
    return {roots[op[3]] for op in ops if op[1] == "OpenRead" and op[3] in roots}
