"""Type-exact hashing (DESIGN §5): values of different classes never share a digest.

Each pair in the ``*_PAIRS`` lists collided under hashing scheme 1, where a
subclass hashed as its base type and a call made with one value could return
the result computed for the other.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import os
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from provstore import hashing
from provstore.hashing import digest


class Color(enum.IntEnum):
    RED = 1


class Shade(enum.Enum):
    DARK = 1


class Other(enum.Enum):
    DARK = 1


class Label(str):
    pass


class Point(typing.NamedTuple):
    x: int
    y: int


class Pair(typing.NamedTuple):
    x: int
    y: int


PointT = collections.namedtuple("PointT", "x y")


def _dd(factory: typing.Callable[[], object]) -> collections.defaultdict[str, object]:
    out: collections.defaultdict[str, object] = collections.defaultdict(factory)
    out["a"] = 1
    return out


BUILTIN_PAIRS = [
    pytest.param(1, Color.RED, id="int-IntEnum"),
    pytest.param(1, Shade.DARK, id="int-Enum"),
    pytest.param(Shade.DARK, Other.DARK, id="two-Enums-same-value"),
    pytest.param((1, 2), Point(1, 2), id="tuple-namedtuple"),
    pytest.param(Point(1, 2), Pair(1, 2), id="two-namedtuples"),
    pytest.param(Point(1, 2), PointT(1, 2), id="NamedTuple-namedtuple"),
    pytest.param("a", Label("a"), id="str-subclass"),
    pytest.param(b"ab", bytearray(b"ab"), id="bytes-bytearray"),
    pytest.param(b"ab", memoryview(b"ab"), id="bytes-memoryview"),
    pytest.param(frozenset({1}), {1}, id="frozenset-set"),
    pytest.param({"a": 1}, collections.OrderedDict(a=1), id="dict-OrderedDict"),
    pytest.param({"a": 1}, _dd(int), id="dict-defaultdict"),
    pytest.param(_dd(int), _dd(list), id="defaultdict-factories"),
    pytest.param({"a": 1}, collections.Counter(a=1), id="dict-Counter"),
    pytest.param(collections.OrderedDict(a=1), collections.Counter(a=1), id="OrderedDict-Counter"),
    pytest.param(collections.OrderedDict(a=1, b=2), collections.OrderedDict(b=2, a=1),
                 id="OrderedDict-order"),
    pytest.param({Color.RED: "x"}, {1: "x"}, id="IntEnum-dict-key"),
    pytest.param({Label("a"): 1}, {"a": 1}, id="str-subclass-dict-key"),
    pytest.param(0.0, -0.0, id="signed-zero"),
    pytest.param(2**20000, 2**20000 + 1, id="huge-ints"),
    pytest.param(Path("a"), "a", id="path-str"),
]


@pytest.mark.parametrize(("a", "b"), BUILTIN_PAIRS)
def test_builtin_subclasses_have_their_own_digest(a: object, b: object) -> None:
    assert digest(a) != digest(b)


def test_subclasses_do_not_take_the_scalar_fast_path() -> None:
    class Num(int):
        pass

    class Real(float):
        pass

    assert digest(Num(3)) != digest(3)
    assert digest(Real(1.5)) != digest(1.5)
    assert digest(Num(3)) == digest(Num(3))


def test_subclass_instance_state_counts() -> None:
    class Tagged(str):
        unit: str

    a, b = Tagged("x"), Tagged("x")
    a.unit, b.unit = "m", "s"
    assert digest(a) != digest(b)


def test_nan_hashes_alike_whatever_its_bits() -> None:
    nan, neg_nan = float("nan"), -float("nan")
    assert digest(nan) == digest(neg_nan) == digest([nan][0])
    assert digest(np.float64("nan")) == digest(-np.float64("nan"))
    assert digest(complex(nan, 1)) == digest(complex(neg_nan, 1))
    assert digest(nan) != digest(np.float64("nan"))


def test_equal_exotic_values_hash_alike() -> None:
    assert digest(collections.Counter("abca")) == digest(collections.Counter("acba"))
    assert digest(_dd(int)) == digest(_dd(int))
    assert digest(Point(1, 2)) == digest(Point(1, 2))
    assert digest(memoryview(b"ab")) == digest(memoryview(bytearray(b"ab")))
    assert digest(memoryview(b"ab")) != digest(memoryview(b"ab").cast("c"))


# ---------------------------------------------------------------- numpy

def _masked(mask: list[bool], fill: float = 1e20) -> np.ma.MaskedArray[typing.Any, typing.Any]:
    return np.ma.MaskedArray(np.arange(3.0), mask=mask, fill_value=fill)


STRUCT = np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")])

NUMPY_PAIRS = [
    pytest.param(np.eye(2), np.eye(2).view(np.matrix), id="ndarray-matrix"),
    pytest.param(STRUCT, STRUCT.view(np.recarray), id="structured-recarray"),
    pytest.param(np.arange(3.0), _masked([False] * 3), id="ndarray-masked"),
    pytest.param(_masked([True, False, False]), _masked([False, True, False]), id="mask"),
    pytest.param(_masked([True, False, False]), _masked([True, False, False], fill=-1),
                 id="fill_value"),
    pytest.param(np.dtype("f8"), np.dtype("f4"), id="dtypes"),
]


@pytest.mark.parametrize(("a", "b"), NUMPY_PAIRS)
def test_ndarray_subclasses_keep_class_and_state(a: object, b: object) -> None:
    assert digest(a) != digest(b)


def test_masked_arrays_hash_without_raising() -> None:
    m = np.ma.masked_invalid(np.array([1.0, np.nan, 3.0]))
    assert digest(m) == digest(np.ma.masked_invalid(np.array([1.0, np.nan, 3.0])))
    objects = np.ma.MaskedArray(np.array([1, "a"], dtype=object), mask=[False, True])
    assert digest(objects) != digest(np.ma.MaskedArray(np.array([1, "a"], dtype=object)))


def test_memmap_hashes_like_the_equal_ndarray(tmp_path: Path) -> None:
    a = np.random.default_rng(0).random((50, 40))
    np.save(tmp_path / "a.npy", a)
    loaded = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert type(loaded) is np.memmap
    assert digest(loaded) == digest(a)
    assert digest(loaded[::2, 1:]) == digest(a[::2, 1:])  # memmap slices stay memmaps
    assert digest(np.memmap(tmp_path / "a.npy", dtype=np.uint8, mode="r")) == digest(
        np.fromfile(tmp_path / "a.npy", dtype=np.uint8))


def test_string_dtype_arrays_hash_by_content_not_pointers() -> None:
    text = np.array(["a", "bb"], dtype=np.dtypes.StringDType())
    again = np.array(["a", "bb"], dtype=np.dtypes.StringDType())
    assert digest(text) == digest(again)
    assert digest(text) != digest(np.array(["a", "bb"], dtype=object))


# ---------------------------------------------------------------- pandas

def _frame(**columns: typing.Any) -> pd.DataFrame:
    return pd.DataFrame(columns)


PANDAS_PAIRS = [
    pytest.param(pd.DataFrame({1: [1]}), pd.DataFrame({"1": [1]}), id="column-label"),
    pytest.param(pd.Series([1], index=[1]), pd.Series([1], index=["1"]), id="index-label"),
    pytest.param(pd.Series([1], dtype=object), pd.Series(["1"], dtype=object), id="object-1"),
    pytest.param(pd.Series([1.5], dtype=object), pd.Series(["1.5"], dtype=object),
                 id="object-1.5"),
    pytest.param(pd.Series([0.0]), pd.Series([-0.0]), id="signed-zero"),
    pytest.param(pd.Series([1], index=pd.Index([0], name="a")),
                 pd.Series([1], index=pd.Index([0], name="b")), id="index-name"),
    pytest.param(pd.Series([1], name="a"), pd.Series([1], name="b"), id="series-name"),
    pytest.param(pd.Series([1], name=1), pd.Series([1], name="1"), id="series-name-type"),
    pytest.param(pd.Series(pd.Categorical(["a"], categories=["a", "b"])),
                 pd.Series(pd.Categorical(["a"], categories=["a", "c"])), id="categories"),
    pytest.param(pd.Series(pd.Categorical(["a"], ordered=True)),
                 pd.Series(pd.Categorical(["a"], ordered=False)), id="ordered"),
    pytest.param(pd.Series([1, 2], dtype="int64"), pd.Series([1, 2], dtype="Int64"),
                 id="int64-Int64"),
    pytest.param(pd.Series([1, None], dtype="Int64"), pd.Series([1, 0], dtype="Int64"),
                 id="nullable-NA"),
    pytest.param(_frame(a=[1]), pd.Series([1], name="a"), id="frame-series"),
    pytest.param(pd.Series([1, 2]), pd.Series([1, 2], index=pd.Index([0, 1])),
                 id="RangeIndex-Index"),
    pytest.param(pd.Series([1], index=pd.MultiIndex.from_tuples([(1, "a")])),
                 pd.Series([1], index=pd.MultiIndex.from_tuples([("1", "a")])),
                 id="MultiIndex-level-type"),
    pytest.param(pd.Series(["a"]), pd.Series([b"a"]), id="str-bytes"),
    pytest.param(pd.Series(pd.date_range("2020", periods=2, tz="UTC")),
                 pd.Series(pd.date_range("2020", periods=2, tz="Europe/Paris")), id="tz"),
]


@pytest.mark.parametrize(("a", "b"), PANDAS_PAIRS)
def test_pandas_labels_values_and_dtypes_are_exact(a: object, b: object) -> None:
    assert digest(a) != digest(b)


def _rich_frame() -> pd.DataFrame:
    frame = pd.DataFrame({
        "f": [0.5, -0.0, np.nan], "i": [1, 2, 3], "s": ["x", "y", None],
        "o": pd.Series([1, "1", 2.5], dtype=object),
        "c": pd.Categorical(["a", "b", "a"], categories=["b", "a"], ordered=True),
        "n": pd.array([1, None, 3], dtype="Int64"),
        "t": pd.date_range("2020", periods=3, tz="UTC"),
    }, index=pd.Index([10, 20, 30], name="row"))
    frame.columns.name = "col"
    return frame


def test_equal_frames_hash_alike() -> None:
    a = _rich_frame()
    b = _rich_frame().copy(deep=True)
    b = b[list(b.columns)]  # a different block layout
    assert digest(a) == digest(b)
    assert digest(a.index) == digest(b.index)
    assert digest(a["c"]) == digest(b["c"])


def test_frame_digests_are_stable_across_processes() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from test_hashing_exact import "
        "_rich_frame; from provstore.hashing import digest; print(digest(_rich_frame()))"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)],
                       capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert outs == {digest(_rich_frame()) + "\n"}


# ---------------------------------------------------------------- the rest

class Opaque:
    def __init__(self, v: int) -> None:
        self.v = v

    def __reduce__(self) -> tuple[typing.Any, ...]:
        return (Opaque, (self.v,))


class OpaqueChild(Opaque):
    def __reduce__(self) -> tuple[typing.Any, ...]:
        return (Opaque, (self.v,))  # pickles as its base class


@pytest.mark.filterwarnings("ignore:provstore hashes")
def test_pickled_objects_carry_their_exact_class() -> None:
    assert digest(Opaque(1)) != digest(OpaqueChild(1))


class Keyed:
    def __init__(self, key: str) -> None:
        self.key = key

    def __provstore_hash__(self) -> str:
        return self.key


def test_custom_hash_includes_the_class() -> None:
    assert digest(Keyed("a")) != digest("a")
    assert digest(Keyed("a")) == digest(Keyed("a"))


def _add(a: int, b: int) -> int:
    return a + b


@dataclasses.dataclass
class Scaler:
    k: int

    def scale(self, x: int) -> int:
        return self.k * x


def test_callables_are_keyed_with_what_they_close_over() -> None:
    assert digest(functools.partial(_add, 1)) != digest(functools.partial(_add, 2))
    assert digest(functools.partial(_add, 1)) == digest(functools.partial(_add, 1))
    assert digest(Scaler(2).scale) != digest(Scaler(3).scale)
    assert digest(Scaler(2).scale) == digest(Scaler(2).scale)
    first = lambda x: x + 1  # noqa: E731 - two lambdas share a qualified name
    second = lambda x: x + 2  # noqa: E731
    assert digest(first) != digest(second)
    assert digest(_dd(lambda: 0)) != digest(_dd(lambda: 1))

    def make(k: int) -> typing.Callable[[int], int]:
        return lambda x: x * k

    assert digest(make(2)) != digest(make(3))
    assert digest(make(2)) == digest(make(2))


def test_recursive_closures_hash() -> None:
    def outer() -> typing.Callable[[int], int]:
        def fact(n: int) -> int:
            return 1 if n < 2 else n * fact(n - 1)
        return fact

    assert digest(outer()) == digest(outer())


def test_scheme_version_is_public() -> None:
    assert hashing.SCHEME_VERSION == 2
    assert hashing.ALGORITHM == "xxh3_128"


# ------------------------------------------------ stored values hash alike

def _stored_values() -> dict[str, object]:
    return {
        "npy": np.arange(12.0).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "scalar": np.float64(-0.0),
        "text_array": np.array(["a", "bb"]),
        "h5_dict": {"a": np.arange(3), "b": np.ones((2, 2), np.float32), "n": [1, (2, "x")]},
        "json": {"x": [1, 2.5, "s", None, True], "y": {"z": -0.0}, "big": 2**70},
        "ordered": collections.OrderedDict(b=1, a=2),
        "point": Point(1, 2),
        "masked": np.ma.MaskedArray([1.0, 2.0], mask=[False, True], fill_value=7.0),
        "frame": _rich_frame(),
    }


def test_a_value_hashes_like_its_stored_and_loaded_copy(ctx: typing.Any) -> None:
    # Calls link arguments to artifacts by digest, and dedup compares digests:
    # a value and its reload (a memmap, an HDF5 dict, JSON...) must agree.
    for name, value in _stored_values().items():
        ctx[name] = value
        loaded = ctx[name]
        recorded = ctx.store.artifact(ctx.history(name).latest.artifact_id).digest
        assert digest(loaded) == digest(value) == recorded, name


def test_running_a_function_keeps_its_digest() -> None:
    # The interpreter specialises hot bytecode in place; co_code is the
    # unspecialised form, so a function hashes alike before and after use.
    def hot(x: typing.Any) -> typing.Any:
        return x.real + 1

    before = digest(hot)
    for i in range(5000):
        hot(i)
        hot(1.5)
    assert digest(hot) == before


def test_estimators_hash_by_class_and_state_without_pickle() -> None:
    import warnings

    from sklearn.preprocessing import StandardScaler

    x = np.arange(12.0).reshape(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pickle fallback warns: it must not be taken
        digests = {
            digest(StandardScaler()),
            digest(StandardScaler(with_mean=False)),
            digest(StandardScaler().fit(x)),
            digest(StandardScaler().fit(x + 1)),
        }
        assert len(digests) == 4
        assert digest(StandardScaler().fit(x)) == digest(StandardScaler().fit(x.copy()))
