"""A tracked call never returns a result made from other inputs, and never hangs.

Each test here is a case where two different calls used to share one key
(partials, bound methods, closures, estimators), where a result handed out
was shared mutable state, or where a call crashed or waited forever
(coroutines, generators, empty tuples, unstorable results, re-entrant calls).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import inspect
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler

import provstore
from provstore import tracking
from provstore.errors import ProvstoreError, UnsupportedTypeError
from sql import scalar, sql


class Log:
    """What the bodies ran with. Not a list: code versions read module-level
    lists by value, and a log that grows would change the code version."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def append(self, item: Any) -> None:
        self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other: object) -> bool:
        return self.items == other

    __hash__ = None  # type: ignore[assignment]


RUNS = Log()


@pytest.fixture(autouse=True)
def _reset_runs() -> None:
    RUNS.items.clear()


def combine(a: int, b: int, c: int = 0) -> int:
    RUNS.append((a, b, c))
    return a * 100 + b * 10 + c


def _statuses(ctx: provstore.Context) -> list[str]:
    return [r["status"] for r in sql(ctx.store.root, "SELECT status FROM calls ORDER BY id")]


# ------------------------------------------------------------------ partials
def test_partials_with_different_bound_arguments_do_not_share_results(
    ctx: provstore.Context,
) -> None:
    one = ctx.track(functools.partial(combine, 1))
    two = ctx.track(functools.partial(combine, 2))
    assert one(5) == 150
    assert two(5) == 250
    by_keyword = ctx.track(functools.partial(combine, c=7))
    assert by_keyword(1, 2) == 127
    assert ctx.track(functools.partial(combine, c=8))(1, 2) == 128
    assert len(RUNS) == 4
    assert one(5) == 150 and len(RUNS) == 4  # and each still hits


def test_a_tracked_partial_names_the_function_it_binds(ctx: provstore.Context) -> None:
    one = ctx.track(functools.partial(combine, 1))
    assert one.identity.endswith(":combine.<partial>")
    one(5)
    (row,) = sql(ctx.store.root, "SELECT function FROM calls")
    assert row["function"] == one.identity


# ------------------------------------------------------------- bound methods
class Smoother:
    """joblib's idiom: wrap the bound method in ``__init__``."""

    def __init__(self, ctx: provstore.Context, width: int) -> None:
        self.width = width
        self.run = ctx.track(self.run)

    def run(self, x: int) -> int:
        RUNS.append(("run", self.width, x))
        return x * self.width


def test_a_tracked_bound_method_is_keyed_on_its_instance_state(
    ctx: provstore.Context,
) -> None:
    assert Smoother(ctx, 2).run(3) == 6
    assert Smoother(ctx, 3).run(3) == 9  # another state: not the first result
    assert Smoother(ctx, 2).run(3) == 6  # equal state: a hit
    assert RUNS == [("run", 2, 3), ("run", 3, 3)]


class Opaque:
    def __init__(self, ctx: provstore.Context) -> None:
        self.lock = __import__("threading").Lock()  # no canonical value, not picklable
        self.step = ctx.track(self.step)

    def step(self, x: int) -> int:
        return x


