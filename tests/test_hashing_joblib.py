"""Behaviours of joblib's hashing tests, checked on provstore's digest.

joblib's ``joblib/test/test_hashing.py`` pins what a memoization hash must do.
The behaviours below are written anew for :func:`provstore.hashing.digest`.

Ported:

- distinct trivial values (ints, floats, complex, str, tuples, lists, dicts,
  None, a builtin function, a bound builtin method, sets and dicts whose
  elements do not sort) hash distinctly, and each hashes alike twice;
- bound methods: the same method twice hashes alike, methods bound to
  different instances differ, equal instances of one class hash alike;
- arrays: equal copies alike, a changed element or the transpose differs;
  dicts of arrays by value; datetime64/timedelta64 differ from integers;
  object arrays by their elements; 0-d arrays hash and differ from 1-d;
  numpy scalars by value; a memmap like its array;
- dicts and sets of many strings, and sets of Decimals, are order-independent;
  strings hash alike whatever their history (a pickle round trip);
- dtypes, simple (interned) or structured, hash alike after a pickle round trip;
- digests are stable across processes (two separate worker processes) and
  across releases (golden digests pinned to :data:`SCHEME_VERSION`);
- an object that cannot be encoded raises a clear error.

Deliberately different (provstore hashes the *value*, joblib the pickle):

- C- and Fortran-ordered or non-contiguous arrays with equal elements hash
  alike here (joblib: differently). Array layout is storage, not value; a
  reloaded ``.npy`` may come back in another layout and must still hit.
- A memmap always hashes as its array (joblib: only with ``coerce_mmap``).
- Functions are hashed by qualified name, bytecode, defaults and closure, so
  local functions and lambdas hash (joblib: a ``PicklingError``).

Not applicable: the speed test (timings belong in ``benchmarks/``, never in
tests), cached-method hashing through ``Memory`` (a tracking concern, covered
by tests/test_tracking.py), and ``hash_name`` (provstore has one algorithm,
:data:`provstore.hashing.ALGORITHM`).
"""

from __future__ import annotations

import collections
import gc
import io
import itertools
import multiprocessing
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from provstore.errors import UnsupportedTypeError
from provstore.hashing import SCHEME_VERSION, digest


class Holder:
    def __init__(self, state: int = 0) -> None:
        self.state = state

    def method(self, x: int) -> int:
        return x + self.state


TRIVIAL = [
    1, 2, 1.0, 2.0, 1 + 1j, 2.0 + 1j, "a", "b", (1,), (1, 1), [1], [1, 1],
    {1: 1}, {1: 2}, {2: 1}, None, gc.collect, [1].append,
    {"a", 1}, {"a", 1, ("a", 1)}, {"a": 1, 1: 2}, {"a": 1, 1: 2, "d": {"a": 1}},
]


def test_trivial_values_hash_alike_only_when_they_are_the_same() -> None:
    first = [digest(v) for v in TRIVIAL]
    again = [digest(v) for v in TRIVIAL]
    for (i, a), (j, b) in itertools.product(enumerate(first), enumerate(again)):
        assert (a == b) == (i == j), (TRIVIAL[i], TRIVIAL[j])


@pytest.mark.filterwarnings("ignore:provstore hashes")
def test_methods_hash_with_their_instance() -> None:
    buffer = io.StringIO("a")
    assert digest(buffer.flush) == digest(buffer.flush)
    assert digest(collections.deque(range(10)).extend) != digest(
        collections.deque(range(9)).extend)


@pytest.mark.filterwarnings("ignore:provstore hashes")
def test_bound_methods_of_equal_instances_hash_alike() -> None:
    assert digest(Holder().method) == digest(Holder().method)
    assert digest(Holder(1).method) != digest(Holder(2).method)


def _three_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    first = np.random.default_rng(0).random((10, 10))
    third = first.copy()
    third[0] += 1
    return first, first.copy(), third


def test_arrays_hash_by_value() -> None:
    arrays = _three_arrays()
    for a, b in itertools.product(arrays, repeat=2):
        assert (digest(a) == digest(b)) == bool(np.all(a == b))
    assert digest(arrays[0]) != digest(arrays[0].T)


def test_dicts_of_arrays_hash_by_value() -> None:
    a, b, c = _three_arrays()
    assert digest({1: a, 2: b}) == digest({1: b, 2: a})
    assert digest({1: a, 2: b}) != digest({1: b, 2: c})


@pytest.mark.parametrize("dtype", ["datetime64[s]", "timedelta64[D]"])
def test_time_arrays_differ_from_integers(dtype: str) -> None:
    assert digest(np.arange(10).astype(dtype)) != digest(np.arange(10))


def test_layout_does_not_count() -> None:
    a = np.asarray(np.arange(6000).reshape((1000, 2, 3)), order="F")[:, :1, :]
    assert digest(a) == digest(np.ascontiguousarray(a)) == digest(np.asfortranarray(a))
    c = np.random.default_rng(0).random((10, 10))
    assert digest(c) == digest(np.asfortranarray(c))


