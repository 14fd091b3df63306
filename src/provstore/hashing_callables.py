"""Canonical encoding of callables (part of :mod:`provstore.hashing`).

A callable is keyed with what decides what it computes: a function by its
qualified name, bytecode (with its constants and names, not line numbers),
defaults and closure contents; a bound method with its instance; a
``functools.partial`` with its bound arguments. Builtin functions, classes
and modules are keyed by name (a bound builtin method also by its object).
The globals a function reads are not part of its digest.

Values inside callables are fed back through the ``feed`` that
:mod:`provstore.hashing` passes in, so this module needs nothing from it at
run time.
"""

from __future__ import annotations

import functools
import struct
import types
from collections.abc import Callable
from typing import Any

from .hasher import Hasher

__all__ = ["feed_callable", "qualified_name"]

Feed = Callable[["Hasher", Any], None]


def qualified_name(obj: Any) -> str:
    """Return ``module.qualname`` of a class or function.

    A script's ``__main__`` is also ``__mp_main__`` in spawned workers: both
    are spelt ``__main__`` so a value hashes alike in the parent and a worker.
    """
    module = getattr(obj, "__module__", None) or ""
    module = "__main__" if module == "__mp_main__" else module
    return f"{module}.{getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}"


def feed_callable(h: Hasher, obj: Any, feed: Feed) -> bool:
    """Feed *obj* if it is a function, method, partial, class or module; return whether."""
    if isinstance(obj, types.FunctionType):
        _feed_function(h, obj, feed)
    elif isinstance(obj, types.MethodType):  # keyed with the instance it is bound to
        h.raw(b"M")
        feed(h, obj.__func__)
        feed(h, obj.__self__)
    elif isinstance(obj, functools.partial):
        h.tagged(b"C", qualified_name(type(obj)).encode())
        feed(h, (obj.func, obj.args, obj.keywords, dict(getattr(obj, "__dict__", {}))))
    elif isinstance(obj, types.BuiltinFunctionType):  # len, math.sqrt, [].append
        h.tagged(b"W", obj.__name__.encode())
        feed(h, obj.__self__)  # None, its module, or the object of a bound builtin method
    elif isinstance(obj, type):
        h.tagged(b"J", qualified_name(obj).encode())
    elif isinstance(obj, types.ModuleType):
        h.tagged(b"Y", obj.__name__.encode())
    else:
        return False
    return True


def _feed_function(h: Hasher, fn: types.FunctionType, feed: Feed) -> None:
    h.tagged(b"L", qualified_name(fn).encode())
    active = h.active()
    if id(fn) in active:  # a recursive closure: already being fed
        h.raw(b"^")
        return
    h.raw(b"=")
    active.add(id(fn))
    try:
        _feed_code(h, fn.__code__, feed)
        feed(h, fn.__defaults__)
        feed(h, fn.__kwdefaults__)
        for cell in fn.__closure__ or ():
            try:
                feed(h, cell.cell_contents)
            except ValueError:  # a cell not filled yet
                h.raw(b"e")
    finally:
        active.discard(id(fn))


def _feed_code(h: Hasher, code: types.CodeType, feed: Feed) -> None:
    # Bytecode with what it indexes (names, constants); not line numbers, so
    # moving a function in its file keeps its digest.
    h.tagged(b"x", code.co_code)
    h.tagged(b"n", "\0".join((*code.co_names, "|", *code.co_varnames)).encode())
    h.raw(struct.pack("<4Q", code.co_argcount, code.co_posonlyargcount,
                      code.co_kwonlyargcount, code.co_flags))
    h.raw(b"k" + struct.pack("<Q", len(code.co_consts)))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(h, const, feed)
        else:
            feed(h, const)
