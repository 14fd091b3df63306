"""Imports run one way: the layer table of docs/architecture.md, checked on the source.

Every module of ``src/provstore`` is parsed with :mod:`ast` (nothing is
imported), and every ``import`` in it counts: at module level, inside
functions and under ``if TYPE_CHECKING:`` alike, since each is a dependency a
reader has to follow. The test fails on an import cycle, on an import of a
higher layer, on a private name taken from another module, and on SQL
statements used outside the modules that own the database.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "provstore"

# (layer, prefix): a module belongs to the first row whose prefix names it or its package.
LAYERS: list[tuple[int, str]] = [
    (4, "provstore.cli"), (4, "provstore.api"), (4, "provstore.context"),
    (4, "provstore.__main__"), (4, "provstore"),
    (3, "provstore.tracking"), (3, "provstore.computing"), (3, "provstore.parallel"),
    (3, "provstore.mapping"),
    (3, "provstore.sweeps"), (3, "provstore.lineage"), (3, "provstore.maintenance"),
    (3, "provstore.testing"), (3, "provstore.memory"),
    (2, "provstore.ambient"), (2, "provstore.locations"),
    (1, "provstore.store"), (1, "provstore.saving"), (1, "provstore.leases"),
    (1, "provstore.runs"), (1, "provstore.records"), (1, "provstore.identity"),
    (1, "provstore.objects"), (1, "provstore.db"), (1, "provstore.backends"),
    (1, "provstore.computelock"),
    (0, "provstore.errors"), (0, "provstore.scope"), (0, "provstore.hashing"),
    (0, "provstore.hashing_pandas"), (0, "provstore.hashing_callables"), (0, "provstore.hasher"),
    (0, "provstore.files"), (0, "provstore.fstype"), (0, "provstore.codeversion"),
    (0, "provstore.codesource"), (0, "provstore.callkeys"), (0, "provstore.byvalue"),
    (0, "provstore.faults"), (0, "provstore.periodic"), (0, "provstore.lazy"),
]

# Inside the lineage package, read top to bottom: a module imports only lower ranks.
LINEAGE_RANKS = {
    "provstore.lineage.model": 0,
    "provstore.lineage.reader": 1, "provstore.lineage.render": 1,
    "provstore.lineage.explain": 2, "provstore.lineage.impact": 2,
    "provstore.lineage.diff": 3,
    "provstore.lineage.history": 4,
    "provstore.lineage": 5,
}
# Services that lineage must never depend on (lineage is read by them, not the reverse).
NOT_FROM_LINEAGE = ("provstore.tracking", "provstore.maintenance", "provstore.parallel")
# Codecs know nothing of the database, and the database nothing of formats.
SEPARATE = {"provstore.backends": "provstore.db", "provstore.db": "provstore.backends"}
# The only modules that may execute the store's SQL statements.
SQL_MODULES = ("provstore.db", "provstore.store", "provstore.leases", "provstore.runs",
               "provstore.lineage.reader", "provstore.maintenance")
SQL_STATEMENTS = ("provstore.db.queries", "provstore.db.lineage_queries")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    for layer, prefix in LAYERS:
        # The bare package is the facade; its modules are listed one by one.
        if module == prefix or (prefix != "provstore" and module.startswith(prefix + ".")):
            return layer
    raise AssertionError(f"{module} is not in the layer table: add it to LAYERS and the docs")


def imports_of(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """Yield (imported provstore module, names imported from it, line) for every import."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "provstore":
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "provstore":
                continue
            names = [a.name for a in node.names]
            # `from . import hashing` imports a module, not a name of the package.
            submodules = [n for n in names if _is_module(f"{target}.{n}")]
            for sub in submodules:
                yield f"{target}.{sub}", [], node.lineno
            rest = [n for n in names if n not in submodules]
            if rest:
                yield target, rest, node.lineno


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
EDGES = {m: list(imports_of(p)) for m, p in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_import_climbs_a_layer() -> None:
    upward = [
        f"{m} (L{layer_of(m)}) imports {target} (L{layer_of(target)}) at line {line}"
        for m, edges in EDGES.items() for target, _, line in edges
        if layer_of(target) > layer_of(m)
    ]
    assert upward == []


def test_lineage_reads_top_to_bottom() -> None:
    wrong = []
    for m, edges in EDGES.items():
        for target, _, line in edges:
            if m in LINEAGE_RANKS and target in LINEAGE_RANKS and target != m \
                    and LINEAGE_RANKS[target] >= LINEAGE_RANKS[m] and m != "provstore.lineage":
                wrong.append(f"{m} imports {target} (line {line})")
            if m.startswith("provstore.lineage") and target.startswith(NOT_FROM_LINEAGE):
                wrong.append(f"{m} imports the service {target} (line {line})")
        if m == "provstore.lineage.model":
            wrong += [f"model imports {t} (line {n})" for t, _, n in edges]
    assert wrong == []


def test_backends_and_database_know_nothing_of_each_other() -> None:
    wrong = [f"{m} imports {t} (line {line})"
             for m, edges in EDGES.items() for t, _, line in edges
             for side, other in SEPARATE.items()
             if m.startswith(side) and t.startswith(other)]
    assert wrong == []


def test_no_import_cycle() -> None:
    graph = {m: {t for t, _, _ in edges if t in MODULES and t != m} for m, edges in EDGES.items()}
    # A package's __init__ re-exports its modules: an edge into the package is
    # an edge into the re-exported module, not a cycle with its siblings.
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def test_no_private_name_crosses_a_module() -> None:
    crossing = [f"{m} imports {name} from {t} (line {line})"
                for m, edges in EDGES.items() for t, names, line in edges
                for name in names if name.startswith("_") and not name.startswith("__")]
    assert crossing == []


def test_sql_runs_only_where_the_database_is_owned() -> None:
    outside = [f"{m} imports {t} (line {line})"
               for m, edges in EDGES.items() for t, _, line in edges
               if t in SQL_STATEMENTS and not m.startswith(SQL_MODULES)]
    assert outside == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative enough for a package of a hundred modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("module", ["provstore.lineage.model"])
def test_the_lineage_model_stands_alone(module: str) -> None:
    assert module in MODULES, f"{module} is missing"
    assert EDGES[module] == []
