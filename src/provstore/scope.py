"""Names, scope segments and scope paths.

A scope path is a ``/``-separated list of segments, each either a plain label
(``session1``) or a parameter ``key=value`` whose value is a JSON scalar. The
text of a segment is its identity: floats are written with ``repr`` (exact
round trip: ``sigma=2.0``), booleans and None as JSON (``true``, ``null``),
strings bare unless they would read back as another type (``x="2.0"``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidNameError

__all__ = ["Segment", "format_path", "parse_path", "segment_for_label", "segment_for_param"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*|[0-9][A-Za-z0-9_.\-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 255
Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Segment:
    """One step of a scope path.

    Attributes
    ----------
    text : str
        The segment as written in paths (``"sigma=2.0"``).
    key : str or None
        The parameter name, None for a plain label.
    value : scalar
        The parameter's value (None for labels, but also a legal value).
    """

    text: str
    key: str | None = None
    value: Scalar = None

    @property
    def value_json(self) -> str | None:
        """The value as JSON text, None for a label."""
        return None if self.key is None else json.dumps(self.value)


# Longest scope segment ("key=value"), as stored in scopes.segment.
MAX_SEGMENT = 512


def check_name(name: object, *, what: str = "name", where: str = "") -> str:
    """Validate an artifact name or a scope key and return it.

    Names may hold letters, digits, ``_``, ``-`` and ``.``; never ``/``,
    ``..``, NUL or control characters, and are at most 255 characters.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{what}s are strings, got {type(name).__name__} {name!r}{where}")
    problem = _name_problem(name)
    if problem:
        raise InvalidNameError(
            f"invalid {what} {name!r}{where}: {problem}; use letters, digits, '_', '-' and '.'"
        )
    return name


def _name_problem(name: str) -> str:
    if not name:
        return "it is empty"
    if "/" in name:
        return "'/' separates scopes and cannot appear in a name"
    if ".." in name:
        return "'..' is not allowed"
    if _CONTROL.search(name):
        return "it contains NUL or control characters"
    if len(name) > MAX_NAME:
        return f"it is longer than {MAX_NAME} characters"
    if name in {".", "-"} or not _NAME.fullmatch(name):
        return "it contains characters other than letters, digits, '_', '-' and '.'"
    return ""


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    # A string that would read back as a number, bool or null is quoted.
    return json.dumps(text) if _parse_value(text) != text or text == "" else text


def _parse_value(text: str) -> Scalar:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, (dict, list)):
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text
    return value


def _coerce(key: str, value: Any) -> Scalar:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidNameError(f"scope parameter {key}={value!r} is not a finite number")
    if value is None or isinstance(value, (str, int, float, bool)):
        if isinstance(value, str):
            _check_value_text(key, value)
        return value
    raise InvalidNameError(
        f"scope parameter {key}={value!r} is a {type(value).__name__}; scope parameters "
        "are JSON scalars (str, int, float, bool, None)"
    )


def _check_value_text(key: str, value: str) -> None:
    if "/" in value or _CONTROL.search(value) or value in {".", ".."} or ".." in value:
        raise InvalidNameError(
            f"scope parameter {key}={value!r} contains '/', '..' or control characters"
        )


def segment_for_param(key: str, value: Any) -> Segment:
    """Build the segment of a ``key=value`` scope parameter."""
    check_name(key, what="scope parameter name")
    value = _coerce(key, value)
    text = f"{key}={_format_value(value)}"
    if len(text) > MAX_SEGMENT:
        # The database column is bounded (PostgreSQL enforces it); a long
        # value is data, not a name.
        raise InvalidNameError(
            f"scope parameter {key}=... is {len(text)} characters long, over {MAX_SEGMENT}; "
            "use a short label for the scope and store the long value as an artifact")
    return Segment(text, key, value)


def segment_for_label(label: str) -> Segment:
    """Build the segment of a label; ``"k=v"`` labels are read as parameters."""
    if not isinstance(label, str):
        raise InvalidNameError(f"scope labels are strings, got {type(label).__name__}")
    key, sep, text = label.partition("=")
    if sep:
        return segment_for_param(key, _parse_value(text))
    check_name(label, what="scope label")
    return Segment(label)


def parse_path(path: str) -> list[Segment]:
    """Split a scope path (``"subject=01/sigma=2.0"``) into segments."""
    if not isinstance(path, str):
        raise InvalidNameError(f"scope paths are strings, got {type(path).__name__}")
    if path in {"", "/"}:
        return []
    return [segment_for_label(part) for part in path.strip("/").split("/")]


def format_path(segments: list[Segment] | tuple[Segment, ...]) -> str:
    """Join segments into a path; the root is ``""``."""
    return "/".join(s.text for s in segments)


def display(path: str) -> str:
    """Return *path* for messages, naming the root explicitly."""
    return f"scope {path!r}" if path else "the root scope"
