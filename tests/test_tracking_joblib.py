"""The behaviours joblib's ``Memory.cache`` is tested for, checked on ``track``.

Ported from the behaviours (not the code) of joblib's
``joblib/test/test_memory.py``, written for provstore:

- a cached function runs once per distinct argument ("lazy identity"), for
  plain functions, keyword parameters, lambdas and partials;
- a local function and a module-level one of the same name are different
  functions; two definitions of one name with other bodies do not share
  results, and neither do lambdas, including ``eval``'d ones whose source
  cannot be read (joblib can only warn about those collisions: provstore
  keys the code itself);
- no store at all means no memoizing (joblib's ``Memory(location=None)``);
- a mutable default the function mutates gives the next call another key;
- numpy arguments are keyed by content, and results come back as read-only
  memory maps from the first call on (joblib's ``mmap_mode='r'``);
- a raising call is not cached: it raises every time;
- ``ignore=`` leaves parameters out of the key; passing a parameter by
  position or by keyword, or leaving a default out, gives one key;
  ``*args``/``**kwargs`` and keyword-only parameters are keyed by name, and
  a keyword-only parameter passed by position is refused by Python itself;
- options can be given before decorating (``track(ignore=...)(f)``);
- a tracked function pickles (joblib's ``test_persistence``), a tracked
  partial too, with what it binds;
- editing a module file without reloading it changes nothing; reloading it
  with the same code (shifted lines) hits; reloading changed code computes;
  swapping ``__code__`` in memory computes;
- an argument that has no canonical value and cannot be pickled is refused
  with an error saying what to do.

Not ported, and why:

- ``call_and_shelve`` / ``MemorizedResult``: results are bound to names
  (``ctx.x = f(...)``) and linked by identity; there is no shelved handle;
- ``clear``, ``reduce_size``, ``get_items``, ``bytes_limit``: provstore keeps
  every result and old versions are removed by ``provstore gc`` (tested in
  test_maintenance.py);
- store backends, ``cachedir`` deprecations, ``func_code.py`` and directory
  layout, ``verbose`` output: joblib internals with no counterpart;
- "recompute after an error while loading results": a changed or truncated
  stored object raises ``CorruptObjectError`` instead of being recomputed
  silently (tested in test_store.py and by ``provstore verify``);
- races of ``Parallel`` workers persisting one output: provstore's leases make
  the call run once; tested with real joblib workers in test_mapping.py.
"""

from __future__ import annotations

import functools
import importlib
import pickle
import shutil
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import provstore
from provstore.errors import InvalidNameError, UnsupportedTypeError


