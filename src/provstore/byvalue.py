"""Pickling functions that a worker process cannot import, by value.

A worker imports a pickled function by its module and qualname. That fails
for a script's functions (``__main__`` is another module in a worker), a
notebook's, nested functions and lambdas: those are pickled by value with
cloudpickle, which sends their code, defaults, closures and the globals they
use. Tracked functions use this in their ``__reduce__`` (see
:mod:`provstore.tracking`).
"""

from __future__ import annotations

import functools
import io
import linecache
import os
import pickle
import sys
import threading
import types
from typing import Any

__all__ = ["dumps", "importable", "in_progress"]

_NO_FILE = "<dynamic-code>"


class _Flag(threading.local):
    active = False


_flag = _Flag()


def importable(func: Any) -> bool:
    """Whether a worker can import *func* by its module and qualname.

    Parameters
    ----------
    func : callable
        A function, or a wrapper that names it in ``__wrapped__``.

    Returns
    -------
    bool
        False for a script's or a notebook's functions (``__main__``), nested
        functions, lambdas, and names that no longer lead to *func*.
    """
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or module in ("__main__", "__mp_main__"):
        return False
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj is func or getattr(obj, "__wrapped__", None) is func


def in_progress() -> bool:
    """Whether this thread is inside :func:`dumps` (nested objects then pickle as parts)."""
    return _flag.active


def dumps(obj: Any) -> bytes:
    """Pickle *obj* with cloudpickle, keeping the file name and source of its code.

    Parameters
    ----------
    obj : object
        What to pickle; functions it reaches that are not importable go by value.

    Returns
    -------
    bytes
        A pickle that ``pickle.loads`` reads wherever cloudpickle is installed.
    """
    buffer = io.BytesIO()
    _flag.active = True
    try:
        _pickler()(buffer, protocol=pickle.DEFAULT_PROTOCOL).dump(obj)
    finally:
        _flag.active = False
    return buffer.getvalue()


@functools.cache
def _pickler() -> type[pickle.Pickler]:
    """cloudpickle's pickler, keeping where the code it sends came from.

    cloudpickle renames every code object ``<dynamic-code>``; a worker then
    finds no source to fingerprint, and the code version (so the call key)
    would differ from the sender's. The file name is sent alongside and put
    back, with the source lines when they are in no file (a notebook cell).
    """
    # Imported here: cloudpickle costs ~20 ms to import, and only functions a
    # worker cannot import by name need it.
    import cloudpickle

    # cloudpickle ships no type information, so its Pickler is Any to mypy.
    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is types.CodeType and obj.co_filename != _NO_FILE:
                name = obj.co_filename
                entry = linecache.cache.get(name, ())
                lines = entry[2] if len(entry) == 4 and not os.path.exists(name) else None
                return (_code_in_file, (obj.replace(co_filename=_NO_FILE), name, lines))
            return super().reducer_override(obj)

    return Pickler


def _code_in_file(code: types.CodeType, filename: str,
                  lines: list[str] | None = None) -> types.CodeType:
    if lines is not None and filename not in linecache.cache:
        # Registered as IPython registers cells (no mtime: never checked against a file).
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return code.replace(co_filename=filename)
