"""Anything picklable, as a last resort; never loaded when ``safe=True``."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ..errors import BackendError, CorruptObjectError, UnsupportedTypeError
from .base import Backend

__all__ = ["PickleBackend"]

PROTOCOL = 5


class PickleBackend(Backend):
    """Python objects pickled with protocol 5 to a ``.pkl`` file.

    The fallback for values no standard format holds. ``unsafe = True``:
    unpickling can run arbitrary code, so a store opened with ``safe=True``
    refuses to load these files. Files are not portable across code changes
    (a renamed class cannot be unpickled), which is why every other backend
    comes first in automatic choice.
    """

    name = "pickle"
    suffixes = (".pkl", ".pickle")
    unsafe = True

    def can_save(self, obj: Any) -> bool:
        """Return ``True``: whether *obj* pickles is only known by pickling it.

        Pickling twice would double the cost of every save, so :meth:`save`
        raises :class:`~provstore.errors.UnsupportedTypeError` instead.
        """
        return True

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Pickle *obj* to *path*; return ``{"protocol": 5, "type": qualified name}``.

        Raises
        ------
        UnsupportedTypeError
            If *obj* cannot be pickled (lambdas, open files, locks...); the
            partial file is removed.
        """
        if options:
            raise UnsupportedTypeError(
                f"the pickle backend takes no options, got {sorted(options)}"
            )
        try:
            with open(path, "xb") as f:
                pickle.dump(obj, f, protocol=PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError) as exc:
            # AttributeError: "Can't pickle local object" (functions defined in functions);
            # TypeError: "cannot pickle '_thread.lock' object".
            Path(path).unlink(missing_ok=True)
            raise UnsupportedTypeError(
                f"cannot pickle a {type(obj).__qualname__}: {exc}; convert it to arrays/dicts "
                "or give it __getstate__/__reduce__"
            ) from exc
        return {"protocol": PROTOCOL, "type": _qualname(obj)}

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             **options: Any) -> Any:
        """Unpickle *path* (``mmap_mode`` is ignored).

        Raises
        ------
        CorruptObjectError
            If the file is missing, truncated or not a pickle.
        BackendError
            If the pickle names a module or class this environment lacks.
        """
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except FileNotFoundError as exc:
            raise CorruptObjectError(f"{path} is missing") from exc
        except (ImportError, AttributeError) as exc:
            raise BackendError(
                f"{path} refers to code this environment cannot import ({exc}); install the "
                "package or restore the class that made it"
            ) from exc
        except Exception as exc:
            # Garbage can fail in the unpickler in any number of ways (bad opcodes,
            # truncated frames, absurd lengths, wrong types on its stack).
            raise CorruptObjectError(f"{path} is not a readable pickle: {exc!r}") from exc

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return ``{"type": qualified name}``."""
        return {"type": _qualname(obj)}


def _qualname(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"
