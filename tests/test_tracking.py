"""Tracked functions in one process: keys, hits, misses, code versions, linking."""

from __future__ import annotations

import dataclasses
import pickle
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import provstore
from provstore.errors import InvalidNameError
from sql import scalar, sql

CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


@provstore.track
def scale(x: Any, factor: float = 2.0) -> Any:
    """Multiply by a factor."""
    CALLS.append("scale")
    return x * factor


@provstore.track
def split(x: np.ndarray) -> tuple[np.ndarray, float]:
    CALLS.append("split")
    return x[:2], float(x.sum())


@provstore.track(ignore=["verbose"])
def noisy(x: int, verbose: bool = False) -> int:
    CALLS.append("noisy")
    return x + 1


@provstore.track
def describe(value: Any) -> str:
    CALLS.append("describe")
    return type(value).__name__


@provstore.track
def fails(x: int) -> int:
    CALLS.append("fails")
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x


def _calls_table(ctx: provstore.Context) -> list[dict[str, Any]]:
    return sql(ctx.store.root, "SELECT * FROM calls ORDER BY id")


def test_a_hit_runs_nothing_and_returns_the_stored_value(ctx: provstore.Context) -> None:
    first = scale(np.arange(4.0), 3.0)
    again = scale(np.arange(4.0), 3.0)
    assert CALLS == ["scale"]
    np.testing.assert_array_equal(again, np.arange(4.0) * 3)
    assert isinstance(first, np.memmap) and not first.flags.writeable  # miss looks like a hit
    np.testing.assert_array_equal(first, again)


def test_defaults_and_keywords_give_the_same_key(ctx: provstore.Context) -> None:
    scale(5)
    scale(5, 2.0)
    scale(x=5, factor=2.0)
    assert CALLS == ["scale"]
    assert scale.key(5) == scale.key(x=5, factor=2.0)
    scale(5, 2.5)
    assert CALLS == ["scale", "scale"]


def test_ignored_arguments_do_not_count(ctx: provstore.Context) -> None:
    assert noisy(1, verbose=True) == 2
    assert noisy(1, verbose=False) == 2
    assert CALLS == ["noisy"]
    with pytest.raises(InvalidNameError, match="not parameters"):
        provstore.track(lambda a: a, ignore=["b"])


def test_recompute_and_is_cached(ctx: provstore.Context) -> None:
    assert not scale.is_cached(7)
    scale(7)
    assert scale.is_cached(7)
    scale.recompute(7)
    assert CALLS == ["scale", "scale"]
    statuses = [r["status"] for r in _calls_table(ctx)]
    assert statuses == ["done", "done"]


def test_tuple_outputs_are_stored_one_artifact_each(ctx: provstore.Context) -> None:
    head, total = split(np.arange(5.0))
    ctx.head, ctx.total = head, total
    assert total == 10.0
    again = split(np.arange(5.0))
    assert isinstance(again, tuple) and CALLS == ["split"]
    h_head, h_total = ctx.history("head"), ctx.history("total")
    assert h_head.latest.format == "npy" and h_total.latest.format == "json"
    assert h_head.latest.artifact_id != h_total.latest.artifact_id
    outputs = [(r["position"], r["artifact_id"])
               for r in sql(ctx.store.root, "SELECT position, artifact_id FROM call_outputs")]
    assert sorted(outputs) == [(0, h_head.latest.artifact_id), (1, h_total.latest.artifact_id)]


def test_binding_a_result_links_the_call_without_saving_again(ctx: provstore.Context) -> None:
    ctx.raw = np.arange(10.0)
    before = len(list((ctx.store.root / "objects").rglob("*.npy")))
    ctx.scaled = scale(ctx.raw)
    assert len(list((ctx.store.root / "objects").rglob("*.npy"))) == before + 1
    call_id = scalar(ctx.store.root, "SELECT call_id FROM bindings WHERE name='scaled'")
    inputs = [(r["name"], r["artifact_id"]) for r in sql(
        ctx.store.root, "SELECT name, artifact_id FROM call_inputs WHERE call_id = :id",
        {"id": call_id})]
    assert call_id is not None
    assert ("x", ctx.history("raw").latest.artifact_id) in inputs


