"""Records the store hands around: stored artifacts and artifacts being saved."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .backends.base import Backend

__all__ = ["ArtifactRow", "InputRecord", "Prepared", "json_text"]


@dataclass(frozen=True)
class ArtifactRow:
    """An artifact as recorded in the database (immutable, so cached freely)."""

    id: int
    digest: str
    format: str
    suffix: str
    size: int
    file_digest: str | None
    inline: bytes | None
    meta: dict[str, Any]
    summary: dict[str, Any]


@dataclass
class Prepared:
    """An artifact whose file (if any) is published but whose row is not committed."""

    digest: str
    backend: Backend
    suffix: str = ""
    size: int = 0
    file_digest: str | None = None
    inline: bytes | None = None
    meta: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    existing_id: int | None = None
    file_record: dict[str, Any] | None = None
    call_id: int | None = None

    def meta_text(self) -> str:
        """``meta`` as its JSON column holds it."""
        return json_text(self.meta)

    def summary_text(self) -> str:
        """``summary`` as its JSON column holds it."""
        return json_text(self.summary)


@dataclass(frozen=True)
class InputRecord:
    """One argument of a tracked call, as its call record keeps it.

    ``summary`` is a small JSON-able description (the value itself for short
    scalars, else type, dtype and shape). ``stored_file`` is False for an
    argument that cannot be the value of a stored object file (a short int or
    string, always stored inline), so the commit need not look one up.
    """

    name: str
    digest: str
    artifact_id: int | None
    file_path: str | None
    summary: Any
    stored_file: bool = True


_TEXTS: dict[tuple[tuple[str, str], ...], str] = {}


def json_text(value: dict[str, Any] | None) -> str:
    """The JSON text of an artifact's ``meta`` or ``summary`` (``{}`` for None).

    Dicts of strings only (``{"type": "int"}``, the summary of most inline
    values) are encoded once per process: every miss of a tiny call stores one.
    """
    if not value:
        return "{}"
    if not all(type(v) is str for v in value.values()):
        return json.dumps(value)
    key = tuple(value.items())
    text = _TEXTS.get(key)
    if text is None:
        if len(_TEXTS) >= 1024:
            _TEXTS.clear()
        text = _TEXTS[key] = json.dumps(value)
    return text
