"""Shared fixtures: every store test runs on a real SQLite store under tmp_path
and on a fresh database of a throwaway PostgreSQL cluster.

``PROVSTORE_TEST_BACKENDS=sqlite`` (default ``sqlite,postgresql``) limits the
backends, for machines without PostgreSQL; CI runs both.
"""

from __future__ import annotations

import importlib
import itertools
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

import provstore
from provstore import locations
from provstore.db import engine as db_engine
from provstore.db import schema as db_schema

sys.path.insert(0, str(Path(__file__).parent))
from pgserver import PostgresCluster, find_bindir

TEMPLATE = "provstore_template"
_BACKENDS = [b.strip() for b in os.environ.get("PROVSTORE_TEST_BACKENDS",
                                                "sqlite,postgresql").split(",") if b.strip()]
_IDS = {"sqlite": "sqlite", "postgresql": "pg"}
if not _BACKENDS or set(_BACKENDS) - set(_IDS):
    raise pytest.UsageError(
        f"PROVSTORE_TEST_BACKENDS={os.environ.get('PROVSTORE_TEST_BACKENDS')!r}: "
        "give a comma-separated subset of sqlite,postgresql")
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One cluster per session, started on first use, with a template at schema head."""
    if find_bindir() is None:
        pytest.fail(
            "PostgreSQL is needed for the postgresql test backend but initdb/pg_ctl were "
            "not found (on PATH or in /usr/lib/postgresql/*/bin): install Debian's "
            "`postgresql` package, run scripts/ensure-postgres, or set "
            "PROVSTORE_TEST_BACKENDS=sqlite", pytrace=False)
    cluster = PostgresCluster()
    try:
        engine = db_engine.make_engine(cluster.create_database(TEMPLATE))
        db_schema.upgrade(engine)
        engine.dispose()  # a template must have no open connections
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=[pytest.param(b, id=_IDS[b]) for b in _BACKENDS])
def db_backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test: ``"sqlite"`` or ``"postgresql"``."""
    backend: str = request.param
    return backend


@pytest.fixture
def store_dir(tmp_path: Path, db_backend: str,
              request: pytest.FixtureRequest) -> Iterator[Path]:
    path = tmp_path / "study"
    if db_backend == "sqlite":
        yield path
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    name = f"t_{next(_counter)}_{os.getpid()}"
    url = cluster.create_database(name, template=TEMPLATE)
    try:
        provstore.open(path, db=url)  # records the URL: later opens of `path` use it
        yield path
    finally:
        _close_engines(name)
        cluster.drop_database(name)


def _close_engines(dbname: str) -> None:
    # Readers and pools hold connections; close them so the database can go
    # (DROP ... WITH (FORCE) still ends any a child process left behind).
    for store in locations.open_stores():
        if store.engine.url.database == dbname:
            locations.close(store)
    for engine in list(db_engine._ENGINES):
        if engine.url.database == dbname:
            engine.dispose()


@pytest.fixture
def ctx(store_dir: Path) -> provstore.Context:
    return provstore.open(store_dir)


@pytest.fixture(autouse=True)
def _fresh_hash_warnings() -> None:
    # The pickle-fallback warning fires once per type per process; tests that
    # expect it must not depend on which test hashed the type first.
    from provstore import hashing

    hashing._warned_types.clear()


@pytest.fixture
def module_factory(tmp_path: Path) -> Iterator[Callable[[str], ModuleType]]:
    """Write a module and (re)import it, like editing and rerunning a script."""
    name = f"editmod_{tmp_path.name.replace('-', '_')}"
    sys.path.insert(0, str(tmp_path))
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True

    def write(source: str) -> ModuleType:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)
        importlib.invalidate_caches()
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        return importlib.import_module(name)

    yield write
    sys.dont_write_bytecode = dont_write
    sys.path.remove(str(tmp_path))
    sys.modules.pop(name, None)
