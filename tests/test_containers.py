"""Lists, tuples and dicts of nibabel images: one NIfTI file per image, no pickle (issue 12)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

import provstore
from provstore import hashing
from provstore import maintenance as m
from provstore.errors import CorruptObjectError, UnsupportedTypeError


def _img(seed: int, shape: tuple[int, ...] = (3, 4, 5)) -> nib.Nifti1Image:
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + seed
    return nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0 + seed, 1.0]))


EXAMPLE = nib.load(os.path.join(data_path, "example4d.nii.gz"))
A, B = _img(1), _img(2)

VALUES: dict[str, Any] = {
    "list": [A, B],
    "tuple": (A, B, EXAMPLE),
    "dict": {"z": A, "a": B},  # key order kept, not sorted
    "mixed": {"img": A, "arr": np.arange(6).reshape(2, 3), "n": 3, "label": "bold",
              "thr": 2.5, "none": None, "scalar": np.float32(1.5)},
    "nested": [{"run": 1, "imgs": (A, B)}, [np.ones(3), [EXAMPLE]]],
}


def _assert_same(got: Any, want: Any) -> None:
    if isinstance(want, np.ndarray):  # an array loads as a read-only memory map
        assert isinstance(got, np.ndarray)
    else:
        assert type(got) is type(want), f"{type(got)} is not {type(want)}"
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            _assert_same(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
    elif isinstance(want, nib.Nifti1Image):
        np.testing.assert_array_equal(got.affine, want.affine)
        np.testing.assert_array_equal(np.asanyarray(got.dataobj), np.asanyarray(want.dataobj))
        assert got.get_data_dtype() == want.get_data_dtype()
    elif isinstance(want, (np.ndarray, np.generic)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    else:
        assert got == want


def _row(ctx: provstore.Context, name: str) -> Any:
    v = ctx.history(name).latest
    assert v.artifact_id is not None
    return ctx.store.artifact(v.artifact_id)


def _element_paths(ctx: provstore.Context, name: str) -> list[Path]:
    row = _row(ctx, name)
    return [ctx.store.objects.path(f["digest"], f["suffix"]) for f in row.meta["files"]]


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("kind", list(VALUES))
def test_round_trip_keeps_the_container_and_its_elements(ctx: provstore.Context,
                                                         kind: str) -> None:
    setattr(ctx, kind, VALUES[kind])
    assert ctx.history(kind).latest.format == "container"
    loaded = getattr(ctx, kind)
    _assert_same(loaded, VALUES[kind])
    # Keyed as it was stored: binding what was loaded adds no version.
    assert hashing.digest(loaded) == hashing.digest(VALUES[kind]) == _row(ctx, kind).digest
    setattr(ctx, kind, loaded)
    assert len(ctx.history(kind)) == 1


def test_every_element_is_a_file_its_own_library_opens(ctx: provstore.Context) -> None:
    ctx.mixed = {"img": A, "bold": EXAMPLE, "arr": np.arange(5)}
    row = _row(ctx, "mixed")
    formats = [f["format"] for f in row.meta["files"]]
    assert formats == ["nifti", "nifti", "npy"]
    img_path, bold_path, arr_path = _element_paths(ctx, "mixed")
    assert img_path.name.endswith(".nii") and arr_path.name.endswith(".npy")
    _assert_same(nib.load(img_path), A)
    _assert_same(nib.load(bold_path), EXAMPLE)
    np.testing.assert_array_equal(np.load(arr_path), np.arange(5))
    assert not list(ctx.store.objects.objects.rglob("*.pkl"))


def test_compress_writes_nii_gz_elements(ctx: provstore.Context) -> None:
    ctx.set("imgs", [A, B], compress=True)
    paths = _element_paths(ctx, "imgs")
    assert all(p.name.endswith(".nii.gz") for p in paths)
    _assert_same(nib.load(paths[1]), B)
    _assert_same(ctx.imgs, [A, B])


def test_a_safe_store_loads_containers_without_pickle(store_dir: Path) -> None:
    provstore.open(store_dir).imgs = {"a": A, "arr": np.arange(3), "t": (B,)}
    safe = provstore.open(store_dir, safe=True)
    _assert_same(safe.imgs, {"a": A, "arr": np.arange(3), "t": (B,)})
    safe.more = [A, EXAMPLE]  # and stores them
    _assert_same(safe.more, [A, EXAMPLE])


def test_identical_containers_share_one_artifact_and_list_and_tuple_differ(
        ctx: provstore.Context) -> None:
    ctx.a = [A, B]
    ctx.b = [_img(1), _img(2)]  # equal images, other objects
    ctx.c = (A, B)
    assert _row(ctx, "a").id == _row(ctx, "b").id
    assert _row(ctx, "c").id != _row(ctx, "a").id
    assert type(ctx.c) is tuple and type(ctx.a) is list
    # The elements are shared files, not copies.
    assert _element_paths(ctx, "a") == _element_paths(ctx, "c")


def test_memory_maps_and_lazy_images_by_default(ctx: provstore.Context) -> None:
    ctx.v = [A, np.arange(10.0)]
    img, arr = ctx.v
    assert nib.is_proxy(img.dataobj)
    assert not arr.flags.writeable


# ------------------------------------------------------------------ bad input
def test_non_str_keys_are_refused_clearly_and_nothing_is_written(ctx: provstore.Context) -> None:
    with pytest.raises(UnsupportedTypeError, match=r"str keys.*format='pickle'"):
        ctx.bad = {1: A}
    with pytest.raises(UnsupportedTypeError, match=r"\[1\]\['s'\].*set"):
        ctx.bad = [A, {"s": {1, 2}}]
    assert "bad" not in ctx
    assert not [p for p in ctx.store.objects.objects.rglob("*") if p.is_file()]


def test_pickle_takes_an_image_container_only_when_asked(ctx: provstore.Context) -> None:
    ctx.set("odd", {1: A}, format="pickle")
    assert ctx.history("odd").latest.format == "pickle"
    _assert_same(ctx.odd, {1: A})


def test_a_cycle_is_refused(ctx: provstore.Context) -> None:
    loop: list[Any] = [A]
    loop.append(loop)
    with pytest.raises(UnsupportedTypeError, match="cycle"):
        ctx.loop = loop


# ------------------------------------------------------------------ tracking
def test_a_tracked_function_returning_a_container_hits(ctx: provstore.Context) -> None:
    runs: list[int] = []

    @ctx.track
    def split(img: Any, n: int) -> dict[str, Any]:
        runs.append(n)
        data = np.asanyarray(img.dataobj)
        return {"first": nib.Nifti1Image(data[..., :n], img.affine), "n": n,
                "means": [float(data[..., i].mean()) for i in range(n)]}

    ctx.bold = EXAMPLE
    first = split(ctx.bold, 2)
    again = split(ctx.bold, 2)
    assert runs == [2]
    _assert_same(again, first)
    assert again["first"].shape == (*EXAMPLE.shape[:3], 2)
    ctx.parts = again
    call = ctx.history("parts").latest.call
    assert call is not None and call.function.endswith("split")
    assert _row(ctx, "parts").format == "container"


# ------------------------------------------------------------------ gc
def test_gc_keeps_the_elements_a_live_container_needs(ctx: provstore.Context) -> None:
    ctx.imgs = [A, B]
    report = m.gc(ctx.store, dry_run=False, grace_seconds=0)
    assert not report.files
    assert all(p.is_file() for p in _element_paths(ctx, "imgs"))
    _assert_same(ctx.imgs, [A, B])
    assert m.verify(ctx.store).ok


def test_gc_frees_elements_with_their_container(ctx: provstore.Context) -> None:
    ctx.imgs = [A, B]
    ctx.keep = (B,)  # shares B's file
    old = _element_paths(ctx, "imgs")
    ctx.imgs = np.zeros(2)
    dry = m.gc(ctx.store, dry_run=True, grace_seconds=0, keep_versions=1)
    report = m.gc(ctx.store, dry_run=False, grace_seconds=0, keep_versions=1)
    freed = {ctx.store.root / f.path for f in report.files}
    assert {ctx.store.root / f.path for f in dry.files} == freed
    assert old[0] in freed and not old[0].exists()
    assert old[1].exists() and old[1] not in freed
    _assert_same(ctx.keep, (B,))
    assert m.verify(ctx.store).ok


def test_gc_keeps_young_element_files_of_a_dropped_container(ctx: provstore.Context) -> None:
    ctx.imgs = [A]
    [path] = _element_paths(ctx, "imgs")
    ctx.imgs = 1
    report = m.gc(ctx.store, dry_run=False, grace_seconds=3600, keep_versions=1)
    assert path.exists()  # a writer may be about to commit a container naming it
    assert str(path.relative_to(ctx.store.root)) in report.young


# ------------------------------------------------------------------ verify
def test_verify_names_the_binding_and_element_of_a_lost_file(ctx: provstore.Context) -> None:
    ctx.imgs = {"a": A, "b": B}
    lost = _element_paths(ctx, "imgs")[1]
    lost.unlink()
    report = m.verify(ctx.store)
    assert not report.ok
    [problem] = report.errors
    assert problem.kind == "missing" and "['b']" in problem.message
    assert [b.name for b in problem.bindings] == ["imgs"]
    with pytest.raises(CorruptObjectError, match=r"imgs.*\['b'\].*missing"):
        ctx.imgs  # noqa: B018


def test_verify_finds_a_changed_element(ctx: provstore.Context) -> None:
    ctx.imgs = [A, np.arange(100)]
    path = _element_paths(ctx, "imgs")[1]
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x7f")
    [problem] = m.verify(ctx.store).errors
    assert problem.kind == "hash" and "[1]" in problem.message
    with pytest.raises(CorruptObjectError, match=r"\[1\]"):
        ctx.get("imgs", verify=True)


# ------------------------------------------------------------------ export, which
def test_export_writes_a_directory_of_standard_files(ctx: provstore.Context,
                                                     tmp_path: Path) -> None:
    ctx.subject = {"t1": A, "runs": [B, EXAMPLE], "arr": np.arange(3), "tr": 2.0}
    target = m.export(ctx, "subject", tmp_path)
    assert target == tmp_path / "subject"
    _assert_same(nib.load(target / "t1.nii"), A)
    _assert_same(nib.load(target / "runs" / "1.nii"), EXAMPLE)
    np.testing.assert_array_equal(np.load(target / "arr.npy"), np.arange(3))
    layout = json.loads((target / "container.json").read_text())
    assert layout["value"]["dict"][3] == ["tr", {"value": 2.0}]
    sidecar = json.loads(Path(f"{target}.provstore.json").read_text())
    assert sidecar["path"] == "subject" and sidecar["format"] == "container"
    [match] = m.which(ctx.store, target / "runs" / "0.nii")
    assert match.artifact_id == _row(ctx, "subject").id and match.how == "element"
    assert [b.path for b in match.bindings] == ["subject"]
    with pytest.raises(provstore.errors.StoreError, match="already"):
        m.export(ctx, "subject", tmp_path)


def test_export_force_replaces_and_a_lost_element_leaves_nothing(ctx: provstore.Context,
                                                                  tmp_path: Path) -> None:
    ctx.imgs = [A]
    (tmp_path / "out").mkdir()
    target = m.export(ctx, "imgs", tmp_path / "out")
    assert target == tmp_path / "out" / "imgs"
    (target / "stale.txt").write_text("from before")
    ctx.imgs = [B, {"weird/key": A}]
    with pytest.raises(provstore.errors.StoreError, match="already"):
        m.export(ctx, "imgs", tmp_path / "out")
    assert m.export(ctx, "imgs", tmp_path / "out", force=True) == target
    assert sorted(p.name for p in target.rglob("*")) == ["0.nii", "1", "_0.nii",
                                                         "container.json"]
    _assert_same(nib.load(target / "1" / "_0.nii"), A)
    _element_paths(ctx, "imgs")[0].unlink()
    with pytest.raises(CorruptObjectError, match=r"imgs element \[0\].*missing"):
        m.export(ctx, "imgs", tmp_path / "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "study"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["imgs",
                                                                     "imgs.provstore.json"]


def test_containers_without_images_keep_their_format(ctx: provstore.Context) -> None:
    ctx.arrays = [np.arange(3), {"b": np.ones(2)}]
    ctx.small = {"a": [1, 2]}
    assert ctx.history("arrays").latest.format == "hdf5"
    assert ctx.history("small").latest.format == "json"


def test_nesting_too_deep_is_refused_not_pickled(ctx: provstore.Context) -> None:
    deep: Any = A
    for _ in range(40):
        deep = [deep]
    with pytest.raises(UnsupportedTypeError, match="deeper than 32"):
        ctx.deep = deep


def test_binding_the_value_again_restores_a_lost_element(ctx: provstore.Context) -> None:
    ctx.imgs = [A, B]
    lost = _element_paths(ctx, "imgs")[0]
    lost.unlink()
    ctx.again = [A, B]
    assert lost.is_file()
    _assert_same(ctx.imgs, [A, B])
    assert m.verify(ctx.store).ok


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda text: " " * len(text), "not a readable container manifest"),
    (lambda text: text.replace('"suffix": ".nii"', '"suffix": "/../"'), "not a valid object"),
    (lambda text: text.replace('{"file": 0}', '[4, 5, 6,7]'), "manifest is damaged"),
])
def test_a_damaged_manifest_is_a_corrupt_object(ctx: provstore.Context, damage: Any,
                                                reason: str) -> None:
    ctx.imgs = [A]
    row = _row(ctx, "imgs")
    path = ctx.store.objects.path(row.digest, row.suffix)
    text = path.read_text()
    changed = damage(text)
    assert changed != text
    os.chmod(path, 0o644)
    assert len(changed) == len(text)  # same size: only the content differs
    path.write_text(changed)
    with pytest.raises(CorruptObjectError, match=f"imgs.*{reason}"):
        ctx.imgs  # noqa: B018
