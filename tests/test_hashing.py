"""Canonical hashing: deterministic across processes, exact, type-tagged."""

from __future__ import annotations

import collections
import copy
import dataclasses
import enum
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provstore.errors import UnsupportedTypeError
from provstore.files import File
from provstore.hashing import Hasher, array_digest, digest, feed, file_digest

VALUES = [
    None, True, False, 0, 1, -1, 2**100, 0.0, -0.0, 1.5, float("nan"), 1 + 2j, "", "naïve Δ",
    b"", b"\x00", (), (1,), [1], {"a": 1}, {1: "a"}, {1, 2}, frozenset({1}),
    np.arange(3), np.arange(3, dtype=np.int32), np.float64(1.5), np.int64(1),
]


def test_distinct_values_have_distinct_digests() -> None:
    digests = [digest(v) for v in VALUES]
    assert len(set(digests)) == len(digests)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ({1: "x", "y": 2}, {"y": 2, 1: "x"}),
        ({3, 1, 2}, {2, 3, 1}),
        (np.arange(6).reshape(2, 3), np.asfortranarray(np.arange(6).reshape(2, 3))),
        (np.arange(10)[::2], np.array([0, 2, 4, 6, 8])),
    ],
)
def test_equal_values_hash_alike(a: object, b: object) -> None:
    assert digest(a) == digest(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, 1.0), (1, True), ("1", 1), (b"a", "a"), ((1, 2), [1, 2]), ([[1], 2], [[1, 2]]),
        (np.zeros(2, "<f8"), np.zeros(2, ">f8")), (np.zeros((2, 3)), np.zeros((3, 2))),
        (np.zeros(4, np.int32), np.zeros(2, np.int64)), ({"a": (1,)}, {"a": [1]}),
    ],
)
def test_different_values_hash_differently(a: object, b: object) -> None:
    assert digest(a) != digest(b)


def test_digests_are_stable_across_processes() -> None:
    code = (
        "import numpy as np; from provstore.hashing import digest; "
        "print(digest({'b': [1, 2.5, 'x'], 'a': np.arange(5), 's': {3, 1}}))"
    )
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONHASHSEED": seed, "PATH": ""}, check=True).stdout
        for seed in ("1", "2", "3")
    }
    assert len(runs) == 1


def test_array_digest_covers_every_byte_of_large_arrays() -> None:
    a = np.zeros(3_000_000)
    before = array_digest(a)
    a[-1] = 1e-300
    assert array_digest(a) != before
    f = np.asfortranarray(np.random.default_rng(0).random((3000, 700)))
    assert array_digest(f) == array_digest(np.ascontiguousarray(f))


def test_dataclasses_and_custom_hash() -> None:
    @dataclasses.dataclass
    class P:
        a: int
        b: list[int]

    class Custom:
        def __init__(self, key: str) -> None:
            self.key = key

        def __provstore_hash__(self) -> str:
            return self.key

    assert digest(P(1, [2])) == digest(P(1, [2]))
    assert digest(P(1, [2])) != digest(P(1, [3]))
    assert digest(Custom("a")) == digest(Custom("a")) != digest(Custom("b"))


class Opaque:
    def __init__(self, v: int) -> None:
        self.v = v


def test_unknown_types_fall_back_to_pickle_with_one_warning() -> None:
    with pytest.warns(UserWarning, match="through pickle"):
        first = digest(Opaque(1))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert digest(Opaque(1)) == first  # no second warning
        assert digest(Opaque(2)) != first


def test_unpicklable_unknown_types_raise_a_clear_error() -> None:
    class Local:
        pass

    with pytest.warns(UserWarning, match="through pickle"), pytest.raises(
        UnsupportedTypeError, match="__provstore_hash__"
    ):
        digest(Local())


def test_file_digest_streams_and_files_hash_by_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    payload = np.random.default_rng(0).bytes(20_000_000)
    a.write_bytes(payload)
    b.write_bytes(payload)
    assert file_digest(a) == file_digest(b)
    assert digest(File(a)) == digest(File(b))
    b.write_bytes(payload[:-1] + b"\x00")
    assert digest(File(b)) != digest(File(a))


# ------------------------------------------------------------- properties

class Mode(enum.IntEnum):
    ON = 1
    OFF = 0


class Kind(enum.Enum):
    A = 1
    B = "1"


class Span(typing.NamedTuple):
    lo: int
    hi: int


