"""The shortcuts a tracked call's miss takes give what the general paths give.

A miss stores a small result without asking every backend, encodes JSON
columns once per kind of summary, and reads its claim in one statement on
SQLite's own connection; each is checked here against the path it skips.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import pytest

import provstore
from provstore import hashing
from provstore.backends.base import registry
from provstore.computing import params_text
from provstore.db import queries as q
from provstore.db.driver import transaction
from provstore.records import json_text
from provstore.saving import prepare

NUMBERS = [0, 7, -1, 2**63 - 1, -(2**63), 2**63, 10**400, True, False, None, 1.5, -0.0,
           float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("value", NUMBERS, ids=repr)
def test_a_number_is_prepared_as_the_backend_chosen_for_it_would(
        tmp_path: Path, value: Any) -> None:
    store = provstore.open(tmp_path / "store").store
    backend = registry.choose(value, allow_unsafe=not store.safe)
    inline, meta = backend.encode(value)
    p = prepare(store, value)
    assert (p.backend.name, p.inline, p.meta, p.summary, p.digest) == (
        backend.name, inline, meta, backend.describe(value), hashing.digest(value))
    assert p.size == len(inline) and p.suffix == "" and p.existing_id is None


def test_a_number_is_stored_and_read_back_exactly(tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "store")

    @ctx.track
    def same(x: Any) -> Any:
        return x

    for value in NUMBERS[:-3]:
        assert same(value) == value and type(same(value)) is type(value)
    assert math.isnan(same(float("nan"))) and same(float("inf")) == float("inf")


@pytest.mark.parametrize("value", [
    None, {}, {"type": "int"}, {"type": "str", "len": 3}, {"type": "ndarray", "shape": [2, 3]},
    {"type": "é"}, {"kind": "a", "type": "b"}])
def test_json_text_is_what_json_writes(value: dict[str, Any] | None) -> None:
    assert json_text(value) == json.dumps(value or {})
    assert json_text(value) == json.dumps(value or {})  # the cached text, the second time


def test_the_claim_read_on_the_driver_matches_sqlalchemy(tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "store")
    engine = ctx.store.engine
    expires = dt.datetime(2031, 5, 6, 7, 8, 9, 123456)
    transaction(engine, lambda tx: tx.execute(q.INSERT_LEASE, {
        "key": "k", "owner": "o", "fence": 3, "expires": expires, "host": "h", "pid": 1,
        "call_id": None}))
    for key in ("k", "none"):
        params = {"key": key, "code_digest": "absent"}
        ours = transaction(engine, lambda tx, p=params: tx.execute(q.CLAIM_STATE, p).first())
        theirs = ctx.store.query(q.CLAIM_STATE, params).one()
        assert tuple(ours) == tuple(theirs)
        assert ours._fields == tuple(theirs._fields)
    assert ours.key is None and ours.done is None and ours.code_known is False
    found = transaction(engine, lambda tx: tx.execute(q.CLAIM_STATE, {
        "key": "k", "code_digest": "absent"}).first())
    assert found.expires == expires and found.fence == 3


PARAMS = [{"a": 1, "b": 'say "hi" — ünïcode\n'}, {"é": -5, "x": None}, {"a": 1.5},
          {"a": True}, {"a": {"artifact": 3}}, {}, {"a": {"file": "/data/é.nii"}},
          {"a": {1: 2}}, {"a": [1, "x"]}, {"a": 10**30}]


@pytest.mark.parametrize("params", PARAMS, ids=repr)
def test_a_calls_params_are_the_json_of_its_arguments(params: dict[str, Any]) -> None:
    assert params_text(params) == json.dumps(params)


def test_a_miss_records_its_arguments_readably(tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "store")

    @ctx.track
    def greet(name: str, times: int) -> str:
        return name * times

    assert greet('Zoë "the" first', 2) == 'Zoë "the" first' * 2
    [call] = ctx.calls()
    assert call.params == {"name": 'Zoë "the" first', "times": 2}
