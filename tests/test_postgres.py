"""What is particular to server databases, on a real PostgreSQL server.

The rest of the suite runs on both backends through the ``store_dir``
fixture; here: the database URL recorded in a store directory, schema
creation and explicit upgrades, the database clock, and retried conflicts.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

import provstore
from provstore.cli import cli
from provstore.db import engine as db_engine
from provstore.db import schema as db_schema
from provstore.errors import StoreError, StoreVersionError
from sql import scalar, sql

_names = itertools.count()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty database on the session's throwaway server."""
    cluster = request.getfixturevalue("pg_cluster")
    name = f"empty_{next(_names)}_{os.getpid()}"
    url: str = cluster.create_database(name)
    try:
        yield url
    finally:
        from conftest import _close_engines

        _close_engines(name)
        cluster.drop_database(name)


def _with_password(url: str, password: str) -> str:
    return url.replace("postgres@", f"postgres:{password}@")


def test_an_empty_database_gets_the_schema_and_the_directory_records_it(
        pg_url: str, tmp_path: Path) -> None:
    study = tmp_path / "study"
    ctx = provstore.open(study, db=_with_password(pg_url, "s3cret"))
    ctx.x = 1
    recorded = (study / "provstore.url").read_text().strip()
    assert recorded == pg_url  # the password is never written to disk
    assert not (study / "provstore.db").exists()
    assert scalar(study, "SELECT version_num FROM alembic_version") == db_schema.SCHEMA_HEAD
    # A plain open, here and in another process, finds the database again.
    assert provstore.open(study).x == 1
    code = "import sys, provstore; print(provstore.open(sys.argv[1]).x + 1)"
    out = subprocess.run([sys.executable, "-c", code, str(study)], check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "2"
    assert CliRunner().invoke(cli, ["--store", str(study), "ls"]).exit_code == 0


def test_a_directory_refuses_a_second_database(pg_url: str, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    study = tmp_path / "study"
    provstore.open(study, db=pg_url).x = 1
    other = pg_url.rsplit("/", 1)[0] + "/postgres"
    with pytest.raises(StoreError, match="belongs to the database") as info:
        provstore.open(study, db=other)
    assert "open it without db=" in str(info.value)
    # An SQLite store directory is not silently given a server database either.
    local = tmp_path / "local"
    provstore.open(local).y = 2
    with pytest.raises(StoreError, match="holds an SQLite store"):
        provstore.open(local, db=pg_url)
    assert not (local / "provstore.url").exists()


def test_a_server_database_is_never_upgraded_silently(pg_url: str, tmp_path: Path) -> None:
    # Build the schema at the previous revision, as an older provstore would.
    from alembic import command
    from alembic.config import Config

    engine = create_engine(pg_url, poolclass=NullPool)
    cfg = Config()
    cfg.set_main_option("script_location", str(db_schema.migrations_dir()))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, db_schema.SCHEMA_REVISIONS[-2])
        conn.commit()
    engine.dispose()

    study = tmp_path / "study"
    with pytest.raises(StoreVersionError, match=r"provstore --store .* upgrade") as info:
        provstore.open(study, db=pg_url)
    assert db_schema.SCHEMA_REVISIONS[-2] in str(info.value)
    assert "postgres@" in str(info.value) and "s3cret" not in str(info.value)

    result = CliRunner().invoke(cli, ["--store", str(study), "--db", pg_url, "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"to {db_schema.SCHEMA_HEAD}" in result.output
    provstore.open(study, db=pg_url).x = 3
    assert provstore.open(study).x == 3


def test_concurrent_first_opens_create_the_schema_once(pg_url: str, tmp_path: Path) -> None:
    code = ("import sys, provstore; c = provstore.open(sys.argv[1], db=sys.argv[2]); "
            "c[sys.argv[3]] = 1")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"s{i}"), pg_url,
                               f"x{i}"], stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    rows = sql(tmp_path / "s0", "SELECT name FROM bindings ORDER BY name")
    assert [r["name"] for r in rows] == ["x0", "x1", "x2", "x3"]


def test_leases_expire_on_the_servers_clock(ctx: provstore.Context, db_backend: str) -> None:
    with ctx.store.engine.connect() as conn:
        now = db_engine.db_now(conn)
        if db_backend == "postgresql":
            server = conn.execute(text("SELECT now() AT TIME ZONE 'UTC'")).scalar_one()
            assert abs((server - now).total_seconds()) < 1
    assert now.tzinfo is None  # stored timestamps are naive UTC on both backends


def test_conflicting_writers_are_rerun_not_failed(ctx: provstore.Context) -> None:
    # Threads binding one name race for each version number; on PostgreSQL
    # the losers get serialization failures, which must be retried.
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for j in range(40):
                ctx.shared = i * 1000 + j
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    versions = ctx.history("shared").versions
    assert [v.number for v in versions] == list(range(1, 161))
    values = sorted(ctx.get("shared", version=v.number) for v in versions)
    assert values == sorted(i * 1000 + j for i in range(4) for j in range(40))
