"""User objects in HDF5 without pickle: rebuilt from state, trusted under safe=True."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import tables
from store_files import only_file, stored_files

import provstore
from provstore.backends import objects, registry
from provstore.errors import BackendError, UnsafeLoadError
from provstore.testing import BackendConformance, assert_values_equal

BACKEND = registry.get("objects")
# Hashing attrs and plain classes goes through pickle (provstore.hashing warns once per
# type); storing them is what these tests are about.
HASHED_BY_PICKLE = pytest.mark.filterwarnings("ignore:provstore hashes .* through pickle")


# ------------------------------------------------------------------ classes for the samples
@dataclasses.dataclass
class Point:
    x: float
    label: str


@dataclasses.dataclass
class Model:
    weights: np.ndarray
    points: list[Point]
    meta: dict[str, Any]
    shape: tuple[int, int] = (0, 0)


@dataclasses.dataclass(frozen=True)
class Frozen:
    name: str
    values: np.ndarray


@dataclasses.dataclass(slots=True)
class Slotted:
    a: int
    b: Any


@attrs.define
class AttrsModel:
    mean: np.ndarray
    inner: Point
    tags: list[str] = attrs.Factory(list)


@attrs.frozen
class AttrsFrozen:
    n: int


class Plain:
    """__init__ needs arguments and has side effects: loading must not call it."""

    calls = 0

    def __init__(self, path: str) -> None:
        Plain.calls += 1
        self.path = path
        self.cache = {"sizes": np.arange(3, dtype=">i2")}


class WithState:
    """State through __getstate__/__setstate__ (a derived field is not stored)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.total = float(data.sum())

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.data = state["data"]
        self.total = float(self.data.sum())


class OnlySlots:
    __slots__ = ("left", "right")

    def __init__(self, left: Any, right: Any) -> None:
        self.left, self.right = left, right


SAMPLE_CLASSES = [Point, Model, Frozen, Slotted, AttrsModel, AttrsFrozen, Plain, WithState,
                  OnlySlots]


def samples() -> list[Any]:
    rng = np.random.default_rng(5)
    return [
        Point(1.5, "naïve Δ"),
        Model(rng.normal(size=(3, 4)), [Point(0.0, ""), Point(-0.0, "b")],
              {"fit": {"iterations": 12, "converged": True}, "note": None}, (3, 4)),
        Frozen("f", np.array(["x", "yz"])),
        Slotted(3, [np.float32(2.5), b"\x00raw"]),
        AttrsModel(rng.normal(size=5), Point(2.0, "inner"), ["a", "b"]),
        AttrsFrozen(-(2**70)),
        Plain("/data/sub-01"),
        WithState(np.arange(6.0).reshape(2, 3)),
        OnlySlots(OnlySlots(1, "deep"), {"k": Point(9.0, "in dict")}),
        [Point(1.0, "in a list"), {"p": Frozen("g", np.zeros(0))}],
    ]


def assert_same_object(actual: Any, expected: Any, where: str = "value") -> None:
    """Compare types and, attribute by attribute, states (arrays bit for bit)."""
    if type(expected) in (list, tuple):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_object(a, e, f"{where}[{i}]")
    elif type(expected) is dict:
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same_object(actual[key], expected[key], f"{where}[{key!r}]")
    elif type(expected).__module__ == __name__:
        assert type(actual) is type(expected), f"{where}: {type(actual)}"
        for name in _attribute_names(expected):
            assert_same_object(getattr(actual, name), getattr(expected, name), f"{where}.{name}")
    else:
        assert_values_equal(actual, expected, where)