def test_stored_arguments_are_keyed_without_rehashing(ctx: provstore.Context,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ctx.big = np.random.default_rng(0).random(100_000)
    big = ctx.big
    scale(big)
    from provstore import hashing

    def refuse(*_: object) -> str:
        raise AssertionError("a stored argument was hashed again")

    monkeypatch.setattr(hashing, "_feed_array", refuse)
    scale(big)  # known through the identity map: no hashing
    assert CALLS == ["scale"]


def test_equal_values_hit_whether_stored_or_in_memory(ctx: provstore.Context) -> None:
    data = np.arange(100.0)
    ctx.data = data
    scale(ctx.data)
    scale(data.copy())
    assert CALLS == ["scale"]


@dataclasses.dataclass
class Params:
    alpha: float
    tags: list[str]


class Custom:
    def __init__(self, key: str) -> None:
        self.key = key

    def __provstore_hash__(self) -> str:
        return self.key


CANONICAL = [
    (1, 1), (1.5, 1.5), ("s", "s"), (b"b", b"b"), (None, None), (True, True),
    ((1, 2), (1, 2)), ([1, [2]], [1, [2]]), ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
    ({3, 1, 2}, {1, 2, 3}), (np.arange(3), np.arange(3)), (np.float32(2), np.float32(2)),
    (Params(0.1, ["x"]), Params(0.1, ["x"])), (Custom("k"), Custom("k")),
    (pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"a": [1, 2]})),
    (pd.Series([1.0, 2.0], name="s"), pd.Series([1.0, 2.0], name="s")),
    (nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)),
     nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4))),
]


@pytest.mark.parametrize(("a", "b"), CANONICAL,
                         ids=[type(a).__name__ for a, _ in CANONICAL])
def test_every_canonical_type_hits_on_equal_values(ctx: provstore.Context, a: Any,
                                                   b: Any) -> None:
    describe(a)
    describe(b)
    assert CALLS == ["describe"]


@pytest.mark.parametrize(
    ("a", "b"),
    [(1, 1.0), (1, True), ((1,), [1]), (np.zeros(2, "<f8"), np.zeros(2, ">f8")),
     (pd.DataFrame({"a": [1]}), pd.DataFrame({"b": [1]})), (Custom("k"), Custom("j"))],
)
def test_different_values_miss(ctx: provstore.Context, a: Any, b: Any) -> None:
    describe(a)
    describe(b)
    assert CALLS == ["describe", "describe"]


