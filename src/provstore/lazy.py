"""Modules imported on first use, for what a process may never need.

SQLAlchemy costs a process ~0.2 s to import and tear down; a script that
opens an SQLite store and gets cached results never needs it
(:mod:`provstore.db.lite`). Modules of the store's write path refer to the
database modules through :class:`LazyModule` and import them, under
``TYPE_CHECKING``, for the type checker and the layer test.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LazyModule"]


class LazyModule:
    """Stands for the module *name*, imported on the first attribute read.

    Each attribute is looked up once and then kept, so later reads cost what
    an attribute of any object costs; only a module's functions, classes and
    constants are read through it, never globals it reassigns. The import
    itself runs under the interpreter's import lock, so threads racing to the
    first read are safe.
    """

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str) -> Any:
        name: str = object.__getattribute__(self, "_name")
        value = getattr(importlib.import_module(name), attr)
        object.__setattr__(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {object.__getattribute__(self, '_name')!r}>"
