"""What a tracked call's key holds for values :func:`hashing.digest` cannot see into.

:mod:`provstore.hashing` digests data. A call's arguments also include things
whose meaning is code plus state, and two calls must never share a key when
that state differs (DESIGN §4.8):

- **callables** (functions, lambdas, ``functools.partial``, bound methods,
  tracked functions) are keyed by their identity, their code version and
  what they close over: a partial's bound arguments, a method's instance,
  closure cells, default values;
- **classes** by identity and code version;
- **estimators** (objects with ``get_params``, the scikit-learn protocol) by
  class identity and code version, ``get_params(deep=True)`` and, once
  fitted, their public fitted attributes (names ending in ``_``), never
  through pickle;
- **instances bound to a method** (``self``) by class identity, code version
  and their attributes (:func:`instance_digest`).

Each rule's digest is the canonical digest of a tagged stand-in object
(:class:`Keyed`), so it can never equal the digest of a plain value.

A tracked partial or bound method is seen through :class:`Unbound` as the
function it wraps with arguments bound in advance, so what it binds is keyed,
recorded and linked like any argument. :func:`refuse_untrackable` refuses,
when decorating, what no call could ever store (generators).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import hashing
from .codesource import MAX_ITEMS, is_simple
from .codeversion import FINGERPRINTS, function_identity
from .errors import UnsupportedTypeError
from .files import File

__all__ = [
    "Keyed", "Unbound", "closure_values", "instance_digest",
    "refuse_untrackable", "value_digest",
]

_MAX_DEPTH = 8  # nested callables, estimators and containers followed
_MAX_SCAN = 1000  # container items looked at for callables or estimators inside
_PLAIN = {type(None), bool, int, float, complex, str, bytes}
_BUILTIN_BASES = (dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, complex)
_local = threading.local()


class Keyed:
    """A stand-in hashed in place of a callable, class, estimator or instance.

    ``hashing`` feeds ``__provstore_hash__()`` under this class's tag, so a
    rule's digest is type-tagged like any other value's.
    """

    __slots__ = ("kind", "parts")

    def __init__(self, kind: str, parts: Any) -> None:
        self.kind = kind
        self.parts = parts

    def __provstore_hash__(self) -> Any:
        """Return the rule's name and its canonical parts."""
        return ("provstore-callkeys/1", self.kind, self.parts)


@contextmanager
def _visiting(obj: Any) -> Iterator[bool]:
    """Yield whether *obj* is already being digested higher up this thread's stack."""
    active: set[int] = getattr(_local, "active", None) or set()
    _local.active = active
    if id(obj) in active:
        yield True
        return
    active.add(id(obj))
    try:
        yield False
    finally:
        active.discard(id(obj))


def value_digest(value: Any, depth: int = 0) -> str:
    """Return the key digest of an argument value.

    :func:`hashing.digest`, except for callables, classes and estimators
    (also inside small lists, tuples and dicts), which follow the rules of
    this module.
    """
    if _plain(type(value)) or depth > _MAX_DEPTH:
        return hashing.digest(value)
    keyed = _keyed(value, depth)
    if keyed is not None:
        return hashing.digest(keyed)
    if type(value) in (list, tuple) and _holds_rules(value, depth):
        return hashing.digest(type(value)(_stand_in(v, depth) for v in value))
    if type(value) is dict and _holds_rules(value.values(), depth):
        return hashing.digest({k: _stand_in(v, depth) for k, v in value.items()})
    return hashing.digest(value)


def _plain(kind: type) -> bool:
    """Whether values of *kind* are hashed by content alone (no rules inside)."""
    if kind in _PLAIN:
        return True
    numpy = sys.modules.get("numpy")  # imported late: no array exists before it is
    if numpy is not None and kind.__module__ == "numpy":
        _PLAIN.update({numpy.ndarray, numpy.memmap})
        return kind in _PLAIN
    return False


def _stand_in(value: Any, depth: int) -> Any:
    return Keyed("value", value_digest(value, depth + 1))


