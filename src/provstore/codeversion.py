"""Code versions: what a tracked function's result depends on, besides its inputs.

A :class:`CodeVersion` digests the function's normalized source (AST without docstrings
or top-level decorators, so comments, formatting and ``@track`` do not count) plus,
transitively, what it reads through globals and closures: user functions and classes (by
source), attributes of user modules, simple constants (scalars, strings, small containers
of those, numpy scalars; by value) and installed distributions or the standard library
(``"dist:<name>" -> version``, never by source). Anything else (large arrays, open files,
arbitrary objects) is ignored, except that instances of user classes pull in their class.
"""

from __future__ import annotations

import ast
import functools
import threading
import types
import weakref
from dataclasses import dataclass, field
from typing import Any

from .codesource import (
    MAX_DEPTH,
    MAX_ITEMS,
    MISSING,
    class_is_user,
    code_digest,
    code_target,
    code_tree,
    distribution_of,
    file_is_user,
    function_key,
    is_mutable,
    is_simple,
    module_is_user,
    normal_module,
    normalized,
    own_source,
    owner_of,
    parse_source,
    script_module,
    unwrapped,
)
from .hashing import digest

__all__ = [
    "FINGERPRINTS",
    "CodeVersion",
    "Fingerprinter",
    "code_version",
    "defined_at",
    "function_identity",
    "relative_deps",
]

MAX_CONSTANT_TEXT = 2000  # characters of a constant's repr stored for explain

_SELF: Any = object()  # stands for the cached function itself, so the cache holds it weakly


@dataclass(frozen=True)
class CodeVersion:
    """The code version of one function.

    Attributes
    ----------
    identity : str
        ``"module:qualname"`` where the function lives (:func:`defined_at`); scripts
        give ``"__main__:qualname"``, spawn workers' ``__mp_main__`` included.
    digest : str
        32 hex characters (xxh3-128) over the normalized source (without the
        function's own name), the pin and ``deps`` written relative to the
        function's module (:func:`relative_deps`), so the digest is the same
        wherever the code lives; with a pin, over the pin only.
    source : str
        Normalized source of the function itself (what history shows).
    pinned : str or None
        The ``version=`` pin, if any.
    deps : dict of str to str
        Every transitive dependency: ``"module:qualname"`` of user functions and classes
        to their own (non-transitive) digest, ``"module.NAME"`` constants to the digest
        of their value, ``"dist:<name>"`` to the distribution's version.
    parts : dict of str to str
        Own digest of each function, class and constant in ``deps`` to its normalized
        source (a constant: its ``repr``), stored so that ``explain`` can diff helpers.
    """

    identity: str
    digest: str
    source: str
    pinned: str | None
    deps: dict[str, str] = field(default_factory=dict, hash=False)
    parts: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


def defined_at(func: Any) -> str:
    """Return ``"module:qualname"`` where *func* lives now (recorded on each call).

    Parameters
    ----------
    func : callable
        A function (tracked wrappers, methods and partials are unwrapped first).

    Returns
    -------
    str
        Scripts give ``"__main__:qualname"``, in spawn and Dask workers too
        (their ``__mp_main__`` is the same script).
    """
    func = code_target(func)
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{normal_module(getattr(func, '__module__', None))}:{qualname}"


def function_identity(func: Any) -> str:
    """Return the name *func*'s calls are listed under: ``"module:qualname"``.

    Parameters
    ----------
    func : callable
        A function (tracked wrappers, methods and partials are unwrapped first).

    Returns
    -------
    str
        A script's functions take the module name the script would have if
        imported: ``run:score`` for ``python run.py`` (and in its spawn workers),
        ``pkg.run:score`` for ``python -m pkg.run``; so two scripts that both
        define ``score`` are told apart, and moving the code into ``run.py`` as a
        module keeps the name. Notebook cells and ``exec`` give ``__main__:qualname``.
        This is a display name: the call key does not contain it.
    """
    where = defined_at(func)
    module, _, qualname = where.partition(":")
    target = code_target(func)
    if module == "__main__" and isinstance(target, types.FunctionType):
        module = script_module(target.__globals__, target.__code__.co_filename)
    return f"{module}:{qualname}"


