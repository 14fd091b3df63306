"""The examples run as real scripts, and the stores they leave hold what they claim."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import provstore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Run examples/quickstart.py once in a fresh directory; return (store, stdout)."""
    work = tmp_path_factory.mktemp("quickstart")
    store = work / "study"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), str(store)],
        cwd=work, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return store, proc.stdout


@pytest.fixture
def ctx(quickstart: tuple[Path, str]) -> provstore.Context:
    return provstore.open(quickstart[0], create=False)


def test_scopes_and_names(ctx: provstore.Context) -> None:
    assert ctx.scopes() == ["subject=01", "subject=02"]
    assert ctx.scope(subject="01").scopes() == ["subject=01/sigma=1.0", "subject=01/sigma=2.0"]
    assert ctx.names(inherited=False) == ["template"]
    for s in ("01", "02"):
        assert ctx.scope(subject=s).names(inherited=False) == ["bold", "signal"]
        for sigma in (1.0, 2.0):
            deep = ctx.scope(subject=s, sigma=sigma)
            assert deep.names(inherited=False) == ["model", "smoothed"]
            assert deep.names() == ["bold", "model", "signal", "smoothed", "template"]


def test_values_have_the_expected_types_and_shapes(ctx: provstore.Context) -> None:
    deep = ctx.scope(subject="02", sigma=1.0)
    assert isinstance(deep.bold, nib.Nifti1Image)
    assert deep.bold.shape == (32, 32, 16, 10)
    assert deep.smoothed.shape == (32, 32, 16, 10)
    np.testing.assert_allclose(deep.smoothed.affine, np.diag([2.0, 2.0, 2.0, 1.0]))
    signal = deep.signal
    assert signal.shape == (10,)
    assert not signal.flags.writeable  # .npy loads as a read-only memmap
    model = deep.model
    assert model["W"].shape == (3, 10)
    assert np.asarray(model["b"]).shape == (10,)
    assert model["meta"] == {"name": "aam"}


def test_smoothing_is_stronger_for_larger_sigma(ctx: provstore.Context) -> None:
    sub = ctx.scope(subject="01")
    bold = np.asanyarray(sub.bold.dataobj)
    spread = [np.asanyarray(sub.scope(sigma=s).smoothed.dataobj).std() for s in (1.0, 2.0)]
    assert bold.std() > spread[0] > spread[1]


def test_template_resolves_from_the_root_in_a_nested_scope(ctx: provstore.Context) -> None:
    deep = ctx.scope(subject="01", sigma=2.0)
    assert "template" not in deep.names(inherited=False)
    h = deep.history("template")
    assert h.scope == ""  # the binding found is the root's
    assert deep.template.shape == (32, 32, 16)
    np.testing.assert_array_equal(np.asanyarray(deep.template.dataobj),
                                  np.asanyarray(ctx.template.dataobj))


def test_rebinding_added_a_version(ctx: provstore.Context) -> None:
    h = ctx.history("subject=01/signal")
    assert [v.number for v in h.versions] == [1, 2]
    assert h.versions[0].digest != h.versions[1].digest
    assert h.latest.origin is not None
    assert "quickstart.py:" in h.latest.origin
    first = ctx.get("subject=01/signal", version=1)
    np.testing.assert_allclose(ctx["subject=01/signal"], first - first.mean(), atol=1e-5)
    assert len(ctx.history("subject=02/signal")) == 1


def test_deletion_left_a_tombstone_and_unshadowed_the_root(ctx: provstore.Context) -> None:
    sub = ctx.scope(subject="02")
    h = sub.history("template")
    assert h.scope == "subject=02"
    assert [v.deleted for v in h.versions] == [False, True]
    assert sub.template.shape == (32, 32, 16)
    assert sub.history("template").latest.deleted
    np.testing.assert_array_equal(np.asanyarray(sub.template.dataobj),
                                  np.asanyarray(ctx.template.dataobj))


def test_objects_on_disk_are_read_only_standard_files(quickstart: tuple[Path, str]) -> None:
    store, _ = quickstart
    assert (store / "provstore.db").is_file()
    objects = [p for p in (store / "objects").rglob("*") if p.is_file()]
    suffixes = {"".join(p.suffixes) for p in objects}
    assert {".nii", ".nii.gz", ".npy", ".h5"} <= suffixes
    for p in objects:
        assert not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), p
    smoothed = [p for p in objects if p.name.endswith(".nii") and p.stat().st_size > 500_000]
    assert len(smoothed) == 4
    assert nib.load(smoothed[0]).shape == (32, 32, 16, 10)  # plain nibabel reads them


def test_output_shows_history_and_layout(quickstart: tuple[Path, str]) -> None:
    _, out = quickstart
    assert "subject=01/signal: 2 version(s)" in out
    assert "subject=02/template: 2 version(s)" in out
    assert "deleted" in out
    assert "provstore.db" in out


# --------------------------------------------------------------------------- pipeline.py
def _pipeline(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "pipeline.py"), str(store), *args],
        cwd=store.parent, capture_output=True, text=True, timeout=180,
    )


def _computed(stdout: str) -> list[str]:
    """The steps whose bodies ran (they print "computing <step>", on misses only)."""
    return [line.strip().removeprefix("computing ") for line in stdout.splitlines()
            if line.strip().startswith("computing ")]


def test_pipeline_resumes_after_a_crash_and_then_computes_nothing(tmp_path: Path) -> None:
    per_subject = ["simulate", "zscore", "band_power"]
    for alpha in ("0.1", "10.0", "1000.0"):
        per_subject += [f"fit (alpha={alpha})", "evaluate"]
    every_step = per_subject * 3  # 3 subjects, 27 tracked calls
    store = tmp_path / "study"

    crashed = _pipeline(store, "--crash-after", "10")
    assert crashed.returncode == 1, crashed.stderr
    assert "simulated crash after 10 tracked calls" in crashed.stdout
    assert _computed(crashed.stdout) == every_step[:10]

    resumed = _pipeline(store)
    assert resumed.returncode == 0, resumed.stderr
    # Only what the crashed run had not committed: subject=02 starts at zscore.
    assert _computed(resumed.stdout) == every_step[10:]
    assert "27 tracked calls" in resumed.stdout

    again = _pipeline(store)
    assert again.returncode == 0, again.stderr
    assert _computed(again.stdout) == []
    table = resumed.stdout.partition("R² on held-out trials:")[2].split("\n\n")[0]
    assert table.strip()
    assert table in again.stdout  # the same scores, loaded from the store

    ctx = provstore.open(store, create=False)
    for subject in ("01", "02", "03"):
        r2 = [ctx.scope(subject=subject, alpha=a).r2 for a in (0.1, 10.0, 1000.0)]
        assert r2[0] > 0.8 > 0.3 > r2[2]  # strong regularization underfits
        assert len(ctx.history(f"subject={subject}/alpha=10.0/r2")) == 1  # reruns add no version