def _holds_rules(items: Any, depth: int) -> bool:
    if len(items) > _MAX_SCAN:
        return False
    for v in items:
        if _plain(type(v)):
            continue
        if _has_rule(v) or (type(v) in (list, tuple) and _holds_rules(v, depth + 1)) or (
                type(v) is dict and _holds_rules(v.values(), depth + 1)):
            return True
    return False


def _has_rule(value: Any) -> bool:
    if getattr(type(value), "__provstore_hash__", None) is not None:
        return False
    return (isinstance(value, type) or _is_callable_kind(value) or _is_estimator(value))


def _keyed(value: Any, depth: int) -> Keyed | None:
    if getattr(type(value), "__provstore_hash__", None) is not None:
        return None  # the class says how it is hashed
    if isinstance(value, type):
        return Keyed("class", (function_identity(value), _code(value)))
    if _is_estimator(value):
        return _estimator(value, depth)
    if _is_callable_kind(value):
        return _callable(value, depth)
    return None


def _code(obj: Any) -> str:
    return FINGERPRINTS.current(obj).digest


def _is_estimator(value: Any) -> bool:
    get_params = getattr(type(value), "get_params", None)
    return callable(get_params) and not isinstance(value, type)


def _is_callable_kind(value: Any) -> bool:
    if isinstance(value, (types.FunctionType, types.MethodType, types.BuiltinFunctionType,
                          functools.partial)):
        return True
    # Tracked functions and other wrappers that say what they wrap.
    return callable(value) and _wrapped(value) is not None


def _wrapped(value: Any) -> Any:
    if type(value).__module__ == "builtins" and not isinstance(value, types.FunctionType):
        return None
    try:
        return vars(value).get("__wrapped__") if hasattr(value, "__dict__") else None
    except TypeError:
        return None


def _estimator(est: Any, depth: int) -> Keyed:
    with _visiting(est) as again:
        if again:
            return Keyed("cycle", function_identity(type(est)))
        try:
            params = est.get_params(deep=True)
        except TypeError:  # a get_params() of its own, without scikit-learn's deep=
            params = est.get_params()
        if not isinstance(params, dict):
            raise UnsupportedTypeError(
                f"{type(est).__qualname__}.get_params() returned a "
                f"{type(params).__qualname__}, not a dict of parameters; define "
                "__provstore_hash__() on the class to say how it is keyed")
        fitted = {k: v for k, v in getattr(est, "__dict__", {}).items()
                  if k.endswith("_") and not k.startswith("_")}
        return Keyed("estimator", (
            function_identity(type(est)), _code(type(est)),
            {str(k): value_digest(v, depth + 1) for k, v in params.items()},
            {k: value_digest(v, depth + 1) for k, v in fitted.items()},
        ))


def _callable(func: Any, depth: int) -> Keyed:
    with _visiting(func) as again:
        if again:
            return Keyed("cycle", function_identity(func))
        return Keyed("callable", (function_identity(func), _code(func),
                                  _callable_state(func, depth)))


def _callable_state(func: Any, depth: int) -> list[tuple[str, str]]:
    """What a callable closes over, as ``(where, digest)`` pairs."""
    state: list[tuple[str, str]] = []
    for level in range(_MAX_DEPTH):
        if isinstance(func, functools.partial):
            state += [(f"{level}.args", value_digest(func.args, depth + 1)),
                      (f"{level}.keywords", value_digest(func.keywords, depth + 1))]
            func = func.func
        elif isinstance(func, types.MethodType):
            state.append((f"{level}.self", instance_digest(func.__self__, depth + 1)))
            func = func.__func__
        elif (inner := _wrapped(func)) is not None:
            func = inner
        else:
            break
    if isinstance(func, types.FunctionType):
        state += [(f"closure.{name}", value_digest(v, depth + 1))
                  for name, v in closure_values(func).items()]
        state.append(("defaults", value_digest((func.__defaults__ or (),
                                                func.__kwdefaults__ or {}), depth + 1)))
    return state


def _is_provstore(value: Any) -> bool:
    module = type(value).__module__
    return module == "provstore" or module.startswith("provstore.")


