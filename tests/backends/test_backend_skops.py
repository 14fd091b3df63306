"""scikit-learn estimators through skops: loaded without pickle, trusted types only if safe."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from store_files import only_file, stored_files

import provstore
from provstore.backends import objects, registry
from provstore.errors import BackendError, UnsafeLoadError
from provstore.testing import BackendConformance, assert_values_equal

BACKEND = registry.get("skops")
RNG = np.random.default_rng(11)
X = RNG.normal(size=(60, 4))
Y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype(int)
# Estimators are hashed through pickle (provstore.hashing warns once per type).
HASHED_BY_PICKLE = pytest.mark.filterwarnings("ignore:provstore hashes .* through pickle")


class ThresholdClassifier(ClassifierMixin, BaseEstimator):
    """A user-defined estimator: a type skops does not trust by default."""

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = threshold

    def fit(self, x: np.ndarray, y: np.ndarray) -> ThresholdClassifier:
        self.classes_ = np.unique(y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (x[:, 0] > self.threshold).astype(int)


def forest() -> RandomForestClassifier:
    """Trees hold raw node indices: skops does not trust their type by default."""
    return RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(X, Y)


def estimators() -> list[Any]:
    """Estimators whose every type skops trusts by default."""
    return [
        LogisticRegression().fit(X, Y),
        make_pipeline(StandardScaler(), PCA(n_components=2), LogisticRegression()).fit(X, Y),
        KMeans(n_clusters=2, n_init=2, random_state=0).fit(X),
        Ridge(alpha=0.5).fit(X, X[:, 0]),
        LogisticRegression(C=0.1),  # not fitted: parameters only
    ]


def assert_same_estimator(actual: Any, expected: Any) -> None:
    """Same type, parameters and fitted attributes (arrays bit for bit), same predictions."""
    _assert_same_attributes(actual, expected, "estimator")
    if hasattr(expected, "predict") and hasattr(expected, "n_features_in_"):
        np.testing.assert_array_equal(actual.predict(X), expected.predict(X))


def _assert_same_attributes(actual: Any, expected: Any, where: str) -> None:
    assert type(actual) is type(expected), where
    assert sorted(vars(actual)) == sorted(vars(expected)), where
    for name, value in vars(expected).items():
        _assert_same(getattr(actual, name), value, f"{where}.{name}")


def _assert_same(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, BaseEstimator):
        _assert_same_attributes(actual, expected, where)
    elif type(expected) in (list, tuple):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, (np.ndarray, np.generic, int, float, str, type(None), dict)):
        assert_values_equal(actual, expected, where)
    else:  # trees, random states: the predictions compared above cover their content
        assert type(actual) is type(expected), where


class TestSkops(BackendConformance):
    backend = BACKEND

    def sample_values(self) -> list[Any]:
        return estimators()

    def assert_equal(self, actual: Any, expected: Any) -> None:
        assert_same_estimator(actual, expected)


class TestSkopsCompressed(TestSkops):
    save_options = {"compress": True}


def test_other_values_are_not_estimators() -> None:
    for value in [np.zeros(3), {"a": 1}, LogisticRegression, "model"]:
        assert not BACKEND.can_save(value)


@HASHED_BY_PICKLE
@pytest.mark.parametrize("index", range(len(estimators()) + 1))
def test_store_round_trip_and_skops_opens_the_file(ctx: provstore.Context, index: int) -> None:
    model = [*estimators(), forest()][index]
    ctx.model = model
    assert_same_estimator(ctx.model, model)
    assert not stored_files(ctx, ".pkl")
    path = only_file(ctx, ".skops")
    assert_same_estimator(sio.load(path, trusted=sio.get_untrusted_types(file=path)), model)


@HASHED_BY_PICKLE
def test_safe_store_loads_trusted_sklearn_types(store_dir: Path) -> None:
    safe = provstore.open(store_dir, safe=True)
    model = estimators()[1]
    safe.model = model
    assert_same_estimator(safe.model, model)


@HASHED_BY_PICKLE
def test_tree_models_need_trust_under_safe(store_dir: Path) -> None:
    model = forest()
    provstore.open(store_dir).forest = model
    safe = provstore.open(store_dir, safe=True)
    with pytest.raises(UnsafeLoadError, match=r"sklearn\.tree\._tree\.Tree"):
        safe.get("forest")
    objects.trust("sklearn.tree._tree:Tree")
    try:
        assert_same_estimator(safe.get("forest"), model)
    finally:
        objects.untrust("sklearn.tree._tree:Tree")


@HASHED_BY_PICKLE
def test_untrusted_estimator_under_safe(store_dir: Path) -> None:
    model = ThresholdClassifier(0.25).fit(X, Y)
    provstore.open(store_dir).model = model
    # Trusted by its owner: safe=False loads it.
    assert_same_estimator(provstore.open(store_dir).get("model"), model)
    safe = provstore.open(store_dir, safe=True)
    with pytest.raises(UnsafeLoadError, match=r"test_backend_skops\.ThresholdClassifier.*trust"):
        safe.get("model")
    with pytest.raises(UnsafeLoadError):
        safe.get("model", safe=False)  # a load option cannot lift the check
    objects.trust(ThresholdClassifier)
    try:
        assert_same_estimator(safe.get("model"), model)
    finally:
        objects.untrust(ThresholdClassifier)


def test_missing_skops_says_how_to_install(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.skops"
    BACKEND.save(estimators()[0], path)
    monkeypatch.setitem(sys.modules, "skops.io", None)  # what an absent package looks like
    with pytest.raises(BackendError, match=r'pip install "provstore\[sklearn\]"'):
        BACKEND.load(path, {}, mmap_mode=None)
