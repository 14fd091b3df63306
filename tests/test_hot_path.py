"""What a tracked call's hot path costs, counted rather than timed.

Counts of SQL statements, as SQLite itself sees them (its trace callback, so
``BEGIN`` and ``COMMIT`` count, and every statement whichever way it was
sent), and the modules a process imports to open a store and get a hit.
Timings are in ``benchmarks/bench_tracking.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError

import provstore
from provstore.db import queries as q
from provstore.db.driver import transaction


def tiny(a: int, b: int) -> int:
    return a + b


class Statements:
    """Every statement SQLite runs for one store, from the moment this is made."""

    def __init__(self, ctx: provstore.Context) -> None:
        self.seen: list[str] = []
        store = ctx.store
        store.readers.close_all()
        store.engine.dispose()  # every later connection is a new one, traced
        event.listen(store.engine, "connect", self._trace)

    def _trace(self, dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.set_trace_callback(lambda s: self.seen.append(" ".join(s.split())))

    def during(self, action: Any) -> list[str]:
        self.seen.clear()
        action()
        return list(self.seen)


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[tuple[provstore.Context, Statements]]:
    ctx = provstore.open(tmp_path / "store")
    statements = Statements(ctx)
    yield ctx, statements
    ctx.store.close()


def test_a_miss_takes_two_write_transactions_and_reads_nothing_back(
        counted: tuple[provstore.Context, Statements]) -> None:
    ctx, statements = counted
    f = ctx.track(tiny)
    f(0, 1000)  # the run record and the code version are written once
    seen = statements.during(lambda: f(7, 1000))
    assert f(7, 1000) == 1007
    assert [s for s in seen if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"] * 2
    assert seen.count("COMMIT") == 2
    # The hit check, the claim (5 + COMMIT), the commit (8 + COMMIT, the two
    # inputs one executemany traced per row: releasing the lease tells whether
    # it was still held, and short int arguments are never looked up as
    # stored files); nothing read back afterwards: the committed rows are the
    # result.
    assert len(seen) <= 17, "\n".join(seen)
    commit = seen[seen.index("COMMIT") + 1:]
    assert not any(s.startswith("SELECT") and "FROM leases" in s for s in commit), seen
    assert not any("inline IS NULL" in s for s in seen), seen
    assert not any(s.startswith("SELECT") for s in seen[seen.index("COMMIT", 7) + 1:])


def test_a_repeated_hit_runs_no_statement_and_a_first_hit_reads_twice(
        counted: tuple[provstore.Context, Statements]) -> None:
    ctx, statements = counted
    f = ctx.track(tiny)
    f(1, 2)
    assert statements.during(lambda: f(1, 2)) == []
    ctx.store.memo.forget_keys()  # as in a process that did not compute it
    seen = statements.during(lambda: f(1, 2))
    assert len(seen) <= 2 and all(s.startswith("SELECT") for s in seen), seen


PROCESS = textwrap.dedent("""\
    import json, sys
    import provstore

    def tiny(a, b):
        return a + b

    f = provstore.open(sys.argv[1]).track(tiny)
    assert f(int(sys.argv[2]), 2) == int(sys.argv[2]) + 2
    print(json.dumps(sorted(sys.modules)))
""")


@pytest.mark.parametrize("call", ["miss", "hit"])
def test_a_process_that_opens_a_store_and_calls_imports_no_orm_lineage_or_maintenance(
        tmp_path: Path, call: str) -> None:
    script = tmp_path / "call.py"
    script.write_text(PROCESS)

    def run(a: int) -> set[str]:
        done = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), str(a)],
                              capture_output=True, text=True, check=True, timeout=120)
        return set(json.loads(done.stdout.splitlines()[-1]))

    run(1)  # creates the store (Alembic) and computes tiny(1, 2)
    modules = run(1 if call == "hit" else 2)
    # Each costs start-up time and none is needed to open a store, hit or miss.
    unneeded = {"sqlalchemy.orm", "alembic", "provstore.lineage", "provstore.maintenance",
                "provstore.parallel", "joblib", "sqlalchemy.dialects.postgresql"}
    assert modules & unneeded == set()


def test_a_driver_transaction_writes_what_sqlalchemy_reads_and_fails_as_it_does(
        tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "store")
    engine = ctx.store.engine
    expires = dt.datetime(2031, 5, 6, 7, 8, 9, 123456)
    lease = {"key": "k", "owner": "o", "fence": 1, "expires": expires, "host": "h", "pid": 1,
             "call_id": None}
    transaction(engine, lambda tx: tx.execute(q.INSERT_LEASE, lease))
    # A timestamp written on the driver reads back through SQLAlchemy unchanged.
    found = ctx.store.query(q.LEASE_BY_KEY, {"key": "k"}).one()
    assert found.expires == expires and found.fence == 1
    assert transaction(engine, lambda tx: tx.execute(q.LEASE_BY_KEY, {"key": "k"}).first()
                       ).expires == expires
    # The driver's error, rerun through SQLAlchemy: SQLAlchemy's error, nothing written.
    with pytest.raises(IntegrityError):
        transaction(engine, lambda tx: (tx.execute(q.DELETE_LEASE, {
            "p_key": "k", "p_owner": "o", "p_fence": 1}), tx.execute(q.INSERT_LEASE, {
                **lease, "key": "k2"}), tx.execute(q.INSERT_LEASE, {**lease, "key": "k2"})))
    assert [r.key for r in ctx.store.query(q.LEASE_BY_KEY, {"key": "k"})] == ["k"]
    assert ctx.store.query(q.LEASE_BY_KEY, {"key": "k2"}).first() is None
