"""Names, scope segments and scope paths.

A scope path is a ``/``-separated list of segments, each either a plain label
(``session1``) or a parameter ``key=value`` whose value is a JSON scalar. The
text of a segment is its identity: floats are written with ``repr`` (exact
round trip: ``sigma=2.0``), booleans and None as JSON (``true``, ``null``),
strings bare unless they would read back as another type (``x="2.0"``).

Text is compared as written, so two spellings that look the same must not
both get in: string values are normalized to NFC (``café`` typed with a
combining accent is the same scope as with a precomposed one), and control,
format and other invisible characters (C0, C1, bidi overrides and isolates,
zero-width spaces and joiners, the BOM...) are refused with the code point
and its position. :func:`escape` shows anything still ambiguous in old
stores as ``\\uXXXX``.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from .errors import InvalidNameError

__all__ = [
    "Segment", "escape", "format_path", "invisible_character", "parse_path",
    "segment_for_label", "segment_for_param",
]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*|[0-9][A-Za-z0-9_.\-]*")
MAX_NAME = 255
# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt)
# that are not already control or format characters: they render as nothing.
_IGNORABLE = (
    (0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
# Control, format (bidi, zero-width, BOM) and surrogate code points, and
# line/paragraph separators. Unassigned and private-use ones are allowed
# (a later Unicode or a font may draw them) but escaped in listings.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_ESCAPED_CATEGORIES = frozenset({"Co", "Cn"})
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


def invisible_character(text: str) -> tuple[int, str] | None:
    """The position and code point of the first invisible or control character in *text*.

    Control (C0, C1), format (bidi overrides and isolates, zero-width
    characters, the BOM) and surrogate code points, line and paragraph
    separators and the other default-ignorable ones
    (variation selectors, Hangul fillers...) count: none of them shows.
    """
    for i, ch in enumerate(text):
        if ch.isascii() and ch.isprintable():
            continue
        code = ord(ch)
        if unicodedata.category(ch) in _REFUSED_CATEGORIES or any(
                lo <= code <= hi for lo, hi in _IGNORABLE):
            return i, ch
    return None


def _describe(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")


def _invisible_problem(text: str) -> str:
    found = invisible_character(text)
    if found is None:
        return ""
    i, ch = found
    return f"it contains {_describe(ch)} at position {i}, an invisible or control character"


def _name_problem(name: str) -> str:
    if not name:
        return "it is empty"
    if "/" in name:
        return "'/' separates scopes and cannot appear in a name"
    if ".." in name:
        return "'..' is not allowed"
    invisible = _invisible_problem(name)
    if invisible:
        return invisible
    if len(name) > MAX_NAME:
        return f"it is longer than {MAX_NAME} characters"
    if name in {".", "-"}:
        return "it is only punctuation"
    if not _NAME.fullmatch(name):
        bad = next(((i, ch) for i, ch in enumerate(name)
                    if not (ch.isascii() and (ch.isalnum() or ch in "_.-"))), None)
        if bad is None:  # a valid character in the wrong place (a leading '-' or '.')
            return f"it starts with {name[0]!r}"
        return f"it contains {_describe(bad[1])} at position {bad[0]}"
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
        value: Scalar | dict[str, Any] | list[Any] = json.loads(text)
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
    if isinstance(value, str):
        text = unicodedata.normalize("NFC", value)
        _check_value_text(key, text)
        return text
    if value is None or isinstance(value, (int, float, bool)):
        return value
    raise InvalidNameError(
        f"scope parameter {key}={value!r} is a {type(value).__name__}; scope parameters "
        "are JSON scalars (str, int, float, bool, None)"
    )


def _check_value_text(key: str, value: str) -> None:
    invisible = _invisible_problem(value)
    if invisible:
        raise InvalidNameError(
            f"scope parameter {key}={escape(value)}: {invisible}; remove it (values are "
            "compared as written, and an invisible character makes a lookalike)")
    if "/" in value or value in {".", ".."} or ".." in value:
        raise InvalidNameError(f"scope parameter {key}={value!r} contains '/' or '..'")


def escape(text: str) -> str:
    """*text* with every character that could mislead a reader written as ``\\uXXXX``.

    For listings: invisible and control characters, non-ASCII spaces,
    unassigned and private-use code points, and,
    in text that is not in NFC form (stored before values were normalized),
    every non-ASCII character, so that lookalike spellings print
    differently. A backslash is doubled, so the escapes cannot be forged.
    """
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    nfc = unicodedata.is_normalized("NFC", text)
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif not ch.isascii() and (not nfc or ch.isspace() or invisible_character(ch)
                                   or unicodedata.category(ch) in _ESCAPED_CATEGORIES):
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        elif ch.isascii() and not ch.isprintable():
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


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