def test_an_instance_whose_state_cannot_be_hashed_is_refused_clearly(
    ctx: provstore.Context,
) -> None:
    opaque = Opaque(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # hashing may warn before pickling
        with pytest.raises(UnsupportedTypeError) as err:
            opaque.step(1)
    message = str(err.value)
    assert "Opaque" in message and "__provstore_hash__" in message and "ignore=" in message
    assert sql(ctx.store.root, "SELECT id FROM calls") == []


def test_ignoring_self_shares_results_across_instances(ctx: provstore.Context) -> None:
    a = Smoother(ctx, 2)
    shared = ctx.track(Smoother.run.__get__(a), ignore=["self"])
    assert shared(4) == 8
    b = Smoother(ctx, 5)
    assert ctx.track(Smoother.run.__get__(b), ignore=["self"])(4) == 8  # asked for
    assert RUNS == [("run", 2, 4)]


def test_a_tracked_builtin_method_is_keyed_on_its_object(ctx: provstore.Context) -> None:
    assert ctx.track([2, 2, 3].count)(2) == 2
    assert ctx.track([2, 3].count)(2) == 1
    assert ctx.track([2, 2, 3].count)(2) == 2


def halve(x: float) -> float:
    return x / 2


def negate(x: float) -> float:
    return -x


class Scorer:
    def __init__(self, ctx: provstore.Context, transform: Any) -> None:
        self.ctx = ctx  # where results go: not state
        self.transform = transform  # a choice of behaviour: state
        self.score = ctx.track(self.score)

    def score(self, x: float) -> float:
        return float(self.transform(x))


class Settings(dict[str, float]):
    @provstore.track
    def scaled(self, x: float) -> float:
        RUNS.append(dict(self))
        return self["factor"] * x


def test_functions_kept_on_an_instance_and_dict_content_are_its_state(
    ctx: provstore.Context,
) -> None:
    assert Scorer(ctx, halve).score(4.0) == 2.0
    assert Scorer(ctx, negate).score(4.0) == -4.0
    assert Settings(factor=2.0).scaled(3.0) == 6.0
    assert Settings(factor=3.0).scaled(3.0) == 9.0
    assert len(RUNS) == 2


class Plain:
    """A class with plain attributes and no ``__provstore_hash__``."""

    def __init__(self, weight: float) -> None:
        self.weight = weight

    @provstore.track
    def predict(self, x: float) -> float:
        RUNS.append(("predict", self.weight))
        return self.weight * x

    @classmethod
    @provstore.track
    def build(cls, x: int) -> str:
        RUNS.append(("build", cls.__name__))
        return f"{cls.__name__}:{x}"

    @staticmethod
    @provstore.track
    def double(x: int) -> int:
        RUNS.append(("double", x))
        return 2 * x


class Derived(Plain):
    pass


def test_a_method_decorated_in_its_class_keys_self_by_state_without_pickle(
    ctx: provstore.Context,
) -> None:
    # pytest turns warnings into errors: a pickled `self` would fail here.
    assert Plain(2.0).predict(3.0) == 6.0
    assert Plain(3.0).predict(3.0) == 9.0
    assert Plain(2.0).predict(3.0) == 6.0
    assert RUNS == [("predict", 2.0), ("predict", 3.0)]


def test_classmethods_key_their_class_and_staticmethods_are_plain_functions(
    ctx: provstore.Context,
) -> None:
    assert Plain.build(1) == "Plain:1"
    assert Derived.build(1) == "Derived:1"  # another class: another call
    assert Plain.build(1) == "Plain:1"
    assert Plain.double(4) == 8 and Plain(1.0).double(4) == 8
    assert RUNS == [("build", "Plain"), ("build", "Derived"), ("double", 4)]


def test_tracking_a_classmethod_or_staticmethod_object_says_which_order_works() -> None:
    def body(x: int) -> int:
        return x

    for wrapper in (staticmethod(body), classmethod(body)):
        with pytest.raises(UnsupportedTypeError, match="below"):
            provstore.track(wrapper)


# ---------------------------------------------------------------- closures
def _closing_over(ctx: provstore.Context, value: Any) -> Any:
    def body(x: int) -> Any:
        RUNS.append(x)
        return [float(v) + x for v in value]

    return ctx.track(body)


@pytest.mark.parametrize("make", [
    lambda v: np.array([v, v]),
    lambda v: pd.Series([v, v]),
    lambda v: [v],
    lambda v: (np.array(v, dtype=np.float64),),
], ids=["array", "series", "list", "tuple-of-arrays"])
def test_closures_over_different_values_do_not_share_results(
    ctx: provstore.Context, make: Any,
) -> None:
    first = _closing_over(ctx, make(1))(1)
    second = _closing_over(ctx, make(2))(1)
    assert len(RUNS) == 2
    assert first != second
    _closing_over(ctx, make(1))(1)
    assert len(RUNS) == 2  # equal closed-over values: a hit


def test_closures_over_partials_and_functions_key_what_those_close_over(
    ctx: provstore.Context,
) -> None:
    def scaled_by(weights: np.ndarray) -> Any:
        scale = functools.partial(np.multiply, weights)

        def inner(x: float) -> Any:
            return scale(x)

        def body(x: float) -> list[float]:
            RUNS.append(x)
            return [float(v) for v in inner(x)]

        return ctx.track(body)

    assert scaled_by(np.array([1.0]))(2.0) == [2.0]
    assert scaled_by(np.array([3.0]))(2.0) == [6.0]
    assert scaled_by(np.array([1.0]))(2.0) == [2.0]
    assert len(RUNS) == 2


def test_closed_over_objects_count_by_class_and_data_can_be_ignored_by_name(
    ctx: provstore.Context,
) -> None:
    import threading

    lock = threading.Lock()  # no canonical value: only its class counts, like a global's
    weights = np.array([1.0])

    def guarded(x: int) -> float:
        with lock:
            RUNS.append(x)
            return float(weights[0]) * x

    assert ctx.track(guarded)(1) == 1.0  # no pickle, no warning
    ignoring = ctx.track(guarded, ignore=["weights"])
    ignoring(2)
    weights = np.array([5.0])  # rebinds the cell: a key change unless ignored
    assert ignoring(2) == 2.0 and len(RUNS) == 2
    assert ctx.track(guarded)(2) == 10.0
    with pytest.raises(provstore.InvalidNameError, match="closure variables"):
        ctx.track(guarded, ignore=["nope"])

    held = (threading.Lock(),)  # data that holds an object without a value: refused

    def holding(x: int) -> int:
        return len(held) + x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # hashing may warn before pickling
        with pytest.raises(UnsupportedTypeError, match=r"closes over <closure>\.held"):
            ctx.track(holding)(1)


def test_lambdas_with_other_bodies_or_captures_are_other_functions(
    ctx: provstore.Context,
) -> None:
    plus_one = ctx.track(lambda x: x + 1)
    plus_two = ctx.track(lambda x: x + 2)
    assert (plus_one(1), plus_two(1)) == (2, 3)
    offsets = [ctx.track(lambda x, k=k: x + k) for k in range(3)]  # defaults count too
    assert [f(10) for f in offsets] == [10, 11, 12]


# --------------------------------------------------------------- estimators
@provstore.track
def scaled_first(scaler: Any, x: np.ndarray) -> float:
    RUNS.append(scaler)
    if not hasattr(scaler, "mean_"):
        scaler = StandardScaler(**scaler.get_params()).fit(x)
    return float(scaler.transform(x)[0, 0])


def test_estimators_are_keyed_by_class_parameters_and_fitted_state_without_pickle(
    ctx: provstore.Context,
) -> None:
    x = np.array([[1.0], [2.0], [3.0]])
    assert scaled_first(StandardScaler(with_mean=True), x) < 0
    assert scaled_first(StandardScaler(with_mean=False), x) > 0
    scaled_first(StandardScaler(with_mean=True), x)
    assert len(RUNS) == 2  # equal parameters: a hit, no pickle warning
    fitted = StandardScaler().fit(x)
    scaled_first(fitted, x)  # fitted state differs from an unfitted scaler
    refitted = StandardScaler().fit(x * 10)
    scaled_first(refitted, x)  # so does another fit
    scaled_first(StandardScaler().fit(x), x)  # an equal fit hits
    assert len(RUNS) == 4
    key = scaled_first.key(StandardScaler(), x)
    assert key != scaled_first.key(StandardScaler(copy=False), x)


def test_pipelines_key_their_steps_and_get_params_without_deep_works(
    ctx: provstore.Context,
) -> None:
    from sklearn.pipeline import make_pipeline

    x = np.array([[1.0], [2.0], [3.0]])
    a = make_pipeline(StandardScaler(), StandardScaler(with_mean=False))
    b = make_pipeline(StandardScaler(), StandardScaler(with_mean=True))
    assert scaled_first.key(a, x) != scaled_first.key(b, x)  # steps hold estimators: no pickle
    assert scaled_first.key(a, x) == scaled_first.key(
        make_pipeline(StandardScaler(), StandardScaler(with_mean=False)), x)

    class Settings:
        def __init__(self, alpha: float) -> None:
            self.alpha = alpha

        def get_params(self) -> dict[str, float]:
            return {"alpha": self.alpha}

    assert scaled_first.key(Settings(1.0), x) != scaled_first.key(Settings(2.0), x)


# ------------------------------------------------------------------- scheme
def test_a_new_key_scheme_is_a_clean_miss(ctx: provstore.Context,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracking.CALL_SCHEME == "provstore-call/2"
    tracked = ctx.track(combine)
    tracked(1, 2)
    monkeypatch.setattr(tracking, "CALL_SCHEME", "provstore-call/1")
    tracked(1, 2)
    assert len(RUNS) == 2
    keys = {r["key"] for r in sql(ctx.store.root, "SELECT key FROM calls")}
    assert len(keys) == 2


# ---------------------------------------------------------- mutable results
@provstore.track
def frame(n: int) -> pd.DataFrame:
    RUNS.append(n)
    return pd.DataFrame({"a": np.arange(n, dtype=np.float64)})


@provstore.track
def same_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"a": np.arange(n, dtype=np.float64)})