def test_memmap_hashes_as_its_array(tmp_path: Path) -> None:
    m = np.memmap(tmp_path / "m.bin", shape=(10, 10), mode="w+")
    m[:] = 7
    m.flush()
    assert digest(m) == digest(np.array(m))
    del m


def test_object_arrays_hash_by_elements() -> None:
    a = np.empty(6, dtype=object)
    b = np.empty(6, dtype=object)
    a[:] = [np.arange(i) for i in range(6)]
    b[:] = [np.arange(i) for i in range(6)]
    assert digest(a) == digest(b)
    b[5] = np.arange(4)
    assert digest(a) != digest(b)


def test_numpy_scalars_hash_by_value() -> None:
    assert digest(np.float64(2.0)) != digest(np.float64(3.0))


def test_zero_dimensional_arrays() -> None:
    assert digest(np.array(0)) == digest(np.array(0))
    assert digest(np.array(0)) != digest(np.array([0]))


NAMES = [f"#s{n}__c_maps.nii.gz" for n in (12069, 12158, 12258, 12277, 12300, 12401, 12430,
                                           13817, 13903, 13916, 13981, 13982, 13983)]


def test_dicts_and_sets_of_strings_ignore_order() -> None:
    forward = {name: [33] for name in NAMES}
    backward = {name: [33] for name in reversed(NAMES)}
    assert digest(forward) == digest(backward) == digest(pickle.loads(pickle.dumps(forward)))
    assert digest(set(NAMES)) == digest(set(reversed(NAMES)))


@pytest.mark.filterwarnings("ignore:provstore hashes")
def test_sets_of_decimals_ignore_order() -> None:
    assert digest({Decimal(0), Decimal("NaN")}) == digest({Decimal("NaN"), Decimal(0)})


def test_strings_hash_alike_whatever_their_history() -> None:
    word = "foo"
    a, b = {word: "bar"}, {word: "bar"}
    assert digest([a, b]) == digest([a, pickle.loads(pickle.dumps(b))])


def test_dtypes_hash_alike_after_a_pickle_round_trip() -> None:
    simple = np.dtype("f4")
    simple_back = pickle.loads(pickle.dumps(simple))
    assert simple_back is not simple
    assert digest([simple, simple]) == digest([simple, simple_back]) == digest(
        [simple_back, simple_back])
    nested = np.dtype([("name", np.str_, 16), ("grades", np.float64, (2,))])
    nested_back = pickle.loads(pickle.dumps(nested))
    assert digest(nested) == digest(nested_back) == digest(
        np.dtype([("name", np.str_, 16), ("grades", np.float64, (2,))]))
    assert digest(nested) != digest(simple)


# Digests of scheme 2. If one changes, the encoding changed: bump SCHEME_VERSION
# (so stores miss old keys instead of confusing them) and record the new ones.
GOLDEN = [
    ("This is a string to hash", "d759e495d26a9c9d6281a38abb43018f"),
    ("C'est l\xe9t\xe9", "b5b26abad46a787cdf5e949f9cb8aa3d"),
    ((123456, 54321, -98765), "039ee78c2a130a89f9933c305215ae87"),
    ({"abcde": 123, "sadfas": [-9999, 2, 3]}, "bf606e3fcae873f7b044e8a2810475c8"),
    (np.arange(100, dtype="<i8").reshape((10, 10)), "7272d28f21805feb7bce6a2ccc5f2e40"),
]


@pytest.mark.parametrize(("value", "expected"), GOLDEN)
def test_digests_stay_the_same_within_a_scheme(value: Any, expected: str) -> None:
    assert SCHEME_VERSION == 2
    assert digest(value) == expected


def _objects() -> list[Any]:
    rng = np.random.default_rng(42)
    square = np.arange(100, dtype="<i8").reshape((10, 10))
    return [
        rng.integers(-1000, 1000, size=50).astype("<i8"),
        tuple(rng.standard_normal(3).astype("<f4") for _ in range(5)),
        [rng.standard_normal(3).astype("<f4") for _ in range(5)],
        {-3333: rng.standard_normal((3, 5)).astype("<f4"),
         0: [rng.integers(10, size=20).astype("<i8"), rng.standard_normal(10).astype("<f4")]},
        square, np.asfortranarray(square), square[:, :2],
    ]


def test_digests_agree_across_processes() -> None:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as first, \
            ProcessPoolExecutor(1, mp_context=spawn) as second:
        for one, two in zip(_objects(), _objects()):
            here = digest(one)
            assert first.submit(digest, one).result() == here
            assert second.submit(digest, one).result() == here
            assert first.submit(digest, two).result() == here


def test_values_that_cannot_be_encoded_raise_a_clear_error() -> None:
    with pytest.warns(UserWarning, match="through pickle"), pytest.raises(
        UnsupportedTypeError, match="__provstore_hash__"
    ):
        digest(threading.Lock())
