"""JSON-able values: small ones inline in the database, big ones as ``.json`` files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CorruptObjectError, UnsupportedTypeError
from .base import Backend

__all__ = ["MAX_INLINE_BYTES", "JsonBackend"]

MAX_INLINE_BYTES = 1 << 20
"""Largest compact encoding kept inline; bigger values are written to ``.json`` files."""
MAX_ITEMS = 1 << 26
"""Most items (scalars and containers) a value may hold to be stored as JSON."""

_SCALARS = (type(None), bool, int, float, str)
# json.loads recurses once per nesting level and stops at the interpreter's
# recursion limit; this backend never writes values that deep (see _dumps).
_TOO_DEEP = "nests lists/objects deeper than Python's recursion limit, which no stored value does"


class JsonBackend(Backend):
    """JSON-able values that round-trip exactly.

    Accepted: ``None``, ``bool``, ``int``, ``float`` (NaN and infinities
    included, written as ``NaN``/``Infinity``), ``str``, and ``list`` /
    ``dict`` (``str`` keys) nesting them. Types must match exactly, since a
    value must come back as it went in: tuples, subclasses (``OrderedDict``,
    ``IntEnum``), numpy scalars and non-``str`` keys are refused, and another
    backend takes them.

    Values whose compact encoding is at most :data:`MAX_INLINE_BYTES` live in
    the database (:meth:`encode` / :meth:`decode`); bigger ones are written to
    ``.json`` object files (:meth:`save` / :meth:`load`), which any JSON
    reader opens. ``.json`` files are ingested the same way.
    """

    name = "json"
    suffixes = (".json",)
    inline = True

    def can_save(self, obj: Any) -> bool:
        """Return whether *obj* round-trips through JSON exactly."""
        # The walk rejects huge values before paying for their encoding.
        return _is_exact_json(obj, MAX_ITEMS) and _dumps(obj) is not None

    def inline_for(self, obj: Any, options: dict[str, Any]) -> bool:
        """Return whether *obj*'s encoding is small enough to live in the database."""
        data = _dumps(obj)
        return data is not None and len(data) <= MAX_INLINE_BYTES

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Write the compact UTF-8 JSON of a big value to *path*."""
        data, meta = self.encode(obj, **options)
        Path(path).write_bytes(data)
        return meta

    def encode(self, obj: Any, **options: Any) -> tuple[bytes, dict[str, Any]]:
        """Return the compact UTF-8 JSON of *obj* and empty metadata.

        Raises
        ------
        UnsupportedTypeError
            If *obj* is not accepted by :meth:`can_save`, or an option is given.
        """
        if options:
            raise UnsupportedTypeError(f"the json backend takes no options, got {sorted(options)}")
        data = _dumps(obj)
        # Every item costs at least one encoded byte, so len(data) bounds the walk.
        if data is None or not _is_exact_json(obj, len(data)):
            raise UnsupportedTypeError(
                f"the json backend cannot store this {type(obj).__qualname__} exactly "
                "(JSON types only: None, bool, int, float, str, list, dict with str keys)"
            )
        return data, {}

    def decode(self, data: bytes, metadata: dict[str, Any]) -> Any:
        """Rebuild the value from :meth:`encode`'s bytes."""
        try:
            return json.loads(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
            raise CorruptObjectError(f"inline JSON value is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise CorruptObjectError(f"inline JSON value {_TOO_DEEP}") from exc

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             **options: Any) -> Any:
        """Parse a ``.json`` object file (``mmap_mode`` is ignored).

        Raises
        ------
        CorruptObjectError
            If the file is not UTF-8 JSON.
        """
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError as exc:
            raise CorruptObjectError(f"{path} is missing") from exc
        try:
            return json.loads(data)
        except ValueError as exc:
            raise CorruptObjectError(f"{path} is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise CorruptObjectError(f"{path} {_TOO_DEEP}") from exc

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return ``{"type": ...}`` plus ``len`` for strings and containers."""
        summary: dict[str, Any] = {"type": type(obj).__qualname__}
        if isinstance(obj, (str, list, dict)):
            summary["len"] = len(obj)
        return summary


def _dumps(obj: Any) -> bytes | None:
    """Compact UTF-8 JSON of *obj*, or None when it has none."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError, RecursionError):
        # TypeError: not JSON; ValueError: a cycle, an int beyond
        # sys.get_int_max_str_digits(), or (UnicodeEncodeError) a lone surrogate.
        return None


class _Leave:
    """Marks, on the walk's stack, the end of one container's items."""

    __slots__ = ("key",)

    def __init__(self, key: int) -> None:
        self.key = key


def _is_exact_json(obj: Any, max_bytes: int) -> bool:
    """Whether *obj* round-trips through JSON with identical types, in *max_bytes*.

    Iterative, so deep nesting cannot overflow the stack. Every item costs at
    least one encoded byte, so visiting more than *max_bytes* items proves the
    value too big without walking, say, a list of a hundred million floats.
    A container met again inside itself is a cycle, which JSON cannot hold.
    """
    budget = max_bytes
    stack: list[Any] = [obj]
    on_path: set[int] = set()  # containers being walked: meeting one again is a cycle
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is _Leave:
            on_path.discard(item.key)
            continue
        if kind is not list and kind is not dict:
            return False
        key = id(item)
        if key in on_path:
            return False
        budget -= len(item)
        if budget < 0:
            return False
        on_path.add(key)
        stack.append(_Leave(key))
        if kind is dict:
            if not all(type(k) is str for k in item):
                return False
            stack.extend(item.values())
        else:
            stack.extend(item)
    return True