@provstore.track
def mapping(n: int) -> dict[str, list[int]]:
    return {"a": list(range(n))}


@provstore.track
def items(n: int) -> list[Any]:
    return [{"k": i} for i in range(n)]


@provstore.track
def objects(n: int) -> np.ndarray:
    return np.array([[i] for i in range(n)] + [None], dtype=object)


def test_a_mutated_result_never_leaks_into_later_hits(ctx: provstore.Context) -> None:
    frame(3)
    hit = frame(3)
    hit.loc[0, "a"] = 99.0
    again = frame(3)
    assert again is not hit and again.loc[0, "a"] == 0.0
    assert same_frame(3).loc[0, "a"] == 0.0  # an equal output of another function
    computed = frame(4)  # a miss returns the computed object: the caller's own
    computed.loc[0, "a"] = 99.0
    assert frame(4).loc[0, "a"] == 0.0
    assert RUNS == [3, 4]


@pytest.mark.parametrize("func", [mapping, items, objects], ids=["dict", "list", "objects"])
def test_mutable_outputs_come_back_fresh_on_every_hit(ctx: provstore.Context,
                                                      func: Any) -> None:
    func(3)
    first = func(3)
    if isinstance(first, dict):
        first["a"].append(99)
    elif isinstance(first, list):
        first[0]["k"] = 99
    else:
        first[0] = [99]
    assert func(3) is not first
    assert hashing_equal(func(3), func.__wrapped__(3))


