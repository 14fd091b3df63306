"""A process that only gets hits from an SQLite store never imports SQLAlchemy or numpy.

Both cost a short script most of its wall time (~0.2 s and ~0.09 s here);
:mod:`provstore.db.lite` reads and writes what such a process needs on plain
``sqlite3`` connections, with statements compiled from the Core ones.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import provstore
from provstore import hashing
from provstore.callkeys import value_digest
from provstore.db import lite_gen, lite_sql
from provstore.db import queries as q
from provstore.locations import close
from provstore.runs import RunRecorder

HIT_SCRIPT = textwrap.dedent("""\
    import json, sys
    import provstore

    def tiny(a, b):
        return a + b

    ctx = provstore.open(sys.argv[1])
    f = ctx.track(tiny)
    value = f(1, 2)
    loaded = {m for m in ("sqlalchemy", "numpy", "alembic") if m in sys.modules}
    print(json.dumps({"value": value, "loaded": sorted(loaded)}))
""")


def _run(script: Path, *args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result


def test_the_generated_statements_match_the_core_ones() -> None:
    written = Path(lite_sql.__file__).read_text()
    assert written == lite_gen.render(), (
        "src/provstore/db/lite_sql.py is out of date: run `python -m provstore.db.lite_gen`")


def test_a_process_that_only_hits_needs_neither_sqlalchemy_nor_numpy(tmp_path: Path) -> None:
    script = tmp_path / "hit.py"
    script.write_text(HIT_SCRIPT)
    store = tmp_path / "study"
    first = _run(script, str(store))  # the miss computes and stores
    assert first["value"] == 3
    assert "sqlalchemy" in first["loaded"]  # type: ignore[operator]
    second = _run(script, str(store))
    assert second == {"value": 3, "loaded": []}

    con = sqlite3.connect(store / "provstore.db")
    try:
        runs = con.execute("SELECT status, hits, misses, saved_seconds, started, ended "
                           "FROM runs ORDER BY id").fetchall()
        last_hit = con.execute("SELECT last_hit FROM calls").fetchall()
    finally:
        con.close()
    assert [(r[0], r[1], r[2]) for r in runs] == [("finished", 0, 1), ("finished", 1, 0)]
    assert runs[1][3] is not None and runs[1][3] >= 0
    assert runs[1][4] <= runs[1][5]  # written in SQLAlchemy's format: text sorts as time
    assert last_hit[0][0] is not None


def test_times_written_without_sqlalchemy_read_back_through_it(tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "study")
    store = ctx.store
    assert store.lite is not None
    lite_runs = RunRecorder(lambda: store.engine, store.lite)
    alchemy_runs = RunRecorder(lambda: store.engine)
    ids = [lite_runs.run_id(), alchemy_runs.run_id()]
    rows = {r.id: r for r in store.query(q.runs.select().where(q.runs.c.id.in_(ids))).all()}
    assert all(isinstance(rows[i].started, type(rows[ids[1]].started)) for i in ids)
    con = sqlite3.connect(tmp_path / "study" / "provstore.db")
    try:
        texts = [con.execute("SELECT started FROM runs WHERE id = ?", (i,)).fetchone()[0]
                 for i in ids]
    finally:
        con.close()
    assert [len(t) for t in texts] == [26, 26]  # "YYYY-MM-DD HH:MM:SS.ffffff" from both
    lite_runs._close()
    alchemy_runs._close()
    close(store)


def test_a_lite_read_that_fails_falls_back_to_the_full_path(tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "study")
    ctx.x = 5
    store = ctx.store
    assert store.lite is not None
    missing = lite_sql.FINISHED_CALL.__class__(
        "SELECT id FROM no_such_table WHERE key = ?", (("key", None),), (("id", None),))
    assert store.lite.read(missing, {"key": "k"}) is None
    assert store.finished_call("k") is None  # the connection was replaced and works
    close(store)


NUMPY_LATE = textwrap.dedent("""\
    import json, sys
    from provstore import hashing
    from provstore.callkeys import value_digest
    before = hashing.digest([1, "a"])
    assert "numpy" not in sys.modules
    import numpy as np
    a = np.arange(6.0).reshape(2, 3)
    print(json.dumps([before, hashing.digest(a), hashing.digest(np.float32(1.5)),
                      hashing.digest(np.dtype("int16")), hashing.digest(np.ma.masked_array(a)),
                      value_digest([a, 1]), value_digest(a)]))
""")


def test_values_hash_alike_when_numpy_is_imported_late(tmp_path: Path) -> None:
    script = tmp_path / "late.py"
    script.write_text(NUMPY_LATE)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    a = np.arange(6.0).reshape(2, 3)
    expected = [hashing.digest([1, "a"]), hashing.digest(a), hashing.digest(np.float32(1.5)),
                hashing.digest(np.dtype("int16")), hashing.digest(np.ma.masked_array(a)),
                value_digest([a, 1]), value_digest(a)]
    assert json.loads(out.stdout) == expected
