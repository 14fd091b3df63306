"""What counts as user code, and how one function's source is normalized and hashed.

Split from :mod:`provstore.codeversion`, which walks a function's references
transitively and caches the result.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.metadata
import inspect
import linecache
import os
import struct
import sys
import sysconfig
import textwrap
import threading
import types
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .hashing import Hasher, digest, feed
from .lazy import LazyModule

if TYPE_CHECKING:
    import numpy as np
else:
    np = LazyModule("numpy")  # no numpy value exists before numpy is imported

MAX_DEPTH = 50
MAX_ITEMS = 1000  # elements a container constant may hold and still count as "simple"
MISSING: Any = object()
_SCALARS = (int, float, complex, str, bytes, bool, type(None))
_CONTAINERS = (tuple, frozenset, list, set, dict)
_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


# -- classification -----------------------------------------------------------------------


@functools.cache
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.add(os.path.dirname(os.path.abspath(__file__)))  # provstore itself
    roots.update(p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages"))
    return tuple(os.path.join(os.path.realpath(r), "") for r in roots if r)


@functools.lru_cache(maxsize=4096)
def file_is_user(filename: str) -> bool:
    if filename.startswith("<"):  # exec'd code, notebook cells; "<frozen ...>" is stdlib
        return not filename.startswith("<frozen")
    path = os.path.realpath(filename)
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not path.startswith(_library_roots())


def module_is_user(module: types.ModuleType) -> bool:
    filename = getattr(module, "__file__", None)
    if filename:
        return file_is_user(filename)
    origin = getattr(getattr(module, "__spec__", None), "origin", None)
    if origin in ("built-in", "frozen") or module.__name__ in sys.builtin_module_names:
        return False
    paths = list(getattr(module, "__path__", None) or [])
    return file_is_user(paths[0]) if paths else True


@functools.cache
def _packages() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


@functools.lru_cache(maxsize=1024)
def distribution_of(module_name: str) -> tuple[str, str] | None:
    top = module_name.partition(".")[0]
    if top in ("builtins", "__main__", ""):
        return None
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return "python", _PYTHON
    names = sorted(_packages().get(top, []))
    if names:
        try:
            return names[0], importlib.metadata.version(names[0])
        except importlib.metadata.PackageNotFoundError:
            pass
    return top, str(getattr(sys.modules.get(top), "__version__", "unknown"))


def class_is_user(cls: type) -> bool:
    module = sys.modules.get(cls.__module__)
    if module is None:  # defined by exec() under a made-up module name
        return cls.__module__ != "builtins"
    return module_is_user(module)


def is_simple(obj: Any, budget: list[int]) -> bool:
    budget[0] -= 1
    if budget[0] < 0:
        return False
    kind = type(obj)
    numpy_scalar = "numpy" in sys.modules and isinstance(obj, np.generic)
    if kind in _SCALARS or numpy_scalar:
        return not (numpy_scalar and obj.dtype.hasobject)
    if kind is dict:
        return all(is_simple(k, budget) and is_simple(v, budget) for k, v in obj.items())
    if kind in _CONTAINERS:
        return all(is_simple(x, budget) for x in obj)
    return False


def is_mutable(obj: Any) -> bool:
    kind = type(obj)
    if kind in (list, set, dict):
        return True
    return kind in (tuple, frozenset) and any(is_mutable(x) for x in obj)


# -- sources and digests ------------------------------------------------------------------


def normal_module(name: str | None) -> str:
    """A module name, with a script's spawn-worker alias folded into ``__main__``.

    ``multiprocessing`` (spawn) and Dask workers import the script as
    ``__mp_main__``: it is the same code as the parent's ``__main__``.
    """
    return "__main__" if not name or name == "__mp_main__" else name


def function_key(func: types.FunctionType) -> str:
    """``module:qualname`` of the code itself (a functools.wraps wrapper keeps its own)."""
    qualname = getattr(func.__code__, "co_qualname", func.__qualname__)
    return f"{normal_module(func.__module__)}:{qualname}"


def script_module(globs: dict[str, Any], filename: str) -> str:
    """The name a script's functions are listed under: what importing the script would give.

    ``python -m pkg.run`` gives ``pkg.run`` (from ``__spec__``), ``python run.py``
    gives ``run`` (the file's stem), so moving the script into an importable module
    keeps its functions' names; notebook cells and ``exec`` keep ``__main__``.
    """
    spec = globs.get("__spec__")
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name not in ("__main__", "__mp_main__"):
        return name
    path = globs.get("__file__") or filename
    if not isinstance(path, str) or path.startswith("<") or "ipykernel_" in path:
        return "__main__"
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem if stem.isidentifier() else "__main__"


def unwrapped(obj: Any) -> Any:
    try:
        return getattr(obj, "__wrapped__", MISSING)
    except Exception:  # proxies whose __getattr__ misbehaves
        return MISSING


def code_target(func: Any) -> Any:
    for _ in range(MAX_DEPTH):
        if isinstance(func, types.MethodType):
            func = func.__func__
        elif isinstance(func, functools.partial):
            func = func.func
        elif (inner := unwrapped(func)) is not MISSING:  # the tracked function's decorators
            func = inner
        else:
            break
    return func


def owner_of(func: types.FunctionType) -> tuple[str, Any] | None:
    """The global name and class a method is defined in, if reachable from its globals."""
    path = func.__qualname__.split(".")[:-1]
    if not path or "<locals>" in path:
        return None
    obj = func.__globals__.get(path[0])
    for part in path[1:]:
        obj = getattr(obj, part, None)
    return (path[0], obj) if isinstance(obj, type) else None


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]


def _source(obj: Any) -> str:
    """The source block of a code object (fast path) or a class.

    ``inspect.getsource`` maps a code object to its module by scanning every
    loaded module (~25 ms on a first call); reading the block straight from
    linecache, where notebook cells are registered too, gives the same text.
    """
    if isinstance(obj, types.CodeType):
        linecache.checkcache(obj.co_filename)  # the file may have been edited
        lines = linecache.getlines(obj.co_filename)
        if not lines:
            raise OSError(f"no source for {obj.co_filename}")
        return "".join(inspect.getblock(lines[obj.co_firstlineno - 1:]))
    return inspect.getsource(obj)


# CPython 3.11's ast.parse keeps its recursion counter in interpreter-wide
# state: two threads parsing at once can fail with "SystemError: AST
# constructor recursion depth mismatch" (python/cpython#106905), seen here
# when a thread pool fingerprints tracked functions.
_PARSE_LOCK = threading.Lock()


def parse_source(obj: Any, kind: type | tuple[type, ...], name: str) -> ast.Module | None:
    """Parse the source of a code object or class, or None if it is unavailable."""
    try:
        text = textwrap.dedent(_source(obj))
        with _PARSE_LOCK:
            tree = ast.parse(text)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], kind):
        return None
    if getattr(tree.body[0], "name", None) != name:  # a stale file or a mismatched block
        return None
    _strip_docstrings(tree)
    return tree


def _feed_code(h: Hasher, code: types.CodeType) -> None:
    h.tagged(b"C", code.co_code)
    for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        h.tagged(b"n", "\0".join(names).encode())
    counts = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount)
    h.raw(b"a" + struct.pack("<3Q", *counts))
    h.raw(b"k" + struct.pack("<Q", len(code.co_consts)))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(h, const)
        elif is_simple(const, [MAX_ITEMS]):
            feed(h, const)
        else:
            h.tagged(b"r", repr(const).encode())


def code_digest(code: types.CodeType) -> str:
    """Deterministic digest of a code object (stable within one Python minor version)."""
    h = Hasher()
    h.tagged(b"V", _PYTHON.encode())
    _feed_code(h, code)
    return h.hexdigest()


def code_tree(code: types.CodeType) -> Iterable[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_tree(const)


def _fallback_source(func: types.FunctionType) -> str:
    try:
        return textwrap.dedent(_source(func.__code__)).strip()
    except (OSError, TypeError):
        return f"# source unavailable: {function_key(func)}"


def own_source(func: types.FunctionType, *, top: bool) -> tuple[str, str, ast.Module | None]:
    """(own digest, normalized source, parsed tree) of one function, not transitive.

    The tracked function itself (*top*) is digested without its decorators and
    without its own name, so renaming it keeps its results.
    """
    code = func.__code__
    tree = None
    if code.co_name != "<lambda>":
        tree = parse_source(code, (ast.FunctionDef, ast.AsyncFunctionDef), code.co_name)
    if tree is None:
        return code_digest(code), _fallback_source(func), None
    return (*normalized(tree, top=top), tree)


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def normalized(tree: ast.Module, *, top: bool = False) -> tuple[str, str]:
    """(own digest, normalized source) of a module holding one parsed definition.

    Used on live functions and, by ``stale``, on definitions read from files, so
    both give the same digest for the same code. Docstrings must already be gone.
    """
    node = tree.body[0]
    if isinstance(node, ast.ClassDef):
        source = ast.unparse(tree)
        return digest(("class", source)), source
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    if top:
        node.decorator_list = []
    source = ast.unparse(tree)
    if not top:
        return digest(("src", source)), source
    name, node.name = node.name, "_"
    try:
        return digest(("src", ast.unparse(tree))), source
    finally:
        node.name = name


def parse_text(text: str) -> ast.Module | None:
    """Parse a module's text (None if it is not valid Python)."""
    try:
        with _PARSE_LOCK:
            return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


def _module_level(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Statements run at import, in order, including those under ``if``/``try``/``with``."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If | ast.Try | ast.With):
            for block in ("body", "handlers", "orelse", "finalbody"):
                for inner in getattr(stmt, block, []):
                    if isinstance(inner, ast.ExceptHandler):
                        yield from _module_level(inner.body)
                    else:
                        yield from _module_level([inner])


def definition(tree: ast.Module, qualname: str) -> ast.Module | None:
    """The function or class *qualname* as defined in a parsed file, ready for :func:`normalized`.

    The last definition of a name wins, as when the file runs. Returns a module
    holding a copy of the definition with its docstrings stripped, or None.
    """
    body: Iterable[ast.stmt] = _module_level(tree.body)
    node: ast.stmt | None = None
    for part in qualname.split("."):
        found = [n for n in body if isinstance(n, _DEFS) and n.name == part]
        if not found:
            return None
        node = found[-1]
        body = node.body
    if node is None:
        return None
    module = ast.Module(body=[copy.deepcopy(node)], type_ignores=[])
    _strip_docstrings(module)
    return module


def constant(tree: ast.Module, name: str) -> Any:
    """The literal value a file binds to the module-level *name*, else MISSING.

    A name last bound by something other than a literal assignment (an
    expression, an import, a definition) gives MISSING too.
    """
    value: Any = MISSING
    for stmt in _module_level(tree.body):
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Assign):
            targets, expr = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, expr = [stmt.target], stmt.value
        elif isinstance(stmt, (*_DEFS, ast.Import, ast.ImportFrom)):
            names = [getattr(stmt, "name", None)] + [
                (a.asname or a.name).partition(".")[0] for a in getattr(stmt, "names", [])]
            if name in names:
                value = MISSING
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                value = ast.literal_eval(expr)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                value = MISSING
    return value