def hashing_equal(a: Any, b: Any) -> bool:
    from provstore import hashing

    return hashing.digest(a) == hashing.digest(b)


def test_reads_by_name_never_share_a_mutable_object(ctx: provstore.Context) -> None:
    ctx.frame_a = pd.DataFrame({"a": [1.0, 2.0]})
    first = ctx.frame_a
    first.loc[0, "a"] = 50.0
    assert ctx.frame_a.loc[0, "a"] == 1.0
    ctx.arr = np.arange(3.0)
    writable = ctx.get("arr", mmap_mode=None)
    writable[0] = 7.0
    assert ctx.get("arr", mmap_mode=None)[0] == 0.0
    assert ctx.arr[0] == 0.0


def test_read_only_results_keep_their_identity_and_link_lineage(
    ctx: provstore.Context,
) -> None:
    ctx.raw = np.arange(4.0)
    assert ctx.raw is ctx.raw  # a read-only map is safe to share
    tracked = ctx.track(np.cumsum)
    out = tracked(ctx.raw)
    ctx.total = tracked(out)
    call_id = scalar(ctx.store.root, "SELECT call_id FROM bindings WHERE name='total'")
    linked = scalar(ctx.store.root, "SELECT artifact_id FROM call_inputs WHERE call_id=:c",
                    {"c": call_id})
    assert linked is not None


# --------------------------------------------------------------- coroutines
@provstore.track
async def fetch(x: int) -> int:
    RUNS.append(x)
    await asyncio.sleep(0)
    return x * 3


def test_coroutine_functions_are_awaited_and_memoized(ctx: provstore.Context) -> None:
    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch(2)) == 6
    assert asyncio.run(fetch(2)) == 6
    assert RUNS == [2]
    assert _statuses(ctx) == ["done"]


def test_concurrent_awaits_of_one_key_compute_once(ctx: provstore.Context) -> None:
    async def both() -> list[int]:
        return list(await asyncio.gather(fetch(5), fetch(5)))

    assert asyncio.run(both()) == [15, 15]
    assert RUNS == [5]