def closure_values(func: types.FunctionType) -> dict[str, Any]:
    """The data a function's closure cells hold that its code version does not fully key.

    Small constants (numbers, strings, small containers of those) are in the
    code version already, with its rules: a log list the function appends
    to keeps the value it had when first seen. Keyed on every call:
    functions, partials and methods (by the callable rule: the code version
    sees only the class of what they close over), and values with a
    canonical content (arrays, frames, tuples, dataclasses, estimators,
    paths and files, ``__provstore_hash__``). Classes and modules are code;
    other objects (a counter, a lock, a client, an open ``Context``) and
    larger lists, dicts and sets (logs, caches) count, like module-level
    ones, only by their class in the code version.
    """
    values = {}
    for name, cell in zip(func.__code__.co_freevars, func.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # not bound yet
            continue
        if _closed_over_data(value):
            values[name] = value
    return values


def _closed_over_data(value: Any) -> bool:
    if isinstance(value, (type, types.ModuleType)) or is_simple(value, [MAX_ITEMS]):
        return False
    if type(value) in (list, dict, set):
        # A mutable container a nested function closes over is mostly a log,
        # a cache or a registry it fills: like a module-level one, it counts
        # only when it is a small constant (above), with the value first seen.
        return False
    if _is_callable_kind(value) or isinstance(value, File):
        return True
    if _is_provstore(value):
        return False
    return (getattr(type(value), "__provstore_hash__", None) is not None
            or _is_estimator(value) or _hashing_knows(value))


def instance_digest(obj: Any, depth: int = 0) -> str:
    """Return the key digest of an instance a method is bound to (``self``).

    Values with a hashing rule (``__provstore_hash__``, dataclasses, arrays,
    estimators...) are digested as such. Other objects are keyed by their
    class (identity and code version), their content if they subclass a
    builtin container or scalar, and their attributes (functions kept as
    attributes by the callable rule), leaving out provstore objects (an open
    ``Context``) and the tracked wrappers of the object's own methods
    (``self.f = ctx.track(self.f)``), which are code.

    Raises
    ------
    UnsupportedTypeError
        An attribute has no canonical value and cannot be pickled.
    """
    if (isinstance(obj, type) or getattr(type(obj), "__provstore_hash__", None) is not None
            or _is_estimator(obj) or not hasattr(obj, "__dict__") or _hashing_knows(obj)):
        return value_digest(obj, depth)
    cls = type(obj)
    with _visiting(obj) as again:
        if again:
            return hashing.digest(Keyed("cycle", function_identity(cls)))
        state = {}
        if isinstance(obj, _BUILTIN_BASES):  # a dict or list subclass: its content counts
            state["<content>"] = hashing.digest(obj)
        for name, value in sorted(vars(obj).items()):
            # A function kept on the instance is a choice of behaviour: keyed by
            # the callable rule, unless it is one of the object's own methods.
            if _bound_to(value, obj) or (_is_provstore(value) and not _is_callable_kind(value)):
                continue
            try:
                state[name] = value_digest(value, depth + 1)
            except UnsupportedTypeError as exc:
                raise UnsupportedTypeError(
                    f"cannot key a call on a {cls.__qualname__} instance: its attribute "
                    f"{name!r} ({type(value).__qualname__}) has no canonical value ({exc}); "
                    f"define __provstore_hash__() on {cls.__qualname__} to return what results "
                    "depend on, or leave the instance out of the key with ignore=['self']"
                ) from exc
        return hashing.digest(Keyed("instance", (function_identity(cls), _code(cls), state)))


def _hashing_knows(obj: Any) -> bool:
    """Whether :mod:`hashing` has a canonical encoding for *obj*'s kind."""
    module = type(obj).__module__.partition(".")[0]
    return (module in ("builtins", "numpy", "pandas", "nibabel", "pathlib")
            or dataclasses.is_dataclass(obj) or isinstance(obj, os.PathLike))


def _bound_to(value: Any, obj: Any) -> bool:
    """Whether *value* is (a wrapper of) one of *obj*'s own bound methods."""
    for _ in range(_MAX_DEPTH):
        if isinstance(value, types.MethodType):
            return value.__self__ is obj
        if isinstance(value, functools.partial):
            value = value.func
        elif (inner := _wrapped(value)) is not None:
            value = inner
        else:
            return False
    return False


class Unbound:
    """A callable seen as the function it wraps plus the arguments bound in advance.

    ``partial(f, 1)(5)`` is keyed as ``f(1, 5)`` and ``obj.method(5)`` as
    ``method(obj, 5)``: what a partial or a bound method closes over is then
    in the key like any argument, recorded and linked like one.
    """

    __slots__ = ("base", "captures", "keywords", "owner", "plain", "prefix", "signature")

    def __init__(self, base: Any, prefix: tuple[Any, ...], keywords: dict[str, Any],
                 self_index: int | None, signature: inspect.Signature) -> None:
        self.base, self.prefix, self.keywords = base, prefix, keywords
        self.signature = signature
        self.plain = not prefix and not keywords
        names = [p.name for p in signature.parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if self_index is None and _defined_in_class(base) and names:
            self_index = 0  # a method decorated in its class body: self comes first
        # The parameter the instance (or class) a method is bound to is passed as.
        self.owner = names[self_index] if self_index is not None and names else None
        # Whether captured() can find anything: most functions close over nothing.
        self.captures = (bool(base.__code__.co_freevars) if isinstance(base, types.FunctionType)
                         else isinstance(base, types.BuiltinMethodType))

    @classmethod
    def of(cls, func: Any) -> Unbound:
        # inspect.signature(func) succeeded already: the signature of what a
        # partial or method wraps exists and accepts what they bind.
        base, prefix, keywords, self_index = _peel(func, 0)
        return cls(base, prefix, keywords, self_index, inspect.signature(base))

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind a call to the wrapped function's parameters, defaults applied."""
        bound = self.signature.bind(*self.prefix, *args, **{**self.keywords, **kwargs})
        bound.apply_defaults()
        return bound.arguments

    @property
    def freevars(self) -> tuple[str, ...]:
        """The names of the wrapped function's closure variables."""
        return self.base.__code__.co_freevars if isinstance(self.base, types.FunctionType) else ()

    def captured(self) -> dict[str, Any]:
        """What the wrapped function holds besides its arguments, named as inputs.

        A function's closure cells (``<closure>.name``, see
        :func:`closure_values`); a builtin method's object (``<self>``:
        ``rng.integers``, ``[1, 2].count``), which a signature does not show.
        """
        base = self.base
        if isinstance(base, types.FunctionType):
            return {f"<closure>.{k}": v for k, v in closure_values(base).items()}
        owner = getattr(base, "__self__", None)
        if (isinstance(base, types.BuiltinMethodType) and owner is not None
                and not isinstance(owner, types.ModuleType)):
            return {"<self>": owner}
        return {}


def _peel(func: Any, depth: int) -> tuple[Any, tuple[Any, ...], dict[str, Any], int | None]:
    """Return (function, bound positional arguments, bound keywords, index of self)."""
    if depth < 16 and isinstance(func, functools.partial):
        base, prefix, keywords, self_index = _peel(func.func, depth + 1)
        return base, prefix + func.args, {**keywords, **func.keywords}, self_index
    if depth < 16 and isinstance(func, types.MethodType):
        base, prefix, keywords, _ = _peel(func.__func__, depth + 1)
        return base, (*prefix, func.__self__), keywords, len(prefix)
    return func, (), {}, None


def _defined_in_class(func: Any) -> bool:
    parts = getattr(func, "__qualname__", "").split(".")
    return isinstance(func, types.FunctionType) and len(parts) > 1 and parts[-2] != "<locals>"


def refuse_untrackable(func: Any) -> None:
    """Refuse, when decorating, what a tracked call could never store or run."""
    if isinstance(func, (staticmethod, classmethod)):
        kind = type(func).__name__
        raise UnsupportedTypeError(
            f"@track cannot wrap a {kind} object: put @{kind} above @track, so that @track "
            "applies first, to the plain function below it")
    target = inspect.unwrap(func) if callable(func) else func
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        raise UnsupportedTypeError(
            f"cannot track {getattr(func, '__qualname__', func)!s}: it is a generator, whose "
            "values are produced lazily and cannot be stored; return a list (or a tuple, "
            "or an array) of the values instead")