_keys = st.text(max_size=4) | st.integers()
_leaves = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63)
    | st.floats() | st.complex_numbers() | st.text(max_size=6) | st.binary(max_size=6)
    | st.binary(max_size=6).map(bytearray) | st.sampled_from(list(Mode) + list(Kind))
    | st.builds(Span, st.integers(), st.integers())
)
_values = st.recursive(_leaves, lambda inner: (
    st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(_keys, inner, max_size=4)
    | st.dictionaries(st.text(max_size=4), inner, max_size=4).map(collections.OrderedDict)
    | st.frozensets(_keys, max_size=4) | st.sets(_keys, max_size=4)
), max_leaves=12)


def _same(a: object, b: object) -> bool:
    """Equal as values of one exact type: floats by bits (every NaN alike)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return (a != a and b != b) or struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, complex) and isinstance(b, complex):
        return _same(a.real, b.real) and _same(a.imag, b.imag)
    if isinstance(a, collections.OrderedDict) and isinstance(b, collections.OrderedDict):
        return _same(list(a.items()), list(b.items()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_values, _values)
def test_digests_agree_exactly_when_values_are_the_same(a: object, b: object) -> None:
    assert (digest(a) == digest(b)) == _same(a, b)


def _cousins(value: object) -> list[object]:
    """Values equal or close to *value* as Python objects, of another type or sign."""
    out: list[object] = []
    if type(value) is int and value in (0, 1):
        out.append(Mode(value))
    if type(value) is float and value == 0:
        out.append(-value)
    if isinstance(value, tuple):
        out.append(list(value))
    if type(value) is tuple and len(value) == 2 and all(type(v) is int for v in value):
        out.append(Span(*value))
    if type(value) is list:
        out.append(tuple(value))
    converted: dict[type, typing.Callable[[typing.Any], object]] = {
        bytes: bytearray, bytearray: bytes, set: frozenset, frozenset: set}
    if type(value) in converted:
        out.append(converted[type(value)](value))
    if type(value) is dict and all(type(k) is str for k in value):
        out.append(collections.OrderedDict(value))
    return out


@settings(max_examples=300)
@given(_values)
def test_near_values_of_another_type_never_share_a_digest(value: object) -> None:
    for cousin in _cousins(value):
        assert digest(cousin) != digest(value)
        assert digest([cousin]) != digest([value])
        assert digest({"k": cousin}) != digest({"k": value})


@settings(max_examples=200)
@given(_values)
def test_copies_hash_alike(value: object) -> None:
    reloaded = pickle.loads(pickle.dumps(value))
    assert digest(value) == digest(copy.deepcopy(value)) == digest(reloaded)


_WORKER = """
import json, sys
from provstore.hashing import digest
make = {"set": set, "frozenset": frozenset, "dict": lambda items: dict(items)}
for line in sys.stdin:
    kind, items = json.loads(line)
    print(digest(make[kind](items if kind != "dict" else [tuple(p) for p in items])), flush=True)
"""


@pytest.fixture(scope="module")
def seeded_workers() -> typing.Iterator[list[subprocess.Popen[str]]]:
    """Two live interpreters with different hash seeds, digesting what they are sent."""
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONHASHSEED": seed})
               for seed in ("11", "12345")]
    yield workers
    for w in workers:
        w.communicate(timeout=30)  # closes its pipes and waits


_strings = st.text(max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["set", "frozenset", "dict"]), st.lists(_strings, max_size=12, unique=True),
       st.randoms())
def test_digests_do_not_depend_on_the_hash_seed(seeded_workers: list[subprocess.Popen[str]],
                                                kind: str, strings: list[str],
                                                rnd: random.Random) -> None:
    items: list[typing.Any] = [[s, i] for i, s in enumerate(strings)] if kind == "dict" else strings
    here = {"set": set, "frozenset": frozenset}.get(kind, dict)(
        [tuple(p) for p in items] if kind == "dict" else items)
    rnd.shuffle(items)  # the workers build it in another insertion order
    line = json.dumps([kind, items]) + "\n"
    answers = set()
    for w in seeded_workers:
        assert w.stdin is not None and w.stdout is not None
        w.stdin.write(line)
        w.stdin.flush()
        answers.add(w.stdout.readline().strip())
    assert answers == {digest(here)}


_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**64)
            | st.floats() | st.text() | st.binary())


@given(_scalars)
def test_the_scalar_fast_path_streams_what_feed_streams(value: object) -> None:
    # digest() hashes exact scalars in one call; inside containers they go
    # through feed(). Both must produce the same bytes.
    h = Hasher()
    feed(h, value)
    assert digest(value) == h.hexdigest()
