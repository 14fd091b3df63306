"""The exception tree of provstore.

Every error provstore raises on purpose derives from :class:`ProvstoreError`,
and also from the builtin exception a Python programmer would expect, so that
``except KeyError`` or ``except TimeoutError`` keep working::

    ProvstoreError
    ├── NotFoundError (LookupError)
    │   ├── MissingAttributeError (AttributeError)   ctx.name
    │   ├── MissingKeyError (KeyError)               ctx["name"]
    │   ├── StoreNotFoundError (FileNotFoundError)   open(..., create=False)
    │   └── NotCachedError                           a miss in a read-only store
    ├── InvalidNameError (ValueError)
    │   └── ReservedNameError                        ctx.history = ...
    ├── UnsupportedTypeError (TypeError)
    ├── UnsafeLoadError                               pickle with safe=True
    ├── CorruptObjectError (ValueError)               changed or truncated object
    ├── LockTimeoutError (TimeoutError)
    ├── StoreVersionError                             schema newer than this code
    ├── StoreError (OSError)                          not a store, unusable location
    │   ├── DatabaseDamagedError                      empty, damaged or unreadable database
    │   └── StorageError                              a filesystem fault (path, errno)
    │       └── StorageFullError                      ENOSPC / EDQUOT
    └── BackendError                                  a format library failed

Messages name the scope, the name and what to do next.
"""

from __future__ import annotations

__all__ = [
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
]


class ProvstoreError(Exception):
    """Root of every exception provstore raises on purpose."""


class NotFoundError(ProvstoreError, LookupError):
    """A name, version, scope or store does not exist."""


class MissingAttributeError(NotFoundError, AttributeError):
    """``ctx.name`` where *name* is bound in no visible scope."""


class MissingKeyError(NotFoundError, KeyError):
    """``ctx["name"]`` where *name* is bound in no visible scope."""

    def __str__(self) -> str:
        # KeyError.__str__ would show the repr of the message, quotes and all.
        return str(self.args[0]) if self.args else ""


class StoreNotFoundError(NotFoundError, FileNotFoundError):
    """``provstore.open(location, create=False)`` on a location without a store."""


class NotCachedError(NotFoundError):
    """A tracked call missed in a store opened with ``readonly=True``: nothing is computed."""


class InvalidNameError(ProvstoreError, ValueError):
    """A name or scope label that cannot be stored (``/``, ``..``, NUL, ...)."""


class ReservedNameError(InvalidNameError):
    """Attribute assignment to a name that is a Context method."""


class UnsupportedTypeError(ProvstoreError, TypeError):
    """No backend can store this value (or the forced backend cannot)."""


class UnsafeLoadError(ProvstoreError):
    """Loading would unpickle data while the store was opened with ``safe=True``."""


class CorruptObjectError(ProvstoreError, ValueError):
    """An object file is missing, truncated or does not match its recorded hash."""


class LockTimeoutError(ProvstoreError, TimeoutError):
    """The database stayed locked, or a lease stayed held, past the timeout."""


class StoreVersionError(ProvstoreError):
    """The store's schema is newer than this provstore understands."""


class StoreError(ProvstoreError, OSError):
    """The location is not a provstore store, or cannot be used as one."""


class DatabaseDamagedError(StoreError):
    """The store's database is empty, damaged or unreadable while objects exist.

    Never re-initialised over existing objects: restore the database from a copy,
    or follow the recovery steps the message names.
    """


class StorageError(StoreError):
    """A filesystem fault while reading or writing the store (the path and errno are named)."""


class StorageFullError(StorageError):
    """The filesystem holding the store is full (ENOSPC) or over quota (EDQUOT)."""


class BackendError(ProvstoreError):
    """A format library failed while saving or loading an artifact."""
