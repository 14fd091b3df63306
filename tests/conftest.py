"""Shared fixtures: every test gets its own real SQLite store under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

import provstore


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "study"


@pytest.fixture
def ctx(store_dir: Path) -> provstore.Context:
    return provstore.open(store_dir)


@pytest.fixture(autouse=True)
def _fresh_hash_warnings() -> None:
    # The pickle-fallback warning fires once per type per process; tests that
    # expect it must not depend on which test hashed the type first.
    from provstore import hashing

    hashing._warned_types.clear()
