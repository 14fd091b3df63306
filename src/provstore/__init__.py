"""provstore: a provenance-tracking context store for scientific Python."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .api import open
from .context import Context
from .errors import (
    BackendError,
    CorruptObjectError,
    DatabaseDamagedError,
    InvalidNameError,
    LockTimeoutError,
    MissingAttributeError,
    MissingKeyError,
    NotCachedError,
    NotFoundError,
    ProvstoreError,
    ReservedNameError,
    StorageError,
    StorageFullError,
    StoreError,
    StoreNotFoundError,
    StoreVersionError,
    UnsafeLoadError,
    UnsupportedTypeError,
)
from .files import File
from .tracking import TrackedFunction, track

if TYPE_CHECKING:
    from .lineage import History, Version

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # History and Version (the lineage package, ~40 ms to import) load when
    # first asked for: a process that only opens a store and calls tracked
    # functions never needs them.
    if name in ("History", "Version"):
        from . import lineage

        return getattr(lineage, name)
    # provstore.Memory is a joblib.Memory: importing joblib costs ~120 ms, so
    # only code that asks for it pays.
    if name == "Memory":
        try:
            from .memory import Memory
        except ImportError as exc:
            raise ImportError('provstore.Memory needs joblib: pip install "provstore[joblib]"'
                              ) from exc
        return Memory
    raise AttributeError(f"module 'provstore' has no attribute {name!r}")


__all__ = [
    # the door and the objects it hands out
    "open",
    "track",
    "Context",
    "TrackedFunction",
    "File",
    "History",
    "Memory",
    "Version",
    # errors
    "BackendError",
    "CorruptObjectError",
    "DatabaseDamagedError",
    "InvalidNameError",
    "LockTimeoutError",
    "MissingAttributeError",
    "MissingKeyError",
    "NotCachedError",
    "NotFoundError",
    "ProvstoreError",
    "ReservedNameError",
    "StorageError",
    "StorageFullError",
    "StoreError",
    "StoreNotFoundError",
    "StoreVersionError",
    "UnsafeLoadError",
    "UnsupportedTypeError",
    "__version__",
]
