"""Store-level behaviour: formats, safe mode, failures, corruption, File ingestion."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import provstore
from provstore.errors import (
    BackendError,
    CorruptObjectError,
    UnsafeLoadError,
    UnsupportedTypeError,
)
from sql import scalar

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


class Opaque:
    """A user type no standard backend handles (its own __reduce__: only pickle replays it)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> tuple[type[Opaque], tuple[int]]:
        return (Opaque, (self.value,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.value == self.value


def _rows(store_dir: Path, table: str) -> int:
    return int(scalar(store_dir, f"SELECT count(*) FROM {table}"))


def _object_files(store_dir: Path) -> list[Path]:
    return [p for p in (store_dir / "objects").rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        (3, "json"),
        ({"a": [1, 2.5, None, "x"]}, "json"),
        (np.arange(5), "npy"),
        (np.float32(2.5), "npy"),
        ({"W": np.ones((3, 2)), "meta": {"name": "aam"}}, "hdf5"),
        ((1, 2), "hdf5"),
        (nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), "nifti"),
        (Opaque(1), "pickle"),
    ],
)
def test_automatic_format_choice(ctx: provstore.Context, value: object, fmt: str) -> None:
    if isinstance(value, Opaque):
        with pytest.warns(UserWarning, match="through pickle"):
            ctx.v = value
    else:
        ctx.v = value
    assert ctx.history("v").latest.format == fmt


def test_forcing_a_format_and_options(ctx: provstore.Context) -> None:
    ctx.set("a", np.arange(10), format="hdf5")
    assert ctx.history("a").latest.format == "hdf5"
    np.testing.assert_array_equal(ctx.a, np.arange(10))
    img = nib.Nifti1Image(np.arange(64, dtype=np.int16).reshape(4, 4, 4), np.eye(4))
    ctx.set("img", img, compress=True)
    assert ctx.history("img").latest.format == "nifti"
    assert any(p.name.endswith(".nii.gz") for p in _object_files(ctx.store.root))
    with pytest.raises(UnsupportedTypeError, match=r"'npy' backend cannot store a dict"):
        ctx.set("bad", {"a": 1}, format="npy")
    with pytest.raises(UnsupportedTypeError, match="no backend called"):
        ctx.set("bad", 1, format="nope")
    assert "bad" not in ctx


def test_safe_mode_never_pickles(store_dir: Path) -> None:
    ctx = provstore.open(store_dir)
    with pytest.warns(UserWarning, match="through pickle"):
        ctx.obj = Opaque(7)
    assert ctx.obj == Opaque(7)
    safe = provstore.open(store_dir, safe=True)
    with pytest.raises(UnsafeLoadError, match="safe=True"):
        _ = safe.obj
    with pytest.raises(UnsupportedTypeError, match="safe=True"):
        safe.other = Opaque(8)
    assert "other" not in safe


@pytest.mark.parametrize("options", [{"lazy": True}, {"mmap_mode": None}, {"verify": True}])
def test_safe_mode_holds_whatever_load_options_are_passed(store_dir: Path,
                                                          options: dict[str, object]) -> None:
    # DESIGN §4.7: loader options once took a path around the safety check.
    provstore.open(store_dir).set("thing", {"a": [1, 2]}, format="pickle")
    safe = provstore.open(store_dir, safe=True)
    with pytest.raises(UnsafeLoadError, match="safe=True"):
        safe.get("thing", **options)


def test_a_failing_save_leaves_nothing_behind(ctx: provstore.Context, store_dir: Path) -> None:
    class Exploding:
        def __reduce__(self) -> tuple[object, ...]:
            raise RuntimeError("cannot serialise")

        def __provstore_hash__(self) -> str:
            return "exploding"

    ctx.ok = 1
    before = (_rows(store_dir, "artifacts"), _rows(store_dir, "bindings"))
    with pytest.raises((BackendError, UnsupportedTypeError)):
        ctx.boom = Exploding()
    assert "boom" not in ctx
    assert (_rows(store_dir, "artifacts"), _rows(store_dir, "bindings")) == before
    assert _object_files(store_dir) == []
    assert list((store_dir / "tmp").iterdir()) == []


