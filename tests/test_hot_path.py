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
from sqlalchemy import event, func, select
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
        if store.lite is not None:  # what a hit reads, without SQLAlchemy (this thread)
            self._trace(store.lite.connection(), None)

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
    # The hit check, the claim (4 + COMMIT: one read of the finished call, the
    # code version and the lease), the commit (7 + COMMIT, the two inputs one
    # executemany traced per row: releasing the lease tells whether it was
    # still held, a new output is inserted without a lookup first, the code
    # version the claim found is not looked up again, and short int arguments
    # are never looked up as stored files); nothing read back afterwards: the
    # committed rows are the result.
    assert len(seen) <= 14, "\n".join(seen)
    claim = seen[seen.index("BEGIN IMMEDIATE"):seen.index("COMMIT")]
    assert sum(s.startswith("SELECT") for s in claim) == 1, claim
    commit = seen[seen.index("COMMIT") + 1:]
    assert not any(s.startswith("SELECT") for s in commit), commit
    assert not any("inline IS NULL" in s for s in seen), seen


def test_a_run_of_misses_claims_at_once_and_still_finds_what_others_computed(
        counted: tuple[provstore.Context, Statements], tmp_path: Path) -> None:
    # A sweep over new arguments: after a few misses in a row, the read for
    # a finished call before each claim is skipped (the claim reads it).
    ctx, statements = counted
    (tmp_path / "sweep_mod.py").write_text(textwrap.dedent("""
        import os
        def scaled(x):
            print("computed", x, os.getpid(), flush=True)
            return 3 * x
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        import sweep_mod
    finally:
        sys.path.remove(str(tmp_path))
    f = ctx.track(sweep_mod.scaled)
    for x in range(4):
        assert f(x) == 3 * x
    seen = statements.during(lambda: f(10))
    assert seen[0] == "BEGIN IMMEDIATE", seen  # no read before the claim
    # Another process computes x=11; this one, mid-sweep, must take its result.
    other = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import provstore, sweep_mod
        f = provstore.open({str(ctx.store.root)!r}).track(sweep_mod.scaled)
        f(11), f(12)
    """)], capture_output=True, text=True, timeout=120)
    assert other.returncode == 0 and other.stdout.startswith("computed 11"), other.stderr
    [before] = [c.id for c in ctx.calls(status="done") if c.params == {"x": 11}]
    assert f(11) == 33
    assert [c.id for c in ctx.calls(status="done") if c.params == {"x": 11}] == [before]
    # And after a hit, the next call reads before it would claim: a hit
    # takes no write transaction.
    assert f(1) == 3
    hit = statements.during(lambda: f(12))
    assert not any(s.startswith("BEGIN") for s in hit), hit


def test_a_miss_records_a_new_code_version_and_a_known_output_value(
        counted: tuple[provstore.Context, Statements]) -> None:
    # What the statements saved above skip must still be written when needed:
    # the first call of a function records its code version, and an output
    # equal to a stored value links to that artifact (no second row).
    ctx, statements = counted
    f = ctx.track(tiny)
    seen = statements.during(lambda: f(1, 2))
    assert any(s.startswith("INSERT INTO code_versions") for s in seen), seen
    g = ctx.track(lambda a: a + 0, name="same")
    assert g(3) == 3 and f(2, 1) == 3
    store = ctx.store
    count = store.query(select(func.count()).select_from(q.artifacts).where(
        q.artifacts.c.inline == b"3")).scalar_one()
    outputs = store.query(select(q.call_outputs.c.artifact_id).join(
        q.calls, q.calls.c.id == q.call_outputs.c.call_id).where(q.calls.c.status == "done")
    ).scalars().all()
    assert count == 1 and len(outputs) == 3 and len(set(outputs)) == 1
    digests = set(store.query(select(q.calls.c.code_digest)).scalars())
    recorded = set(store.query(select(q.code_versions.c.digest)).scalars())
    assert digests <= recorded


def test_the_claim_read_uses_indexes(tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "store")
    compiled = q.CLAIM_STATE.params({"key": "k", "code_digest": "c"}).compile(
        dialect=ctx.store.engine.dialect, compile_kwargs={"literal_binds": True})
    with ctx.store.engine.connect() as conn:
        plan = [str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")]
    # SEARCH is an index lookup; SCAN reads a whole table (only the one-row anchor may).
    assert not [d for d in plan if d.startswith("SCAN")
                and d not in ("SCAN one_row", "SCAN CONSTANT ROW")], plan


def test_a_repeated_hit_runs_no_statement_and_a_first_hit_reads_twice(
        counted: tuple[provstore.Context, Statements]) -> None:
    ctx, statements = counted
    f = ctx.track(tiny)
    f(1, 2)
    assert statements.during(lambda: f(1, 2)) == []
    ctx.store.memo.forget_keys()  # as in a process that did not compute it
    seen = statements.during(lambda: f(1, 2))
    assert 1 <= len(seen) <= 2 and all(s.startswith("SELECT") for s in seen), seen


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
