"""Names and scope paths: validation, rendering and exact round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from provstore.errors import InvalidNameError
from provstore.scope import (
    check_name,
    format_path,
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
                alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/"),
                max_size=12,
            ).filter(lambda s: ".." not in s and s not in {"."}),
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