def test_corrupted_objects_raise_corrupt_object_error(ctx: provstore.Context) -> None:
    ctx.a = np.arange(100_000, dtype=np.float64)
    (path,) = _object_files(ctx.store.root)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip one bit of the last value, size unchanged
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)
    ctx.store._loaded.clear()
    with pytest.raises(CorruptObjectError, match="changed or truncated"):
        ctx.get("a", verify=True)
    with path.open("r+b") as f:
        f.truncate(1000)
    with pytest.raises(CorruptObjectError, match="truncated"):
        ctx.get("a", mmap_mode=None)
    path.unlink()
    with pytest.raises(CorruptObjectError, match="missing"):
        ctx.get("a", mmap_mode=None)


def test_files_are_written_read_only(ctx: provstore.Context) -> None:
    ctx.a = np.arange(3)
    ctx.m = {"W": np.ones(3), "b": 1.0}
    for path in _object_files(ctx.store.root):
        assert os.stat(path).st_mode & 0o222 == 0


@pytest.mark.parametrize(
    "name", ["anatomical.nii", "functional.nii", "example4d.nii.gz", "example_nifti2.nii.gz"]
)
def test_ingesting_real_nifti_files(ctx: provstore.Context, tmp_path: Path, name: str) -> None:
    src = tmp_path / name
    shutil.copyfile(NIBABEL_DATA / name, src)
    with ctx.scope(subject="01"):
        ctx.bold = provstore.File(src)
        img = ctx.bold
    original = nib.load(src)
    assert type(img) is type(original)
    np.testing.assert_array_equal(img.affine, original.affine)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.asanyarray(original.dataobj))
    assert img.get_data_dtype() == original.get_data_dtype()
    stored = [p for p in _object_files(ctx.store.root)]
    assert len(stored) == 1
    assert stored[0].read_bytes() == src.read_bytes()  # the file is kept byte for byte
    with ctx.store.engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT path, size, digest FROM files").one()
    assert row.path == str(src) and row.size == src.stat().st_size


def test_file_ingestion_is_cached_on_stat(ctx: provstore.Context, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "a.npy"
    np.save(src, np.arange(10))
    ctx.a = provstore.File(src)
    calls = []
    from provstore import saving

    monkeypatch.setattr(saving, "_read_external", lambda *a: calls.append(a))
    ctx.b = provstore.File(src)  # unchanged file: no re-read
    assert calls == []
    assert ctx.history("b").latest.artifact_id == ctx.history("a").latest.artifact_id


def test_ingesting_unknown_and_corrupt_files(ctx: provstore.Context, tmp_path: Path) -> None:
    csv = tmp_path / "table.csv"
    csv.write_text("a,b\n1,2\n")
    ctx.table_file = provstore.File(csv)
    stored = ctx.table_file
    assert isinstance(stored, Path) and stored.read_text() == "a,b\n1,2\n"
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"not a nifti file" * 10)
    with pytest.raises(CorruptObjectError, match=r"bad\.nii"):
        ctx.bad = provstore.File(bad)
    assert "bad" not in ctx
    with pytest.raises(provstore.StoreError, match="no such file"):
        ctx.missing = provstore.File(tmp_path / "nope.nii")


def test_history_describes_each_version(ctx: provstore.Context) -> None:
    ctx.signal = np.zeros((3, 4), np.float32)
    ctx.signal = np.zeros(5)
    del ctx.signal
    h = ctx.history("signal")
    first, _, third = h.versions
    assert first.summary["shape"] == [3, 4] and first.summary["dtype"] == "float32"
    assert first.format == "npy" and first.size > 0 and first.run is not None
    assert first.run.pid == os.getpid() and first.run.status == "running"
    assert third.deleted and h.latest is third
    text = str(h)
    assert "signal: 3 version(s)" in text and "deleted" in text and "3x4" in text


