"""ctx.table and ctx.find over a real store holding a subject-by-sigma grid."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

import provstore
from provstore.sweeps import Found, scope_params

SUBJECTS = ("01", "02")
SIGMAS = (1.0, 2.0, 3.0)


@provstore.track
def smooth(signal: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(signal, dtype=float) * sigma


@provstore.track
def score(smoothed: np.ndarray) -> float:
    return float(np.sum(smoothed))


def plain(x: int) -> int:
    return x


@pytest.fixture
def grid(ctx: provstore.Context) -> provstore.Context:
    # ctx.signal lives in each subject scope; every cell holds smoothed and score.
    for i, subject in enumerate(SUBJECTS):
        with ctx.scope(subject=subject):
            ctx.signal = np.arange(4) + i
            for sigma in SIGMAS:
                with ctx.scope(sigma=sigma):
                    ctx.smoothed = smooth(ctx.signal, sigma)
                    ctx.score = score(ctx.smoothed)
    return ctx


def expected_score(subject: str, sigma: float) -> float:
    return float(np.sum((np.arange(4) + SUBJECTS.index(subject)) * sigma))


def test_table_has_a_row_per_cell_with_params_as_columns(grid: provstore.Context) -> None:
    frame = grid.table("score")
    assert list(frame.columns) == ["subject", "sigma", "scope", "score"]
    assert len(frame) == 6
    assert list(frame["scope"]) == sorted(frame["scope"])
    assert frame["scope"].iloc[0] == "subject=01/sigma=1.0"
    assert frame["sigma"].dtype == np.float64
    assert frame["score"].dtype == np.float64
    assert list(frame["subject"]) == ["01"] * 3 + ["02"] * 3  # strings stay strings
    for row in frame.itertuples():
        assert row.score == expected_score(row.subject, row.sigma)


def test_table_applies_func(grid: provstore.Context) -> None:
    frame = grid.table("smoothed", lambda a: a.max())
    assert list(frame.columns) == ["subject", "sigma", "scope", "smoothed"]
    assert frame["smoothed"].tolist() == [3.0, 6.0, 9.0, 4.0, 8.0, 12.0]


def test_table_without_func_holds_the_values(grid: provstore.Context) -> None:
    frame = grid.table("smoothed")
    assert frame["smoothed"].dtype == object
    np.testing.assert_array_equal(frame["smoothed"].iloc[1], np.arange(4) * 2.0)


def test_table_counts_bindings_where_bound_not_inherited(grid: provstore.Context) -> None:
    frame = grid.table("signal")
    assert list(frame.columns) == ["subject", "scope", "signal"]
    assert frame["scope"].tolist() == ["subject=01", "subject=02"]


def test_table_from_a_subscope_and_not_recursive(grid: provstore.Context) -> None:
    with grid.scope(subject="02"):
        frame = grid.table("score")
        assert frame["scope"].tolist() == [f"subject=02/sigma={s}" for s in SIGMAS]
    grid.scope(subject="01").signal2 = 1
    assert grid.table("signal", recursive=False)["scope"].tolist() == [
        "subject=01", "subject=02"
    ]
    assert grid.table("score", recursive=False).empty
    assert grid.scope(subject="01").table("signal2")["scope"].tolist() == ["subject=01"]


def test_scope_lacking_the_name_or_deleted_gives_no_row(grid: provstore.Context) -> None:
    with grid.scope(subject="03", sigma=1.0):
        grid.other = 1
    cell = grid.scope(subject="01", sigma=2.0)
    del cell.score
    frame = grid.table("score")
    assert len(frame) == 5
    assert "subject=01/sigma=2.0" not in set(frame["scope"])
    assert "subject=03/sigma=1.0" not in set(frame["scope"])
    assert grid.table("nothing").empty


def test_labels_without_params_and_missing_params(ctx: provstore.Context) -> None:
    ctx.scope("session1", "run2").x = 1.5
    ctx.scope("session1", k=2).x = 2.5
    ctx.scope(j="a").x = 3.5
    frame = ctx.table("x")
    assert list(frame.columns) == ["j", "k", "scope", "x"]
    assert frame["scope"].tolist() == ["j=a", "session1/k=2", "session1/run2"]
    assert frame["j"].tolist()[0] == "a" and pd.isna(frame["j"].iloc[1])
    assert pd.isna(frame["k"].iloc[0]) and frame["k"].iloc[1] == 2


def test_names_with_like_wildcards_are_not_wildcards(ctx: provstore.Context) -> None:
    ctx.scope("a_b").scope("c").x = 1
    ctx.scope("axb").scope("c").x = 2
    assert ctx.scope("a_b").table("x")["x"].tolist() == [1]


def test_table_rejects_a_clashing_column(ctx: provstore.Context) -> None:
    ctx.scope(scope="a").x = 1
    with pytest.raises(ValueError, match="clash"):
        ctx.table("x")


def test_table_without_pandas(grid: provstore.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install provstore\[pandas\]"):
        grid.table("score")


def test_find_by_params(grid: provstore.Context) -> None:
    found = grid.find(sigma=2.0)
    assert [f.path for f in found] == [
        "subject=01/sigma=2.0/score", "subject=01/sigma=2.0/smoothed",
        "subject=02/sigma=2.0/score", "subject=02/sigma=2.0/smoothed",
    ]
    first = found[0]
    assert isinstance(first, Found)
    assert first.params == {"subject": "01", "sigma": 2.0}
    assert first.version == 1
    assert grid.get(first.path) == expected_score("01", 2.0)
    assert [f.path for f in grid.find(subject="02", sigma=3.0)] == [
        "subject=02/sigma=3.0/score", "subject=02/sigma=3.0/smoothed",
    ]
    assert grid.find(subject="01", sigma=1)[0].path == "subject=01/sigma=1.0/score"
    assert grid.find(subject=1) == []  # "01" is a string: 1 does not match it
    assert grid.find(sigma=5.0) == []


def test_find_by_function(grid: provstore.Context) -> None:
    by_tracked = grid.find(function=score)
    assert [f.name for f in by_tracked] == ["score"] * 6
    assert {f.function for f in by_tracked} == {score.identity}
    assert grid.find(function=score.identity) == by_tracked
    assert [f.path for f in grid.find(smooth, subject="02", sigma=1.0)] == [
        "subject=02/sigma=1.0/smoothed"
    ]
    assert grid.find(function=plain) == []
    # Assigned values have no producing function but are still found.
    signals = [f for f in grid.find() if f.name == "signal"]
    assert [f.function for f in signals] == [None, None]


def test_find_below_a_missing_scope(grid: provstore.Context) -> None:
    assert grid.scope(subject="99").find() == []


def test_find_sees_rebinding(grid: provstore.Context) -> None:
    cell = grid.scope(subject="01", sigma=1.0)
    cell.score = -1.0
    found = cell.find(sigma=1.0, subject="01")[0]
    assert found.name == "score" and found.version == 2 and found.function is None
    assert score.identity not in {f.function for f in cell.find() if f.name == "score"}


def test_scope_params() -> None:
    assert scope_params("") == {}
    assert scope_params("session1/subject=01/sigma=2.0/flag=true") == {
        "subject": "01", "sigma": 2.0, "flag": True,
    }