def test_file_arguments_are_keyed_on_content(ctx: provstore.Context, tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("same")
    b.write_text("same")
    describe(provstore.File(a))
    describe(provstore.File(b))  # another name, same bytes: a hit
    assert CALLS == ["describe"]
    b.write_text("changed")
    describe(provstore.File(b))
    assert CALLS == ["describe", "describe"]
    paths = [r["file_path"]
             for r in sql(ctx.store.root, "SELECT file_path FROM call_inputs ORDER BY call_id")]
    assert paths == [str(a), str(b)]


def test_unknown_types_warn_once_and_still_key(ctx: provstore.Context) -> None:
    class Opaque:
        pass

    with pytest.raises(provstore.UnsupportedTypeError), pytest.warns(UserWarning,
                                                                        match="pickle"):
        describe(Opaque())  # local classes cannot be pickled: a clear error


def test_failures_are_recorded_and_retried(ctx: provstore.Context) -> None:
    with pytest.raises(ValueError, match="negative"):
        fails(-1)
    with pytest.raises(ValueError, match="negative"):
        fails(-1)
    assert CALLS == ["fails", "fails"]
    rows = _calls_table(ctx)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "negative input -1" in rows[0]["error"]
    assert scalar(ctx.store.root, "SELECT count(*) FROM leases") == 0


def test_calls_record_function_code_params_run_and_timing(ctx: provstore.Context) -> None:
    scale(np.arange(3.0), 4.0)
    (row,) = _calls_table(ctx)
    assert row["function"].endswith(":scale")
    assert row["status"] == "done" and row["duration"] >= 0 and row["finished"] is not None
    assert row["run_id"] is not None and row["fence"] == 1
    import json

    params = json.loads(row["params"])
    assert params["factor"] == 4.0 and params["x"]["shape"] == [3]
    source = scalar(ctx.store.root, "SELECT source FROM code_versions WHERE digest = :digest",
                    {"digest": row["code_digest"]})
    assert "x * factor" in source and "Multiply" not in source  # docstring stripped


def test_rebinding_a_hit_adds_no_version(ctx: provstore.Context) -> None:
    ctx.raw = np.arange(3.0)
    with ctx.scope(subject="01"):
        ctx.smoothed = scale(ctx.raw)
        ctx.smoothed = scale(ctx.raw)
        assert len(ctx.history("smoothed").versions) == 1
    assert CALLS == ["scale"]


def test_wrappers_keep_name_doc_signature_and_pickle_by_reference() -> None:
    assert scale.__name__ == "scale"
    assert scale.__doc__ == "Multiply by a factor."
    import inspect

    assert list(inspect.signature(scale).parameters) == ["x", "factor"]
    assert pickle.loads(pickle.dumps(scale)) is scale


def test_provstore_track_records_into_the_active_context(tmp_path: Path) -> None:
    a = provstore.open(tmp_path / "a")
    b = provstore.open(tmp_path / "b")  # opened last: the default
    scale(11)
    with a:
        scale(12)
    assert [r["function"].split(":")[1] for r in _calls_table(b)] == ["scale"]
    assert len(_calls_table(a)) == 1


def test_without_any_store_tracked_functions_run_plainly(monkeypatch:
                                                         pytest.MonkeyPatch) -> None:
    from provstore import ambient, tracking

    monkeypatch.setattr(ambient, "_last", [])
    monkeypatch.setattr(tracking, "_warned_untracked", set())
    with pytest.warns(UserWarning, match="no provstore store is open"):
        assert noisy(1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert noisy(2) == 3  # warned once only
    assert CALLS == ["noisy", "noisy"]


def test_ctx_track_binds_a_store_and_wraps_library_functions(tmp_path: Path) -> None:
    a = provstore.open(tmp_path / "a")
    provstore.open(tmp_path / "b")
    convolve = a.track(np.convolve)
    out = convolve(np.ones(3), np.ones(2))
    np.testing.assert_array_equal(out, np.convolve(np.ones(3), np.ones(2)))
    convolve(np.ones(3), np.ones(2))
    (row,) = _calls_table(a)
    assert "convolve" in row["function"]
    cv = convolve.code_version
    assert cv.deps.get("dist:numpy") == np.__version__


# --------------------------------------------------------------- code edits
PIPELINE = '''
import provstore
RUNS = []
SCALE = {scale}

def helper(x):
    return x * SCALE  {comment}

def inner(x):
    return helper(x) + {offset}

@provstore.track{pin}
def step(x):
    """{doc}"""
    RUNS.append(x)
    return inner(x)
'''


def _pipeline(**changes: Any) -> str:
    values = {"scale": 2, "comment": "", "offset": 1, "pin": "", "doc": "Step."}
    values.update(changes)
    return PIPELINE.format(**values)


@pytest.mark.parametrize(
    ("change", "recomputes"),
    [
        ({"comment": "# a comment"}, False),
        ({"doc": "Another docstring."}, False),
        ({"scale": 3}, True),  # a constant read by a helper
        ({"offset": 5}, True),  # a helper's helper... here the helper of step
    ],
)
def test_edits_recompute_exactly_when_behaviour_can_change(
    ctx: provstore.Context, module_factory: Callable[[str], ModuleType],
    change: dict[str, Any], recomputes: bool,
) -> None:
    mod = module_factory(_pipeline())
    assert mod.step(10) == 21
    assert mod.RUNS == [10]
    mod = module_factory(_pipeline(**change))  # RUNS is reset by the reload
    mod.step(10)
    assert ([10] if recomputes else []) == mod.RUNS


def test_reverting_code_hits_the_old_results_again(
    ctx: provstore.Context, module_factory: Callable[[str], ModuleType]
) -> None:
    module_factory(_pipeline()).step(1)
    module_factory(_pipeline(scale=7)).step(1)
    mod = module_factory(_pipeline())
    mod.step(1)
    assert mod.RUNS == []


def test_a_version_pin_ignores_edits_until_it_changes(
    ctx: provstore.Context, module_factory: Callable[[str], ModuleType]
) -> None:
    module_factory(_pipeline(pin='(version="1")')).step(1)
    mod = module_factory(_pipeline(pin='(version="1")', scale=9))
    mod.step(1)
    assert mod.RUNS == []  # pinned: the edit does not count
    mod = module_factory(_pipeline(pin='(version="2")', scale=9))
    mod.step(1)
    assert mod.RUNS == [1]


def test_a_lease_whose_owner_died_on_this_host_is_taken_over_at_once(
    ctx: provstore.Context,
) -> None:
    import datetime as dt
    import socket
    import subprocess

    from provstore.runs import utcnow

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    key = scale.key(41)
    sql(ctx.store.root,
        "INSERT INTO leases (key, owner, fence, expires, host, pid, call_id) "
        "VALUES (:key, 'crashed-owner', 1, :expires, :host, :pid, NULL)",
        {"key": key, "expires": str(utcnow() + dt.timedelta(hours=1)),
         "host": socket.gethostname(), "pid": int(dead.stdout)}, write=True)
    assert scale(41) == 82  # no hour-long wait: the owner is gone
    (row,) = _calls_table(ctx)
    assert row["takeover_of"] == "crashed-owner" and row["fence"] == 2


class Model:
    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __provstore_hash__(self) -> float:
        return self.weight

    @provstore.track
    def predict(self, x: float) -> float:
        CALLS.append("predict")
        return self.weight * x


def test_tracked_methods_bind_self_and_keep_their_tools(ctx: provstore.Context) -> None:
    model = Model(2.0)
    assert model.predict(3.0) == 6.0
    assert model.predict(3.0) == 6.0
    assert Model(3.0).predict(3.0) == 9.0
    assert CALLS == ["predict", "predict"]
    assert model.predict.is_cached(3.0)
    assert model.predict.key(3.0) != Model(3.0).predict.key(3.0)
    assert model.predict.recompute(3.0) == 6.0
    assert CALLS == ["predict", "predict", "predict"]


def test_literal_arguments_do_not_link_to_unrelated_values(ctx: provstore.Context) -> None:
    ctx.threshold = 5  # stored, but never read in this process
    scale(np.arange(3.0), 5)
    links = sql(ctx.store.root, "SELECT name, artifact_id FROM call_inputs "
                "WHERE name='factor'")
    assert links == [{"name": "factor", "artifact_id": None}]
    assert scale(ctx.threshold, 5) is not None  # read from the store: now it links
    linked = scalar(ctx.store.root, "SELECT artifact_id FROM call_inputs WHERE name='x' "
                    "ORDER BY call_id DESC LIMIT 1")
    assert linked == ctx.history("threshold").latest.artifact_id


def test_an_overlong_version_pin_is_refused_when_decorating() -> None:
    # Checked before any call runs: the database column is bounded, and a
    # failure at commit time would throw away the computed result.
    with pytest.raises(ValueError, match="at most 255 characters"):
        provstore.track(version="x" * 256)(lambda a: a)


def test_a_long_call_keeps_its_lease_renewed(ctx: provstore.Context, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A 0.6 s lease and a 2 s body: without renewal, the second caller would take
    # the expired lease over and run the body again.
    monkeypatch.setenv("PROVSTORE_LEASE_SECONDS", "0.6")
    log = tmp_path / "log"

    @ctx.track
    def slow(x: int) -> int:
        with open(log, "a") as f:
            f.write("x")
        time.sleep(2.0)
        return x + 1

    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(slow(1)))
    first.start()
    time.sleep(0.3)
    results.append(slow(1))  # waits for the holder, whose lease stays alive
    first.join()
    assert results == [2, 2] and log.read_text() == "x"
