"""Files of unknown type, stored byte for byte."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import BackendError, CorruptObjectError, UnsupportedTypeError
from .base import Backend

__all__ = ["RawBackend"]

# What the object directory accepts as a suffix: lower-case, short, no separators.
_PART = re.compile(r"\.[a-z0-9]{1,8}")


class RawBackend(Backend):
    """A file kept exactly as it was: the fallback for ingesting unknown formats.

    Saves a path-like value (``pathlib.Path``, :class:`provstore.File`, or
    anything with a path-like ``.path``) by copying the file's bytes; loading
    returns the :class:`~pathlib.Path` of the stored, read-only copy. Never
    chosen automatically: an arbitrary path is usually meant as a string.
    """

    name = "raw"
    auto = False

    def can_save(self, obj: Any) -> bool:
        """Return whether *obj* names a file (path-like, or with a path-like ``.path``)."""
        return _source(obj) is not None

    def suffix_for(self, obj: Any, options: dict[str, Any]) -> str:
        """Return the source file's suffix (``".csv"``, ``".tar.gz"``) when it is plain.

        Only lower-case ASCII letters and digits, at most 8 per part and 3
        parts, as the object directory requires; anything else gives ``""``.
        """
        source = _source(obj)
        if source is None:
            return ""
        parts = [s.lower() for s in source.suffixes[-3:]]
        while parts and not all(_PART.fullmatch(p) for p in parts):
            parts.pop(0)
        return "".join(parts)

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Copy the file *obj* names to *path*; return ``{"name": original file name}``.

        Raises
        ------
        UnsupportedTypeError
            If *obj* names no regular file, or options are given.
        BackendError
            If the copy fails.
        """
        if options:
            raise UnsupportedTypeError(f"the raw backend takes no options, got {sorted(options)}")
        source = _source(obj)
        if source is None or not source.is_file():
            raise UnsupportedTypeError(
                f"the raw backend copies regular files; {obj!r} does not name one"
            )
        try:
            shutil.copyfile(source, path)
        except OSError as exc:
            raise BackendError(f"cannot copy {source} to the store: {exc}") from exc
        return {"name": source.name}

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             **options: Any) -> Any:
        """Return ``Path(path)``, the stored copy (after checking that it exists)."""
        stored = Path(path)
        if not stored.is_file():
            raise CorruptObjectError(f"{stored} is missing")
        return stored

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return ``{"type": "file", "name", "size"}`` (size ``None`` when unreadable)."""
        source = _source(obj)
        if source is None:
            return super().describe(obj)
        try:
            size: int | None = source.stat().st_size
        except OSError:
            size = None
        return {"type": "file", "name": source.name, "size": size}


def _source(obj: Any) -> Path | None:
    if isinstance(obj, os.PathLike):
        return Path(obj)
    inner = getattr(obj, "path", None)
    if isinstance(inner, (str, os.PathLike)):
        return Path(inner)
    return None