def test_lazy_hdf5_reads_through_get(ctx: provstore.Context) -> None:
    big = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)
    ctx.model = {"W": big, "meta": {"name": "aam"}}
    with ctx.get("model", lazy=True) as view:
        np.testing.assert_array_equal(view["W"][10:12], big[10:12])
        assert view["meta"]["name"] == "aam"
    assert ctx.model["meta"] == {"name": "aam"}  # eager loads are unaffected


def test_raw_files_keep_their_suffix(ctx: provstore.Context, tmp_path: Path) -> None:
    src = tmp_path / "notes.csv"
    src.write_text("a,b\n")
    ctx.notes = provstore.File(src)
    assert ctx.notes.name.endswith(".csv")


class Canary:
    """Unpickling this creates a marker directory: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("safe", [True, False])
def test_hdf5_attributes_are_never_unpickled(store_dir: Path, tmp_path: Path, safe: bool) -> None:
    import tables

    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.h5"
    with tables.open_file(str(hostile), "w") as f:
        arr = f.create_array("/", "data", np.arange(3))
        arr.attrs.evil = Canary(str(marker))  # PyTables pickles it into the file
        f.root._v_attrs.evil = Canary(str(marker))
    assert not marker.exists()
    ctx = provstore.open(store_dir, safe=safe)
    ctx.h = provstore.File(hostile)
    np.testing.assert_array_equal(ctx.h["data"], np.arange(3))
    with ctx.get("h", lazy=True) as view:
        np.testing.assert_array_equal(view["data"][:], np.arange(3))
    assert not marker.exists()
    with tables.open_file(str(hostile)) as f:  # outside provstore, PyTables is unchanged
        assert not isinstance(f.root._v_attrs.evil, bytes)
    assert marker.exists()


def test_big_json_values_become_json_files(ctx: provstore.Context, store_dir: Path) -> None:
    big = list(range(300_000))
    ctx.big = big
    ctx.small = [1, 2, 3]
    assert ctx.big == big
    assert ctx.history("big").latest.format == "json"
    (path,) = [p for p in _object_files(store_dir) if p.suffix == ".json"]
    import json

    assert json.loads(path.read_text()) == big  # a standard file any JSON reader opens


def test_long_tuples_do_not_explode_into_hdf5_nodes(store_dir: Path) -> None:
    ctx = provstore.open(store_dir, safe=True)
    with pytest.raises(UnsupportedTypeError, match="safe=True"):
        ctx.t = tuple(range(100_000))
    ctx.t = np.array(tuple(range(100_000)))  # what the message steers towards
    assert ctx.history("t").latest.format == "npy"


def test_ingesting_json_pickle_and_real_pytables_files(ctx: provstore.Context,
                                                       tmp_path: Path) -> None:
    import json
    import pickle

    import tables

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"threshold": 0.2, "runs": [1, 2]}))
    ctx.config = provstore.File(config)
    assert ctx.config == {"threshold": 0.2, "runs": [1, 2]}
    assert ctx.history("config").latest.format == "json"

    blob = tmp_path / "model.pkl"
    blob.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    ctx.model = provstore.File(blob)
    assert ctx.model == {"weights": [1.0, 2.0]}
    assert ctx.history("model").latest.format == "pickle"

    real = Path(tables.__file__).parent / "tests" / "smpl_f64le.h5"
    ctx.sample = provstore.File(real)
    with tables.open_file(str(real)) as f:
        expected = {node._v_name: node.read() for node in f.walk_nodes("/", "Leaf")}
    loaded = ctx.sample
    for name, value in expected.items():
        np.testing.assert_array_equal(loaded[name], value)
    stored = [p for p in _object_files(ctx.store.root) if p.suffix == ".h5"]
    assert [p.read_bytes() for p in stored] == [real.read_bytes()]  # kept byte for byte
