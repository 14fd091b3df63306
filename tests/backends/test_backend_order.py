"""Automatic choice keeps the established formats first and pickle last."""

from __future__ import annotations

from importlib.metadata import entry_points

from provstore.backends import registry


def test_priority_order() -> None:
    names = registry.names()
    assert names[:4] == ["json", "npy", "nifti", "hdf5"]
    assert names.index("parquet") < names.index("objects") < names.index("pickle")
    assert names.index("netcdf") < names.index("pickle")
    assert names.index("skops") < names.index("objects")  # an estimator is also an object
    assert names[-1] == "pickle"


def test_new_backends_are_registered_as_entry_points() -> None:
    declared = {ep.name: ep.value for ep in entry_points(group="provstore.backends")}
    for name in ("parquet", "netcdf", "skops", "objects"):
        assert declared[name] == f"provstore.backends.{name}:{type(registry.get(name)).__name__}"