def _attribute_names(obj: Any) -> list[str]:
    names = list(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        names += [n for n in klass.__dict__.get("__slots__", ()) if n not in names
                  and n not in ("__dict__", "__weakref__")]
    return names


@pytest.fixture
def trusted_samples() -> Iterator[None]:
    objects.trust(*SAMPLE_CLASSES)
    yield
    objects.untrust(*SAMPLE_CLASSES)


class TestObjects(BackendConformance):
    backend = BACKEND

    @pytest.fixture(autouse=True)
    def _trusted(self, trusted_samples: None) -> None:
        """The suite loads with the backend's default, safe=True: trust the samples."""

    def sample_values(self) -> list[Any]:
        return samples()

    def assert_equal(self, actual: Any, expected: Any) -> None:
        assert_same_object(actual, expected)


class Colour(enum.Enum):
    RED = 1


class CustomReduce:
    def __reduce__(self) -> Any:
        return (CustomReduce, ())


class Registry(dict[str, int]):
    """Its items live in the dict, not in __dict__."""


class Failure(Exception):
    """Its args live in the exception object, not in __dict__."""


def declined() -> list[Any]:
    def local_class() -> Any:
        class Local:
            pass

        return Local()

    cyclic = Plain("x")
    cyclic.cache = {"self": cyclic}
    return [
        Point(1.0, lambda: 0),  # type: ignore[arg-type]
        Slotted(1, {1, 2}),
        Point(1.0, {1: "int key"}),  # type: ignore[arg-type]
        local_class(),
        Colour.RED,
        CustomReduce(),
        cyclic,
        Slotted(1, np.array([object()], dtype=object)),
        Registry(a=1),
        Failure("message"),
        Point(1.0, Registry(b=2)),  # type: ignore[arg-type]
    ]


@HASHED_BY_PICKLE
@pytest.mark.parametrize("value", declined(), ids=lambda v: type(v).__name__)
def test_unstorable_objects_are_declined(value: Any) -> None:
    assert not BACKEND.can_save(value)
    assert registry.choose(value).name == "pickle"


def test_builtin_values_are_left_to_their_backends() -> None:
    for value in [1, "s", [1], {"a": np.zeros(2)}, np.zeros(2), None, (1, 2)]:
        assert not BACKEND.can_save(value)


@HASHED_BY_PICKLE
@pytest.mark.parametrize("index", range(len(samples())))
def test_store_round_trip(ctx: provstore.Context, index: int) -> None:
    value = samples()[index]
    calls = Plain.calls
    ctx.obj = value
    assert_same_object(ctx.obj, value)
    assert Plain.calls == calls  # rebuilt without __init__
    assert not stored_files(ctx, ".pkl")
    path = only_file(ctx, ".h5")
    if index < len(samples()) - 1:  # the last sample is a list holding objects
        with tables.open_file(str(path)) as f:  # an ordinary HDF5 file
            manifest = json.loads(f.root._v_attrs["PROVSTORE_OBJECTS"])
        assert manifest[0]["class"] == objects.class_path(type(value))
        assert manifest[0]["path"] == []


def test_list_of_objects_is_stored_as_hdf5_too(ctx: provstore.Context) -> None:
    """A container holding objects is a tree with objects inside: no pickle."""
    ctx.objs = samples()[-1]
    assert not stored_files(ctx, ".pkl")
    assert len(stored_files(ctx, ".h5")) == 1


def test_safe_store_refuses_untrusted_classes(store_dir: Path) -> None:
    provstore.open(store_dir).model = samples()[1]
    safe = provstore.open(store_dir, safe=True)
    with pytest.raises(UnsafeLoadError, match=r"test_backend_objects:(Model|Point).*trust\("):
        _ = safe.model
    objects.trust(Model)
    try:
        with pytest.raises(UnsafeLoadError, match=r"test_backend_objects:Point") as info:
            _ = safe.model
        assert "Model" not in str(info.value)
        objects.trust("test_backend_objects:Point")
        assert_same_object(safe.model, samples()[1])
    finally:
        objects.untrust(Model, Point)


def test_load_options_cannot_bypass_safe(store_dir: Path) -> None:
    provstore.open(store_dir).p = Point(1.0, "p")
    safe = provstore.open(store_dir, safe=True)
    with pytest.raises(UnsafeLoadError):
        safe.get("p", safe=False)


def test_safe_store_saves_objects_without_pickle(store_dir: Path) -> None:
    safe = provstore.open(store_dir, safe=True)
    safe.p = Point(2.0, "safe")
    objects.trust(Point)
    try:
        assert safe.p == Point(2.0, "safe")
    finally:
        objects.untrust(Point)


MODULE_V1 = '''
import dataclasses

@dataclasses.dataclass
class Scan:
    old_name: str
    size: int
'''

MODULE_V2 = '''
import dataclasses

@dataclasses.dataclass
class Acquisition:
    __provstore_renames__ = {"old_name": "subject"}
    subject: str
    size: int
'''


def test_moved_class_and_renamed_attribute(ctx: provstore.Context, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    modules = tmp_path / "code"
    modules.mkdir()
    (modules / "scans_v1.py").write_text(MODULE_V1, encoding="utf-8")
    monkeypatch.syspath_prepend(str(modules))
    v1 = importlib.import_module("scans_v1")
    ctx.scan = v1.Scan("sub-01", 3)
    # The refactor: the module and class are gone, the attribute renamed.
    (modules / "scans_v1.py").unlink()
    del sys.modules["scans_v1"]
    with pytest.raises(BackendError, match=r"rename\('scans_v1:Scan'"):
        _ = ctx.scan
    (modules / "scans_v2.py").write_text(MODULE_V2, encoding="utf-8")
    v2 = importlib.import_module("scans_v2")
    objects.rename("scans_v1:Scan", v2.Acquisition)
    try:
        loaded = ctx.scan
    finally:
        objects.unrename("scans_v1:Scan")
        sys.modules.pop("scans_v2", None)
    assert type(loaded) is v2.Acquisition
    assert loaded == v2.Acquisition(subject="sub-01", size=3)
