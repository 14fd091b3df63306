"""HDF5 specifics: natural layout, no pickled attributes, options, lazy views, foreign files."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tables

from provstore.backends import registry
from provstore.backends.hdf5 import FORMAT, KEY, TYPE, H5Array, H5Group, H5List
from provstore.errors import BackendError, UnsafeLoadError, UnsupportedTypeError
from provstore.testing import assert_values_equal

BACKEND = registry.get("hdf5")
PYTABLES_FILES = Path(tables.__file__).parent / "tests"
RNG = np.random.default_rng(3)


def _save(value: Any, tmp_path: Path, **options: Any) -> Path:
    path = tmp_path / "v.h5"
    BACKEND.save(value, path, **options)
    return path


def _all_attrs(path: Path) -> list[tuple[str, str, Any]]:
    """Every attribute of every node, read as stored (no unpickling)."""
    found = []
    with tables.open_file(str(path)) as f:
        for node in f.walk_nodes("/"):
            attrs = node._v_attrs
            for name in attrs._v_attrnames:
                found.append((node._v_pathname, name, attrs._g_getattr(attrs._v_node, name)))
    return found


def test_layout_is_natural_for_other_tools(tmp_path: Path) -> None:
    w, b = RNG.normal(size=(4, 3)), np.arange(3, dtype=np.int32)
    path = _save({"W": w, "b": b, "meta": {"name": "aam", "n": 3}}, tmp_path)
    with tables.open_file(str(path)) as f:
        assert type(f.get_node("/W")) is tables.Array  # contiguous, not chunked
        np.testing.assert_array_equal(f.get_node("/W").read(), w)
        np.testing.assert_array_equal(f.get_node("/b").read(), b)
        assert f.get_node("/meta/name").read() == b"aam"  # UTF-8 bytes
        assert f.get_node("/meta/n").read() == 3
        assert f.root._v_attrs[FORMAT] == "1"
        assert f.get_node("/meta")._v_attrs[TYPE] == "dict"


def test_lists_and_tuples_are_numbered_groups(tmp_path: Path) -> None:
    path = _save([np.arange(2), ("x", 1.5)], tmp_path)
    with tables.open_file(str(path)) as f:
        assert sorted(f.root._v_children) == ["0", "1"]
        assert f.get_node("/1")._v_attrs[TYPE] == "tuple"
        assert f.get_node("/1/0").read() == b"x"


def test_no_attribute_is_pickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = {"a/b": np.zeros(2, dtype=[("x", "<i4"), ("y", ">f8")]),
             "l": [None, 2**70, "s\x00", b"b", np.datetime64("2020-01-01")],
             "u": np.array(["naïve"]), ".": {"": np.float16(1)}}
    path = _save(value, tmp_path)
    attrs = _all_attrs(path)
    assert {name for _, name, _ in attrs} >= {TYPE, KEY, FORMAT}
    for where, name, raw in attrs:
        # PyTables unpickles any byte-string attribute ending in "." on read.
        maybe_pickled = isinstance(raw, np.bytes_) and raw.endswith(b".")
        assert not maybe_pickled, (where, name, raw)
        assert isinstance(raw, (np.generic, np.ndarray, str)), (where, name, type(raw))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an attribute was unpickled")

    monkeypatch.setattr(tables.attributeset.pickle, "loads", refuse)
    assert_values_equal(BACKEND.load(path, {}, mmap_mode=None), value)


def test_escaped_keys_keep_the_original_in_an_attribute(tmp_path: Path) -> None:
    path = _save({"a/b": 1, "ok": 2}, tmp_path)
    with tables.open_file(str(path)) as f:
        names = set(f.root._v_children)
        assert "ok" in names and "a/b" not in names
        (escaped,) = names - {"ok"}
        assert f.get_node("/" + escaped)._v_attrs[KEY] == "a/b"


@pytest.mark.parametrize(("options", "complib", "level"), [
    ({"compress": True}, "zlib", 1),
    ({"compress": 6}, "zlib", 6),
    ({"compress": True, "complib": "blosc2:zstd"}, "blosc2:zstd", 1),
    ({"chunked": True}, None, 0),
])
def test_chunked_and_compressed_arrays(tmp_path: Path, options: dict[str, Any],
                                       complib: str | None, level: int) -> None:
    value = {"x": np.arange(10_000.0).reshape(100, 100), "empty": np.zeros(0), "s": np.int8(3)}
    path = _save(value, tmp_path, **options)
    with tables.open_file(str(path)) as f:
        node = f.get_node("/x")
        assert type(node) is tables.CArray
        assert node.filters.complib == complib and node.filters.complevel == level
        assert node.filters.shuffle == bool(level)
        assert type(f.get_node("/empty")) is tables.Array  # HDF5 cannot chunk zero-size data
    assert_values_equal(BACKEND.load(path, {}, mmap_mode=None), value)


@pytest.mark.parametrize("options", [{"compresss": True}, {"compress": True, "complib": "nope"},
                                     {"compress": 11}, {"compress": "high"}])
def test_bad_options_are_refused_before_writing(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedTypeError):
        BACKEND.save({"x": np.zeros(3)}, tmp_path / "v.h5", **options)
    assert list(tmp_path.iterdir()) == []


class Sub(dict):  # type: ignore[type-arg]
    pass


def _cyclic() -> list[Any]:
    cycle: list[Any] = [1]
    cycle.append(cycle)
    return cycle


@pytest.mark.parametrize("value", [
    {1: np.zeros(2)}, {"a\x00": 1}, {"\ud800": 1}, {"x": {2, 3}}, Sub(a=1),
    np.array([object()]), {"x": np.zeros(2, dtype=[])}, _cyclic(), object(),
])
def test_values_it_cannot_store_exactly(value: Any, tmp_path: Path) -> None:
    assert not BACKEND.can_save(value)
    with pytest.raises(UnsupportedTypeError):
        BACKEND.save(value, tmp_path / "v.h5")


def test_lazy_views_read_on_access(tmp_path: Path) -> None:
    big = RNG.normal(size=(1000, 4))
    rec = np.zeros((2, 3), dtype=[("a", "<i4"), ("b", ">f8")])
    rec["a"] = np.arange(6).reshape(2, 3)
    value = {"big": big, "meta": {"name": "x"}, "seq": (np.arange(3), "s"), "rec": rec,
             "u": np.array(["naïve", "Δ"]), "none": None}
    path = _save(value, tmp_path)
    with BACKEND.load(path, {}, mmap_mode=None, lazy=True) as view:
        assert isinstance(view, H5Group)
        assert list(view) == list(value) and len(view) == len(value)
        arr = view["big"]
        assert isinstance(arr, H5Array)
        assert arr.shape == (1000, 4) and arr.dtype == big.dtype and len(arr) == 1000
        np.testing.assert_array_equal(arr[10:20, 1], big[10:20, 1])
        np.testing.assert_array_equal(np.asarray(arr), big)
        assert view["meta"]["name"] == "x"
        seq = view["seq"]
        assert isinstance(seq, H5List) and seq.container_type is tuple and seq[1] == "s"
        assert_values_equal(view["rec"].read(), rec)
        assert view["rec"].shape == (2, 3)
        assert_values_equal(view["rec"][1], rec[1])
        assert_values_equal(view["u"][1:], value["u"][1:])
        assert_values_equal(view["u"][0], value["u"][0])  # a numpy scalar, as in memory
        assert_values_equal(view["big"][3, 2], big[3, 2])
        assert view["none"] is None
        assert "missing" not in view
        with pytest.raises(KeyError):
            view["missing"]
    with pytest.raises(BackendError, match="closed"):
        arr.read()


def test_lazy_view_of_a_bare_array_and_a_list(tmp_path: Path) -> None:
    path = _save(np.arange(5), tmp_path)
    view = BACKEND.load(path, {}, mmap_mode=None, lazy=True)
    assert isinstance(view, H5Array)
    np.testing.assert_array_equal(view[2:], np.arange(2, 5))
    view.close()
    (tmp_path / "list").mkdir()
    path = _save([1, np.arange(3)], tmp_path / "list")
    with BACKEND.load(path, {}, mmap_mode=None, lazy=True) as seq:
        assert len(seq) == 2 and seq[0] == 1 and seq[-1].shape == (3,)
        with pytest.raises(IndexError):
            seq[2]


# ------------------------------------------------------------------ files from elsewhere
READABLE = [
    "array_mdatom.h5", "attr-u16.h5", "blosc_bigendian.h5", "ex-noattr.h5",
    "float.h5", "indexes_2_1.h5", "itemsize.h5",
    "non-chunked-table.h5", "oldflavor_numeric.h5", "python3.h5", "slink.h5",
    "smpl_SDSextendible.h5", "smpl_compound_chunked.h5", "smpl_enum.h5", "smpl_f64be.h5",
    "smpl_f64le.h5", "smpl_i32be.h5", "smpl_i64le.h5", "times-nested-be.h5",
    "vlunicode_endian.h5",
]


def _at(value: Any, pathname: str) -> Any:
    for part in pathname.strip("/").split("/"):
        value = value[part]
    return value


@pytest.mark.parametrize("name", READABLE)
def test_foreign_files_load_as_plain_structures(name: str) -> None:
    path = PYTABLES_FILES / name
    loaded = BACKEND.load(path, {}, mmap_mode=None)
    assert isinstance(loaded, dict)
    with warnings.catch_warnings(), tables.open_file(str(path)) as f:
        # Old files ask for flavors (numeric, numarray) this PyTables no longer has,
        # or hold attributes of types it cannot map.
        warnings.simplefilter("ignore", tables.FlavorWarning)
        warnings.simplefilter("ignore", tables.DataTypeWarning)
        leaves = list(f.walk_nodes("/", "Leaf"))
        assert leaves
        for node in leaves:
            got = _at(loaded, node._v_pathname)
            if isinstance(node, tables.VLArray):
                assert isinstance(got, list) and len(got) == node.nrows
                continue
            expected = np.asarray(node.read())
            assert isinstance(got, np.ndarray), node._v_pathname
            assert_values_equal(got, expected, node._v_pathname)


def test_foreign_details() -> None:
    le = BACKEND.load(PYTABLES_FILES / "smpl_f64le.h5", {}, mmap_mode=None)["TestArray"]
    be = BACKEND.load(PYTABLES_FILES / "smpl_f64be.h5", {}, mmap_mode=None)["TestArray"]
    np.testing.assert_array_equal(le, be)
    vl = BACKEND.load(PYTABLES_FILES / "vlunicode_endian.h5", {}, mmap_mode=None)
    assert vl["vlunicode_big"] == vl["vlunicode_little"] == ["paraŀlel"]
    linked = BACKEND.load(PYTABLES_FILES / "slink.h5", {}, mmap_mode=None)
    np.testing.assert_array_equal(linked["arr2"], linked["arr"])  # soft links are followed
    assert linked["pep2"] == linked["pep"]
    table = BACKEND.load(PYTABLES_FILES / "non-chunked-table.h5", {}, mmap_mode=None)
    assert table["test_var"]["structure variable"].dtype.names == ("a", "b", "c", "d")


@pytest.mark.parametrize(("name", "match"), [
    ("elink.h5", "external link"),
    ("scalar.h5", "UnImplemented"),
    ("smpl_unsupptype.h5", "UnImplemented"),
    ("nested-type-with-gaps.h5", "gaps"),
])
def test_foreign_nodes_it_cannot_read_fail_clearly(name: str, match: str) -> None:
    with pytest.raises(BackendError, match=match):
        BACKEND.load(PYTABLES_FILES / name, {}, mmap_mode=None)


def test_lazy_view_reads_around_unreadable_nodes() -> None:
    with BACKEND.load(PYTABLES_FILES / "elink.h5", {}, mmap_mode=None, lazy=True) as view:
        assert dict(view["pep"]["pep3"]) == {}
        with pytest.raises(BackendError, match="external link"):
            view["pep"]["pep2"]


@pytest.mark.parametrize("name", ["test_szip.h5"])
def test_files_needing_a_missing_filter_plugin(name: str) -> None:
    with pytest.raises(BackendError, match="szip"):
        BACKEND.load(PYTABLES_FILES / name, {}, mmap_mode=None)


@pytest.mark.parametrize("name", ["Tables_lzo1.h5", "Tables_lzo2_shuffle.h5",
                                  "zerodim-attrs-1.3.h5", "zerodim-attrs-1.4.h5",
                                  "flavored_vlarrays-format1.6.h5"])
def test_pytables_1x_files_are_refused_before_any_unpickling(name: str) -> None:
    # These files store FILTERS pickled; refusing comes before the lzo question.
    with pytest.raises(UnsafeLoadError, match="ptrepack"):
        BACKEND.load(PYTABLES_FILES / name, {}, mmap_mode=None)
    assert not tables.file._open_files.get_handlers_by_name(str(PYTABLES_FILES / name))