# --------------------------------------------------------------- generators
def test_generator_functions_are_refused_when_decorating() -> None:
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    async def stream(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    for func in (numbers, stream):
        with pytest.raises(UnsupportedTypeError, match="list"):
            provstore.track(func)


# ------------------------------------------------------------ empty outputs
@provstore.track
def nothing(x: int) -> tuple[()]:
    RUNS.append(x)
    return ()


def test_an_empty_tuple_is_stored_and_comes_back(ctx: provstore.Context) -> None:
    assert nothing(1) == ()
    assert nothing(1) == ()
    assert RUNS == [1]
    assert _statuses(ctx) == ["done"]


# ------------------------------------------------- results that cannot store
@dataclasses.dataclass
class Unstorable:
    handle: Any


@provstore.track
def unstorable(x: int) -> Unstorable:
    RUNS.append(x)
    return Unstorable(lambda: x)  # a lambda: no backend can store it


def test_a_result_that_cannot_be_stored_fails_the_call_and_frees_its_key(
    ctx: provstore.Context,
) -> None:
    for _ in range(2):  # the second call claims the key at once: no lease is left
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # hashing may warn before pickling
            with pytest.raises(UnsupportedTypeError):
                unstorable(1)
    assert RUNS == [1, 1]
    assert _statuses(ctx) == ["failed", "failed"]
    assert scalar(ctx.store.root, "SELECT count(*) FROM leases") == 0
    error = scalar(ctx.store.root, "SELECT error FROM calls ORDER BY id LIMIT 1")
    assert "UnsupportedTypeError" in error


@provstore.track
def custom_object(x: int) -> Any:
    RUNS.append(x)
    return collections.deque([x])  # stored only by pickle


def test_a_safe_store_refusing_a_pickled_result_frees_the_key(store_dir: Path) -> None:
    provstore.open(store_dir)  # create it, then reopen it safe
    ctx = provstore.open(store_dir, safe=True)
    with pytest.raises(UnsupportedTypeError), ctx:
        custom_object(1)
    assert _statuses(ctx) == ["failed"]
    assert scalar(ctx.store.root, "SELECT count(*) FROM leases") == 0


@provstore.track
def masked(n: int) -> np.ma.MaskedArray:
    RUNS.append(n)
    return np.ma.masked_array(np.arange(float(n)), mask=np.arange(n) % 2 == 0)


def test_a_masked_array_result_keeps_its_mask(ctx: provstore.Context) -> None:
    # npy would drop the mask: a masked array goes to a backend that keeps it.
    first, again = masked(4), masked(4)
    assert RUNS == [4]
    for value in (first, again):
        assert isinstance(value, np.ma.MaskedArray)
        np.testing.assert_array_equal(value.mask, [True, False, True, False])


def test_a_safe_store_refuses_a_masked_result_rather_than_drop_its_mask(
    store_dir: Path,
) -> None:
    provstore.open(store_dir)
    ctx = provstore.open(store_dir, safe=True)
    with pytest.raises(UnsupportedTypeError), ctx:
        masked(3)
    assert _statuses(ctx) == ["failed"]
    assert scalar(ctx.store.root, "SELECT count(*) FROM leases") == 0


# ---------------------------------------------------------------- re-entry
@provstore.track(ignore=["depth"])
def reenter(x: int, depth: int = 0) -> int:
    RUNS.append(depth)
    if depth < 1:
        return reenter(x, depth=depth + 1)  # same key: x is all that counts
    return x


def test_a_call_reentering_its_own_key_raises_instead_of_waiting(
    ctx: provstore.Context,
) -> None:
    with pytest.raises(tracking.RecursiveCallError) as err:
        reenter(4)
    assert isinstance(err.value, ProvstoreError)
    assert "reenter" in str(err.value) and "its own call" in str(err.value)
    assert RUNS == [0]
    assert _statuses(ctx) == ["failed"]
    assert scalar(ctx.store.root, "SELECT count(*) FROM leases") == 0


@provstore.track(ignore=["depth"])
async def areenter(x: int, depth: int = 0) -> int:
    RUNS.append(depth)
    if depth < 1:
        return await areenter(x, depth=depth + 1)
    return x


def test_a_coroutine_reentering_its_own_key_raises_too(ctx: provstore.Context) -> None:
    with pytest.raises(tracking.RecursiveCallError, match="areenter"):
        asyncio.run(areenter(4))
    assert _statuses(ctx) == ["failed"]
    assert scalar(ctx.store.root, "SELECT count(*) FROM leases") == 0

