"""provstore: a provenance-tracking context store for scientific Python."""

from __future__ import annotations

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
from .lineage import History, Version
from .tracking import TrackedFunction, track

__version__ = "0.1.0"

__all__ = [
    # the door and the objects it hands out
    "open",
    "track",
    "Context",
    "TrackedFunction",
    "File",
    "History",
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