def relative_deps(deps: dict[str, str], identity: str) -> dict[str, str]:
    """*deps* written relative to the function *identity* (``module:qualname``).

    Names from the function's own module lose the module (``":helper"``,
    ``".SCALE"``, ``".sub:helper"`` for a submodule) and the function's own
    closure becomes ``"<self>.<closure>.x"``: what enters the digest, so a script
    function, the same in a spawn worker and the same moved into a module agree.
    """
    module = normal_module(identity.partition(":")[0])
    own = f"{module}:{identity.partition(':')[2]}."
    out = {}
    for key, value in deps.items():
        if key.startswith(own):
            key = "<self>." + key[len(own):]
        elif key.startswith((f"{module}:", f"{module}.")):
            key = key[len(module):]
        out[key] = value
    return out


def code_version(func: Any, *, version: str | None = None) -> CodeVersion:
    """Compute the code version of *func* from scratch (no caching).

    Parameters
    ----------
    func : callable
        The function; decorators (including provstore's own wrapper) are unwrapped.
    version : str, optional
        A manual pin: the digest then depends on this string only, while the source
        and dependencies are still recorded.

    Returns
    -------
    CodeVersion
    """
    return _compute(code_target(func), version)[0]


class Fingerprinter:
    """Per-process cache of code versions with a cheap validity check.

    Each entry remembers every name resolved during the transitive walk together with
    the object it was bound to; :meth:`current` re-checks those bindings (a few dict
    lookups) and recomputes when one changed: a notebook cell redefined a helper, a
    module was reloaded or a constant was rebound. A mutable constant mutated in
    place (``CONFIG["a"] = 2``, ``LOG.append(x)``) keeps the value it had when first
    fingerprinted, until the process ends or the name is rebound.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: weakref.WeakKeyDictionary[Any, dict[str | None, _Entry]] = (
            weakref.WeakKeyDictionary()
        )

    def current(self, func: Any, *, version: str | None = None) -> CodeVersion:
        """Return the code version of *func*, recomputing only when it may have changed.

        Parameters
        ----------
        func : callable
            The function (unwrapped as in :func:`code_version`).
        version : str, optional
            A manual pin, as in :func:`code_version`.

        Returns
        -------
        CodeVersion
            The cached object itself while every recorded binding is unchanged.
        """
        target = code_target(func)
        try:
            with self._lock:
                entry = self._cache.get(target, {}).get(version)
        except TypeError:  # not weak-referenceable: nothing to cache on
            return _compute(target, version)[0]
        if entry is not None and entry.valid(target):
            return entry.result
        result, entry = _compute(target, version)
        with self._lock:
            self._cache.setdefault(target, {})[version] = entry
        return result

    def clear(self) -> None:
        """Forget every cached code version."""
        with self._lock:
            self._cache.clear()


@dataclass(frozen=True)
class _Entry:
    result: CodeVersion
    code: Any  # the function's __code__ when cached
    checks: tuple[tuple[Any, str, Any], ...]  # (namespace mapping, name, bound object)
    attrs: tuple[tuple[Any, str, Any], ...]  # (function or cell, attribute, its value)
    values: tuple[tuple[Any, str], ...]  # (mutable constant, digest)

    def valid(self, target: Any) -> bool:
        if getattr(target, "__code__", None) is not self.code:
            return False
        try:
            for ns, name, obj in self.checks:
                got = ns.get(name, MISSING)
                if got is not obj and (obj is not _SELF or got is not target):
                    return False
            for owner, attr, obj in self.attrs:
                got = getattr(owner, attr, MISSING)
                if got is not obj and (obj is not _SELF or got is not target):
                    return False
        except ValueError:  # a closure cell was emptied
            return False
        # Mutable containers (lists, dicts, sets) count with the value they had
        # when first fingerprinted in this process, and are not re-read: a
        # function that appends to a module-level log list must not change its
        # own version on every call. An edited literal shows in the next run.
        return True


# -- the transitive walk ------------------------------------------------------------------


class _Walk:
    def __init__(self) -> None:
        self.deps: dict[str, str] = {}
        self.checks: dict[tuple[int, str], tuple[Any, str, Any]] = {}
        self.attrs: list[tuple[Any, str, Any]] = []
        self.values: list[tuple[Any, str]] = []
        self.seen: dict[int, object] = {}  # id -> the object, kept so no id is reused
        self.parts: dict[str, str] = {}
        # id(tree) -> (tree, names, globals). The tree is kept so that its id
        # cannot be reused by another definition's tree during the walk, which
        # would read that helper with the wrong names (and drop its constants).
        self.trees: dict[int, tuple[ast.AST, set[str], set[str]]] = {}

    def add(self, key: str, value: str) -> None:
        base, n = key, 1
        while self.deps.get(key, value) != value:  # same name, different object
            n += 1
            key = f"{base}#{n}"
        self.deps[key] = value

    def check(self, ns: Any, name: str, obj: Any) -> None:
        self.checks.setdefault((id(ns), name), (ns, name, obj))

    def function(
        self, func: types.FunctionType, depth: int, *, top: bool = False
    ) -> tuple[str, str]:
        self.seen[id(func)] = func
        self.attrs.append((func, "__code__", func.__code__))
        own, source, tree = own_source(func, top=top)
        if not top:
            self.add(function_key(func), own)
            self.parts[own] = source
        if depth < MAX_DEPTH:
            self.refs(func, tree, depth)
        return own, source

    def refs(self, func: types.FunctionType, tree: ast.AST | None, depth: int) -> None:
        attrs = {n for c in code_tree(func.__code__) for n in c.co_names}
        names, declared = set(attrs), set[str]()
        if tree is not None:  # attribute names (x.mean) are not global reads
            if id(tree) not in self.trees:
                nodes = list(ast.walk(tree))
                self.trees[id(tree)] = (
                    tree,
                    {n.id for n in nodes if isinstance(n, ast.Name)},
                    {n for g in nodes if isinstance(g, ast.Global) for n in g.names},
                )
            _, read, declared = self.trees[id(tree)]
            names &= read
        globs = func.__globals__
        module = normal_module(str(globs.get("__name__", "__main__")))
        for name in sorted(names):
            obj = globs.get(name, MISSING)
            self.check(globs, name, obj)
            if obj is not MISSING and name not in declared:  # `global X` state is not code
                self.value(obj, f"{module}.{name}", attrs, depth)
        for var, cell in zip(func.__code__.co_freevars, func.__closure__ or ()):
            try:
                obj = cell.cell_contents
            except ValueError:  # not bound yet
                continue
            self.attrs.append((cell, "cell_contents", obj))
            self.value(obj, f"{function_key(func)}.<closure>.{var}", attrs, depth)

    def value(self, obj: Any, key: str, attrs: set[str], depth: int) -> None:
        if depth > MAX_DEPTH or id(obj) in self.seen:
            return
        if isinstance(obj, types.FunctionType):
            if file_is_user(obj.__code__.co_filename):
                self.function(obj, depth + 1)
            elif (inner := unwrapped(obj)) is not MISSING:  # a library decorator on user code
                self.value(inner, key, attrs, depth + 1)
            else:
                self.library(getattr(obj, "__module__", None))
        elif isinstance(obj, type):
            if class_is_user(obj):
                self.klass(obj, depth + 1)
            else:
                self.library(obj.__module__)
        elif isinstance(obj, types.ModuleType):
            self.module(obj, attrs, depth)
        elif isinstance(obj, types.MethodType):
            self.value(obj.__func__, key, attrs, depth)
            self.value(obj.__self__, key + ".__self__", attrs, depth)
        elif isinstance(obj, functools.partial):
            self.value(obj.func, key, attrs, depth)
            self.value((obj.args, obj.keywords), key + ".<partial>", attrs, depth)
        elif is_simple(obj, [MAX_ITEMS]):
            d = digest(obj)
            self.add(key, d)
            self.parts.setdefault(d, repr(obj)[:MAX_CONSTANT_TEXT])
            if is_mutable(obj):
                self.values.append((obj, d))
        elif (inner := unwrapped(obj)) is not MISSING:  # tracked wrappers, lru_cache...
            self.value(inner, key, attrs, depth + 1)
        elif isinstance(obj, types.BuiltinFunctionType):  # math.sqrt, C extensions
            module = getattr(obj, "__module__", None)
            self.library(module if isinstance(module, str) else None)
        else:  # an instance (ufunc, array, user object): only its class counts
            self.value(type(obj), key, attrs, depth)

    def library(self, module: str | None) -> None:
        found = distribution_of(module) if module else None
        if found is not None:
            self.deps[f"dist:{found[0]}"] = found[1]

    def module(self, module: types.ModuleType, attrs: set[str], depth: int) -> None:
        if not module_is_user(module):
            self.library(module.__name__)
            return
        if depth >= MAX_DEPTH:
            return
        ns = vars(module)
        for name in sorted(attrs):
            obj = ns.get(name, MISSING)
            if (id(ns), name) in self.checks or obj is MISSING or name.startswith("__"):
                continue
            self.check(ns, name, obj)
            self.value(obj, f"{module.__name__}.{name}", attrs, depth + 1)

    def klass(self, cls: type, depth: int) -> None:
        self.seen[id(cls)] = cls
        tree = parse_source(cls, ast.ClassDef, cls.__name__)
        members: dict[str, list[types.FunctionType]] = {}
        for name, attr in sorted(vars(cls).items()):
            inner: list[Any]
            if isinstance(attr, staticmethod | classmethod):
                inner = [attr.__func__]
            elif isinstance(attr, property):
                inner = [attr.fget, attr.fset, attr.fdel]
            else:
                inner = [attr]
            fns = [fn for fn in inner if isinstance(fn, types.FunctionType)]
            if fns:
                members[name] = fns
        if tree is not None:
            own, source = normalized(tree)
            self.parts[own] = source
        else:
            codes = [(n, [code_digest(f.__code__) for f in fs]) for n, fs in members.items()]
            own = digest(("class-code", codes))
        self.add(f"{normal_module(cls.__module__)}:{cls.__qualname__}", own)
        if depth >= MAX_DEPTH:
            return
        for base in cls.__bases__:
            if base is not object:
                self.value(base, f"{cls.__module__}.{cls.__qualname__}", set(), depth)
        ns = cls.__dict__
        for name, fns in members.items():
            self.check(ns, name, ns[name])
            for fn in fns:
                if id(fn) in self.seen:
                    continue
                if fn.__qualname__.startswith(cls.__qualname__ + "."):  # defined in the class
                    self.seen[id(fn)] = fn
                    self.attrs.append((fn, "__code__", fn.__code__))
                    self.refs(fn, tree, depth + 1)
                else:  # a function assigned onto the class later
                    self.value(fn, f"{cls.__module__}.{cls.__qualname__}.{name}", set(), depth)


def _dists(deps: dict[str, str]) -> list[str]:
    return [f"{k[5:]}=={v}" for k, v in deps.items() if k.startswith("dist:")] or ["unknown"]


def _compute(func: Any, version: str | None) -> tuple[CodeVersion, _Entry]:
    identity = defined_at(func)
    walk = _Walk()
    library = isinstance(func, types.FunctionType) and not file_is_user(
        func.__code__.co_filename
    )
    if library:  # from an installed distribution: versioned as name==version
        walk.library(getattr(func, "__module__", None))
        own, source = "", f"# {identity} (installed: {', '.join(_dists(walk.deps))})"
    elif isinstance(func, types.FunctionType):
        own, source = walk.function(func, 0, top=True)
        owner = owner_of(func)
        if owner is not None:  # a method: self.other() calls reach the whole class
            walk.check(func.__globals__, owner[0], func.__globals__.get(owner[0]))
            walk.value(owner[1], identity, set(), 0)
    else:  # a library callable or a callable class: its dependencies only
        walk.value(func, identity, set(), 0)
        source, own = "", ""
        library = not own
    deps = dict(sorted(walk.deps.items()))
    if version is not None:
        value = digest(("pinned", str(version)))
    elif library:
        value = digest(("library", identity, sorted(deps.items())))
    else:
        # Installed packages a user function calls are listed in deps but not
        # hashed (DESIGN §5): upgrading numpy must not invalidate every result.
        # Their versions are recorded on each run.
        # Names are written relative to the function's module, so where the code
        # lives (script, spawn worker, module) does not count; what it is does.
        relative = relative_deps(deps, identity)
        own_deps = sorted((k, v) for k, v in relative.items() if not k.startswith("dist:"))
        value = digest(("code", own, own_deps))
    parts = {d: walk.parts[d] for d in deps.values() if d in walk.parts}
    result = CodeVersion(identity, value, source, None if version is None else str(version), deps,
                         parts)
    code = getattr(func, "__code__", None)
    checks = tuple((ns, n, _SELF if o is func else o) for ns, n, o in walk.checks.values())
    attrs = tuple((w, a, _SELF if o is func else o) for w, a, o in walk.attrs if w is not func)
    return result, _Entry(result, code, checks, attrs, tuple(walk.values))


# The process-wide code-version cache shared by tracked functions and `stale`.
FINGERPRINTS = Fingerprinter()
