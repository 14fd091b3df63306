"""json, pickle and raw specifics, and the cost of importing the backends."""

from __future__ import annotations

import enum
import json
import pickle
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from provstore.backends import registry
from provstore.backends.json import MAX_INLINE_BYTES
from provstore.errors import BackendError, CorruptObjectError, UnsupportedTypeError

JSON = registry.get("json")
PICKLE = registry.get("pickle")
RAW = registry.get("raw")


class Color(enum.IntEnum):
    RED = 1


def _cycle() -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["self"] = d
    return d


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [
    (1, 2), {1: "a"}, {"a": (1,)}, np.float64(1.0), np.arange(2), OrderedDict(a=1), Color.RED,
    "\ud800", _cycle(), 10**5000, b"bytes", {1.5}, _deep(100_000),
], ids=lambda v: type(v).__name__)
def test_json_refuses_what_would_not_come_back_identical(value: Any) -> None:
    assert not JSON.can_save(value)
    with pytest.raises(UnsupportedTypeError):
        JSON.encode(value)


def test_json_inline_limit_is_on_the_compact_utf8_encoding() -> None:
    fits = "é" * ((MAX_INLINE_BYTES - 2) // 2)  # two bytes per character, plus the quotes
    assert JSON.inline_for(fits, {})
    assert len(JSON.encode(fits)[0]) <= MAX_INLINE_BYTES
    assert not JSON.inline_for(fits + "é", {})


@pytest.mark.parametrize("value", ["x" * MAX_INLINE_BYTES, list(range(MAX_INLINE_BYTES))],
                         ids=["str", "list"])
def test_big_json_values_go_to_json_files(value: Any, tmp_path: Path) -> None:
    assert JSON.can_save(value)
    assert registry.choose(value).name == "json"
    assert not JSON.inline_for(value, {})
    path = tmp_path / "big.json"
    meta = JSON.save(value, path)
    assert path.stat().st_size > MAX_INLINE_BYTES
    assert JSON.load(path, meta, mmap_mode=None) == value


def test_json_shared_sublists_are_fine() -> None:
    row = [0, 1]
    value = [row, row]
    assert JSON.decode(*JSON.encode(value)) == value


def test_json_decode_and_load_report_corruption(tmp_path: Path) -> None:
    with pytest.raises(CorruptObjectError):
        JSON.decode(b'{"a": ', {})
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"a": [1, 2.5, None]}), encoding="utf-8")
    assert JSON.load(path, {}, mmap_mode=None) == {"a": [1, 2.5, None]}
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(CorruptObjectError):
        JSON.load(path, {}, mmap_mode=None)


def test_json_takes_no_options() -> None:
    with pytest.raises(UnsupportedTypeError):
        JSON.encode({"a": 1}, indent=2)


def test_pickle_refuses_unpicklable_values_and_leaves_nothing(tmp_path: Path) -> None:
    for value in (lambda: 1, threading.Lock(), (i for i in range(2))):
        with pytest.raises(UnsupportedTypeError, match="cannot pickle"):
            PICKLE.save(value, tmp_path / "x.pkl")
        assert list(tmp_path.iterdir()) == []


def test_pickle_of_missing_code_is_not_called_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    # A pickle that names a module this environment does not have.
    path.write_bytes(b"\x80\x04cno_such_module_xyz\nThing\n)\x81.")
    with pytest.raises(BackendError, match="no_such_module_xyz"):
        PICKLE.load(path, {}, mmap_mode=None)


def test_pickle_metadata(tmp_path: Path) -> None:
    meta = PICKLE.save({1, 2}, tmp_path / "x.pkl")
    assert meta == {"protocol": pickle.HIGHEST_PROTOCOL, "type": "builtins.set"}


def test_raw_copies_bytes_and_keeps_a_plain_suffix(tmp_path: Path) -> None:
    source = tmp_path / "scan.Tar.GZ"
    source.write_bytes(b"\x00\x01payload")
    assert RAW.suffix_for(source, {}) == ".tar.gz"
    assert RAW.suffix_for(tmp_path / "odd name.tab separated", {}) == ""
    assert RAW.suffix_for(tmp_path / "data.v1.2.csv", {}) == ".v1.2.csv"
    assert RAW.suffix_for(tmp_path / "README", {}) == ""
    target = tmp_path / "store" / "obj.tar.gz"
    target.parent.mkdir()
    assert RAW.save(source, target) == {"name": "scan.Tar.GZ"}
    loaded = RAW.load(target, {}, mmap_mode=None)
    assert loaded == target and loaded.read_bytes() == b"\x00\x01payload"
    assert RAW.describe(source) == {"type": "file", "name": "scan.Tar.GZ", "size": 9}


@pytest.mark.parametrize("make", [lambda d: d, lambda d: d / "missing.bin", lambda d: str(d)])
def test_raw_refuses_what_is_not_a_regular_file(make: Any, tmp_path: Path) -> None:
    source = make(tmp_path)
    with pytest.raises(UnsupportedTypeError):
        RAW.save(source, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_registry_routes_suffixes_and_priorities() -> None:
    assert registry.for_suffix("a.NII.GZ").name == "nifti"
    assert registry.for_suffix("a.h5").name == "hdf5"
    assert registry.for_suffix("a.json").name == "json"
    assert registry.for_suffix("a.xyz").name == "raw"
    assert registry.choose({"a": 1}).name == "json"
    assert registry.choose(np.zeros(3)).name == "npy"
    assert registry.choose({"a": np.zeros(3)}).name == "hdf5"
    assert registry.choose({"a": {1, 2}}).name == "pickle"
    with pytest.raises(UnsupportedTypeError):
        registry.choose(threading.Lock(), allow_unsafe=False)


def test_importing_and_choosing_does_not_import_format_libraries() -> None:
    code = (
        "import sys, numpy as np\n"
        "from provstore.backends import registry\n"
        "for v in ({'a': 1}, np.zeros(3), {'w': np.zeros(2)}, [1, 2j], object()):\n"
        "    [b.can_save(v) for b in registry]\n"
        "print(sorted(m for m in ('tables', 'nibabel') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
