"""Parquet: pandas values round-trip exactly, or are declined, never silently changed."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from store_files import only_file

import provstore
from provstore.backends import registry
from provstore.errors import BackendError
from provstore.testing import BackendConformance

BACKEND = registry.get("parquet")


def frames() -> list[Any]:
    n = 4
    tricky = pd.DataFrame({
        "int": np.arange(n, dtype=np.int32),
        "u64": np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64),
        "float": [1.5, np.nan, -0.0, np.inf],
        "f16": np.array([1, 2, 3, 4], dtype=np.float16),
        "bool": [True, False, True, True],
        "str": pd.array(["a", "naïve Δ", "", "x"], dtype="str"),
        "string": pd.array(["x", None, "y", "z"], dtype="string"),
        "object_str": np.array(["p", None, "日本", ""], dtype=object),
        "bytes": np.array([b"\x00a", b"", b"b", b"\xff"], dtype=object),
        "cat": pd.Categorical(["lo", "hi", "lo", None], categories=["lo", "mid", "hi"],
                              ordered=True),
        "cat_object": pd.Categorical(["a", "b", "a", "a"],
                                     categories=pd.Index(["b", "a"], dtype=object)),
        "tz": pd.date_range("2024-03-30", periods=n, freq="h", tz="Europe/Paris"),
        "tz_s": pd.date_range("2024-01-01", periods=n, tz="UTC").as_unit("s"),
        "naive_s": np.array(["2020-01-01T00:00:01"] * n, dtype="M8[s]"),
        "naive_ns": np.array(["2020-01-01T00:00:00.000000001"] * n, dtype="M8[ns]"),
        "delta": pd.to_timedelta([1, 2, 3, 4], unit="s"),
        "Int64": pd.array([1, None, 3, -(2**63)], dtype="Int64"),
        "UInt8": pd.array([1, None, 255, 0], dtype="UInt8"),
        "Float32": pd.array([1.5, None, 2.0, 0.0], dtype="Float32"),
        "boolean": pd.array([True, None, False, True], dtype="boolean"),
    }, index=pd.Index(["w", "x", "y", "z"], name="key"))
    tricky.columns.name = "field"
    multi = pd.DataFrame({"v": [1.0, 2.0, 3.0]}, index=pd.MultiIndex.from_tuples(
        [("a", 1), ("a", 2), ("b", 1)], names=["letter", "number"]))
    with_attrs = pd.DataFrame({"a": [1, 2]}, index=pd.RangeIndex(10, 14, 2))
    with_attrs.attrs = {"units": {"a": "mm"}, "scan": 3}
    return [
        tricky,
        multi,
        with_attrs,
        pd.DataFrame({0: [1, 2], 5: [3, 4]}),  # int labels survive
        pd.DataFrame({"x": [1, 2, 3]}, index=pd.date_range("2020", periods=3, freq="D")),
        pd.DataFrame({"x": [1]}, index=pd.Index(["only"], dtype=object)),
        pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "b"), ("a", "c")])),
        pd.DataFrame(),
        pd.DataFrame({"empty": pd.Series([], dtype=object)}),
        pd.Series([1.5, 2.5], name="temperature"),
        pd.Series(["a", None], dtype=object, name=None),
        pd.Series([1, 2], name=7, index=pd.Index([10, 20], name="t")),
    ]


class TestParquet(BackendConformance):
    backend = BACKEND

    def sample_values(self) -> list[Any]:
        return frames()

    def large_sample(self) -> Any:
        rng = np.random.default_rng(3)
        return pd.DataFrame({"a": rng.normal(size=2_000_000), "b": rng.integers(0, 9, 2_000_000)})

    def assert_equal(self, actual: Any, expected: Any) -> None:
        assert type(actual) is type(expected)
        if isinstance(expected, pd.Series):
            pd.testing.assert_series_equal(actual, expected, check_exact=True, check_freq=True)
        else:
            pd.testing.assert_frame_equal(actual, expected, check_exact=True, check_freq=True)
            assert actual.columns.name == expected.columns.name
        assert actual.attrs == expected.attrs


def declined() -> list[Any]:
    """Values Parquet would change: another backend must take them."""
    return [
        pd.DataFrame({"mixed": pd.Series(["a", 1], dtype=object)}),
        pd.DataFrame({"nan_in_object": pd.Series(["a", np.nan], dtype=object)}),
        pd.DataFrame({0: [1], "a": [2]}),  # mixed label types would be stringified
        pd.DataFrame({1.5: [1]}),
        pd.DataFrame([[1, 2]], columns=["a", "a"]),
        pd.DataFrame({"c": [1 + 2j]}),
        pd.DataFrame({"big_endian": np.arange(3, dtype=">i4")}),
        pd.DataFrame({"p": pd.period_range("2020", periods=2, freq="M")}),
        pd.DataFrame({"cat": pd.Categorical([1, 2, 1])}),  # int categories come back as ints
        pd.DataFrame({"a": [1, 2]}, index=pd.Index(["t", 1], dtype=object)),
        pd.Series([1], name=("a", "tuple")),
    ]


@pytest.mark.parametrize("value", declined(), ids=lambda v: type(v).__name__)
def test_inexact_values_are_declined(value: Any) -> None:
    assert not BACKEND.can_save(value)
    assert registry.choose(value).name != "parquet"


def test_attrs_that_json_would_change_are_declined() -> None:
    df = pd.DataFrame({"a": [1]})
    df.attrs = {"shape": (1, 2)}
    assert not BACKEND.can_save(df)


@pytest.mark.parametrize("index", range(len(frames())))
def test_store_round_trip_and_file_opens_with_pandas(ctx: provstore.Context,
                                                     index: int) -> None:
    value = frames()[index]
    ctx.frame = value
    TestParquet().assert_equal(ctx.frame, value)
    path = only_file(ctx, ".parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' own reader may warn about metadata it skips
        plain = pd.read_parquet(path)
    assert isinstance(plain, pd.DataFrame)
    assert plain.shape == (value.to_frame() if isinstance(value, pd.Series) else value).shape


def test_safe_store_reads_dataframes(store_dir: Path) -> None:
    df = frames()[0]
    ctx = provstore.open(store_dir, safe=True)
    ctx.df = df
    pd.testing.assert_frame_equal(ctx.df, df, check_exact=True)
    assert not list(Path(store_dir, "objects").rglob("*.pkl"))


def test_declined_values_fall_back_to_pickle(ctx: provstore.Context) -> None:
    value = declined()[0]
    ctx.mixed = value
    pd.testing.assert_frame_equal(ctx.mixed, value)
    assert only_file(ctx, ".pkl").exists()



def test_missing_pyarrow_says_how_to_install(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "df.parquet"
    BACKEND.save(frames()[1], path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an absent package looks like
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(BackendError, match=r'pip install "provstore\[parquet\]"'):
        BACKEND.load(path, {}, mmap_mode=None)


def test_ingest_a_parquet_file_written_by_pandas(ctx: provstore.Context, tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    frame = frames()[1]
    frame.to_parquet(path)
    ctx.table_file = provstore.File(path)
    pd.testing.assert_frame_equal(ctx.table_file, frame, check_exact=True)
