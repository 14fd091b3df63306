"""Names and scope paths: validation, rendering and exact round trips."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import provstore
from provstore.errors import InvalidNameError
from provstore.scope import (
    check_name,
    escape,
    format_path,
    invisible_character,
    parse_path,
    segment_for_label,
    segment_for_param,
)


@pytest.mark.parametrize("name", ["bold", "x1", "_private", "sub-01", "model.v2", "01"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "..", "a..b", "a\x00b", "tab\there", "new\nline", "\x7f", ".", "-", "a b",
     "x" * 256, "é/x", "../etc"],
)
def test_invalid_names_raise(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_name(name)


def test_invalid_name_is_a_value_error_naming_the_fix() -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        check_name("a b")


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("sigma", 2.0, "sigma=2.0"),
        ("sigma", 0.1, "sigma=0.1"),
        ("n", 3, "n=3"),
        ("subject", "01", "subject=01"),
        ("flag", True, "flag=true"),
        ("none", None, "none=null"),
        ("x", "2.0", 'x="2.0"'),
        ("x", "true", 'x="true"'),
        ("lr", 1e-05, "lr=1e-05"),
        ("sigma", np.float64(2.0), "sigma=2.0"),
        ("n", np.int64(7), "n=7"),
    ],
)
def test_param_segments_render_exactly(key: str, value: object, text: str) -> None:
    seg = segment_for_param(key, value)
    assert seg.text == text
    again = segment_for_label(seg.text)
    assert again == seg
    assert type(again.value) is type(seg.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1], {"a": 1}, b"x", "a/b", ".."])
def test_bad_param_values_raise(value: object) -> None:
    with pytest.raises(InvalidNameError):
        segment_for_param("k", value)


def test_string_and_float_params_are_different_scopes() -> None:
    assert segment_for_param("x", "2.0").text != segment_for_param("x", 2.0).text


@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False),
            st.integers(),
            st.booleans(),
            st.none(),
            st.text(
                alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Zl", "Zp"),
                                       blacklist_characters="/"),
                max_size=12,
            ).filter(lambda s: ".." not in s and s not in {"."}
                     and invisible_character(s) is None),
        ),
        max_size=4,
    )
)
def test_paths_round_trip(values: list[object]) -> None:
    segments = [segment_for_param(f"k{i}", v) for i, v in enumerate(values)]
    parsed = parse_path(format_path(segments))
    assert [(s.key, s.value, type(s.value)) for s in parsed] == [
        (s.key, s.value, type(s.value)) for s in segments
    ]


def test_root_path_is_empty() -> None:
    assert parse_path("") == []
    assert parse_path("/") == []
    assert format_path([]) == ""


def test_a_long_parameter_value_is_refused_before_reaching_the_database() -> None:
    # scopes.segment is bounded; PostgreSQL would fail mid-write otherwise.
    segment_for_param("note", "x" * 400)
    with pytest.raises(InvalidNameError, match="store the long value as an artifact"):
        segment_for_param("note", "x" * 600)


# ------------------------------------------------ lookalikes and invisible characters
INVISIBLE = {
    "C0 escape": "\x1b", "DEL": "\x7f", "C1 NEL": "\x85", "C1 CSI": "\x9b",
    "soft hyphen": "\xad", "LRE": "\u202a", "RLE": "\u202b", "PDF": "\u202c",
    "LRO": "\u202d", "RLO": "\u202e", "LRI": "\u2066", "RLI": "\u2067", "FSI": "\u2068",
    "PDI": "\u2069", "ZWSP": "\u200b", "ZWNJ": "\u200c", "ZWJ": "\u200d", "LRM": "\u200e",
    "word joiner": "\u2060", "BOM": "\ufeff", "line separator": "\u2028",
    "paragraph separator": "\u2029", "Hangul filler": "\u3164", "variation selector": "\ufe0f",
    "combining grapheme joiner": "\u034f", "Mongolian vowel separator": "\u180e",
    "tag character": "\U000e0041",
}


@pytest.mark.parametrize("char", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_invisible_characters_in_values_are_refused_by_code_point(char: str) -> None:
    code = re.escape(f"U+{ord(char):04X}")
    with pytest.raises(InvalidNameError, match=f"{code}.* at position 3"):
        segment_for_param("p", f"abc{char}def")
    with pytest.raises(InvalidNameError, match=f"{code}.* at position 3"):
        segment_for_label(f"p=abc{char}def")
    with pytest.raises(InvalidNameError, match=f"{code}.* at position 1"):
        check_name(f"a{char}b")


def test_values_are_normalized_to_nfc() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert segment_for_param("p", decomposed) == segment_for_param("p", composed)
    assert parse_path(f"p={decomposed}") == parse_path(f"p={composed}")
    assert segment_for_param("p", decomposed).value == composed


def test_a_non_ascii_name_names_the_character() -> None:
    with pytest.raises(InvalidNameError, match=r"U\+00E9.*position 3"):
        check_name("caf\u00e9")


def test_escape_makes_lookalikes_print_differently() -> None:
    assert escape("p=caf\u00e9") == "p=caf\u00e9"  # NFC text prints as is
    assert escape("p=cafe\u0301") == "p=cafe\\u0301"
    assert escape("a\u202eb") == "a\\u202eb"
    assert escape("a\u00a0b") == "a\\u00a0b"  # a no-break space is not a space
    assert escape("a\x1bb") == "a\\x1bb"
    assert escape("a\\u0301") == "a\\\\u0301"  # a literal backslash cannot forge an escape
    assert escape("plain=1.0") == "plain=1.0"


# Hostile text: any code point, biased towards the characters that cause trouble.
HOSTILE = st.lists(
    st.one_of(
        st.characters(),
        st.sampled_from(["/", "..", ".", "\\", "=", "\x00", "~", "%2e", "\u0301", "\u00e9",
                         "\u202e", "\u200b", "\ufeff", "\uff0e", "C:", "\u2028", " ", "a"]),
    ),
    max_size=10,
).map("".join)
# Half plain identifiers, so that the hostile text in the other fields gets exercised.
NAMEISH = st.one_of(HOSTILE, st.from_regex(r"[a-z][a-z0-9_.-]{0,7}", fullmatch=True))


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, provstore.Context]:
    parent = tmp_path_factory.mktemp("hostile")
    return parent, provstore.open(parent / "study")


def _outside(parent: Path) -> set[str]:
    return {str(p.relative_to(parent)) for p in parent.rglob("*")
            if p.relative_to(parent).parts[0] != "study"}


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(label=NAMEISH, key=NAMEISH, value=HOSTILE, name=NAMEISH)
def test_hostile_names_are_refused_or_round_trip(
        hostile_store: tuple[Path, provstore.Context], label: str, key: str, value: str,
        name: str) -> None:
    parent, ctx = hostile_store
    before = _outside(parent)
    try:
        view = ctx.scope(label, **{key: value})
        view[name] = 7
    except InvalidNameError:
        event("refused")  # the only error a name may raise
    else:
        event("accepted")
        assert view[name] == 7
        assert unicodedata.is_normalized("NFC", view.path)
        assert not {unicodedata.category(c) for c in view.path} & {"Cc", "Cf", "Zl", "Zp"}
        assert format_path(parse_path(view.path)) == view.path
        assert parse_path(view.path)[-1].value == unicodedata.normalize("NFC", value)
        assert ctx.get(f"{view.path}/{name}") == 7
    assert _outside(parent) == before  # names never become paths