class Log:
    """Counts body runs (not a list: code versions read module-level lists by value)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def append(self, item: Any) -> None:
        self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)


RUNS = Log()


@pytest.fixture(autouse=True)
def _reset_runs() -> None:
    RUNS.items.clear()


def f(x: int, y: int = 1) -> int:
    """A module-level function named like local ones below."""
    RUNS.append(("module f", x))
    return x**2 + y


def check_lazy_identity(func: Callable[[int], Any]) -> None:
    """Each argument computes once, then hits."""
    before = len(RUNS)
    for i in range(3):
        for _ in range(2):
            assert func(i) == i
            assert len(RUNS) == before + i + 1


def test_a_tracked_function_runs_once_per_argument(ctx: provstore.Context) -> None:
    def f(value: int) -> int:  # the name of the module-level f: another function
        RUNS.append(value)
        return value

    check_lazy_identity(ctx.track(f))
    module_f = ctx.track(globals()["f"])
    assert module_f(2) == 5 and RUNS.items[-1] == ("module f", 2)


def test_keyword_parameters_lambdas_and_partials_are_lazy(ctx: provstore.Context) -> None:
    def with_defaults(value: Any = None, other: int = 1) -> Any:
        RUNS.append(value)
        return value

    check_lazy_identity(ctx.track(with_defaults))
    assert ctx.track(with_defaults)(value=30, other=2) == 30

    def helper(x: int) -> int:
        RUNS.append(x)
        return x

    check_lazy_identity(ctx.track(lambda x: helper(x)))

    def pair(x: int, y: int) -> int:
        RUNS.append(y)
        return y

    check_lazy_identity(ctx.track(functools.partial(pair, 1)))


def test_definitions_with_one_name_and_other_bodies_do_not_collide(
    ctx: provstore.Context,
) -> None:
    @ctx.track
    def name_collision(x: int) -> int:
        return x

    first = name_collision

    @ctx.track
    def name_collision(x: int) -> int:  # the same name again: the point of the test
        return x + 1

    assert (first(1), name_collision(1)) == (1, 2)


def test_lambdas_do_not_collide_even_without_source(ctx: provstore.Context) -> None:
    a = ctx.track(lambda x: x)
    b = ctx.track(lambda x: x + 1)
    assert (a(0), b(1), a(1)) == (0, 2, 1)
    a1 = ctx.track(eval("lambda x: x"))  # no source file: keyed on the bytecode
    b1 = ctx.track(eval("lambda x: x+1"))
    assert (a1(1), b1(1), a1(0)) == (1, 2, 0)


def test_without_a_store_nothing_is_memoized(monkeypatch: pytest.MonkeyPatch) -> None:
    from provstore import ambient, tracking

    monkeypatch.setattr(ambient, "_last", [])
    monkeypatch.setattr(tracking, "_warned_untracked", set())

    def plain(value: int) -> int:
        RUNS.append(value)
        return value

    tracked = provstore.track(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "runs untracked", once
        for _ in range(4):
            tracked(1)
    assert len(RUNS) == 4


def test_a_mutated_default_is_another_argument(ctx: provstore.Context) -> None:
    def count_and_append(x: list[Any] = []) -> int:  # noqa: B006 - mutated on purpose
        count = len(x)
        x.append(None)
        return count

    tracked = ctx.track(count_and_append)
    assert tracked() == 0
    assert tracked() == 1  # the default is now [None]: another key


def test_numpy_arguments_hit_on_equal_content_and_return_read_only_maps(
    ctx: provstore.Context,
) -> None:
    @ctx.track
    def identity(a: np.ndarray) -> np.ndarray:
        RUNS.append(1)
        return a

    rng = np.random.RandomState(0)
    for i in range(3):
        a = rng.random_sample((10, 10))
        for _ in range(3):
            out = identity(a)
            np.testing.assert_array_equal(out, a)
            assert isinstance(out, np.memmap) and not out.flags.writeable
            assert len(RUNS) == i + 1


def test_a_raising_call_raises_every_time(ctx: provstore.Context) -> None:
    class MyError(Exception):
        pass

    @ctx.track
    def h(exc: int = 0) -> None:
        if exc:
            raise MyError

    h()
    for _ in range(3):
        with pytest.raises(MyError):
            h(1)


def test_ignored_parameters_positional_keywords_and_defaults_share_a_key(
    ctx: provstore.Context,
) -> None:
    @ctx.track(ignore=["y"])
    def z(x: int, y: int = 1) -> int:
        RUNS.append(x)
        return x

    z(0, y=1)
    z(0, y=1)
    z(0, y=2)
    z(0)
    assert len(RUNS) == 1
    with pytest.raises(InvalidNameError):
        ctx.track(ignore=["nope"])(z.__wrapped__)

    @ctx.track
    def plus_one(a: int) -> int:
        RUNS.append(a)
        return a + 1

    assert plus_one(1) == 2 and plus_one(a=1) == 2 and plus_one(a=2) == 3
    assert len(RUNS) == 3


def test_star_args_and_star_kwargs_are_keyed_by_value(ctx: provstore.Context) -> None:
    @ctx.track
    def varargs(*args: int, **kwargs: int) -> int:
        RUNS.append(args)
        return sum(args) + sum(kwargs.values())

    assert varargs(1, 2) == 3 and varargs(1, 2) == 3
    assert varargs(1, 2, 3) == 6
    assert varargs(a=1, b=2) == 3 and varargs(b=2, a=1) == 3
    assert len(RUNS) == 3


def func_with_kwonly_args(a: int, b: int, *, kw1: str | int = "kw1",
                          kw2: str | int = "kw2") -> tuple[Any, ...]:
    return a, b, kw1, kw2


def test_keyword_only_parameters(ctx: provstore.Context) -> None:
    tracked = ctx.track(func_with_kwonly_args)
    assert tracked(1, 2, kw1=3) == (1, 2, 3, "kw2")
    with pytest.raises(TypeError, match="positional"):
        tracked(1, 2, 3, kw2=4)
    tracked(1, 2, kw1=3, kw2=4)
    with pytest.raises(TypeError, match="positional"):
        tracked(1, 2, 3, kw2=4)  # still refused once the call is stored
    ignoring = ctx.track(func_with_kwonly_args, ignore=["kw2"])
    assert ignoring(1, 2, kw1=3, kw2=4) == (1, 2, 3, 4)
    assert ignoring(1, 2, kw1=3, kw2="ignored") == (1, 2, 3, 4)


def test_options_before_decorating_and_annotations(ctx: provstore.Context) -> None:
    decorate = provstore.track(ignore=["x"], version="1")

    @decorate
    def z(x: int) -> None:
        pass

    assert z.code_version.pinned == "1"

    @ctx.track
    def with_signature(a: int, b: float) -> float:
        return a + b

    assert with_signature(1, 2.0) == 3.0


@provstore.track
def squared(x: int) -> int:
    RUNS.append(x)
    return x * x


def test_tracked_functions_and_partials_pickle(ctx: provstore.Context) -> None:
    assert squared(3) == 9
    again = pickle.loads(pickle.dumps(squared))
    assert again is squared and again(3) == 9 and len(RUNS) == 1
    bound = ctx.track(functools.partial(func_with_kwonly_args, 1, kw1="k"))
    copy = pickle.loads(pickle.dumps(bound))
    assert copy(2) == (1, 2, "k", "kw2")
    assert copy.key(2) == bound.key(2)


# ---------------------------------------------------------- code changes
@pytest.fixture
def write_module(tmp_path: Path) -> Iterator[Callable[[str, bool], ModuleType]]:
    """Write ``tmp_joblib_<n>.py``; import (or reload) it when asked."""
    name = f"tmp_joblib_{tmp_path.name.replace('-', '_')}"
    sys.path.insert(0, str(tmp_path))
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True

    def write(source: str, reload: bool) -> ModuleType:
        (tmp_path / f"{name}.py").write_text(source)
        shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)
        importlib.invalidate_caches()
        if name in sys.modules and reload:
            return importlib.reload(sys.modules[name])
        return sys.modules.get(name) or importlib.import_module(name)

    yield write
    sys.dont_write_bytecode = dont_write
    sys.path.remove(str(tmp_path))
    sys.modules.pop(name, None)


def test_only_a_reloaded_code_change_recomputes(
    ctx: provstore.Context, write_module: Callable[[str, bool], ModuleType],
) -> None:
    content = "RUNS = []\n\ndef f(x):\n    RUNS.append(x)\n    return x\n"
    mod = write_module(content, True)
    tracked = ctx.track(mod.f)
    tracked(1)
    tracked(2)
    tracked(1)
    assert mod.RUNS == [1, 2]
    write_module("\n\n" + content, False)  # the file changes, the loaded code does not
    tracked(1)
    mod = write_module("\n\n" + content, True)  # reloaded: lines moved, same code
    ctx.track(mod.f)(1)
    assert mod.RUNS == []
    mod = write_module(content.replace("return x", "return x * 10"), True)
    assert ctx.track(mod.f)(1) == 10
    assert mod.RUNS == [1]


def _function_to_cache(a: int, b: int) -> int | None:
    return None


def _sum(a: int, b: int) -> int:
    return a + b


def _product(a: int, b: int) -> int:
    return a * b


def test_swapping_code_in_memory_recomputes(ctx: provstore.Context,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_function_to_cache, "__code__", _sum.__code__)
    tracked = ctx.track(_function_to_cache)
    assert tracked(1, 2) == 3 and tracked(1, 2) == 3
    monkeypatch.setattr(_function_to_cache, "__code__", _product.__code__)
    assert tracked(1, 2) == 2 and tracked(1, 2) == 2


def test_an_argument_without_a_canonical_value_is_refused_clearly(
    ctx: provstore.Context,
) -> None:
    @ctx.track
    def use(lock: Any) -> int:
        return 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # hashing may warn before pickling
        with pytest.raises(UnsupportedTypeError, match="__provstore_hash__"):
            use(threading.Lock())
