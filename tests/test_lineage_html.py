"""Notebook display of histories: tree, versions table, SVG graph via Graphviz."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

import provstore


@provstore.track
def double(x: np.ndarray) -> np.ndarray:
    return x * 2


@pytest.fixture
def fake_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `dot` on PATH that echoes its DOT input inside an SVG, as Graphviz would draw it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    dot = bindir / "dot"
    dot.write_text('#!/bin/sh\necho \'<?xml version="1.0"?>\'\necho "<svg>"\ncat\necho "</svg>"\n')
    dot.chmod(dot.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return dot


def test_html_shows_tree_versions_and_graph(ctx: provstore.Context, fake_dot: Path) -> None:
    ctx.raw = np.arange(3.0)
    ctx.doubled = double(ctx.raw)
    ctx.doubled = np.zeros(2)
    page = ctx.history("doubled")._repr_html_()
    assert page.startswith("<h4>doubled</h4>")
    assert page.count("<tr>") == 3  # header + two versions
    assert "double(" in page and "assignment" in page
    assert page.count("<svg>") == 1 and "<?xml" not in page  # inline element only
    assert "digraph lineage" in page  # the DOT went through dot


def test_html_without_graphviz_says_how_to_get_the_graph(ctx: provstore.Context,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot anywhere
    ctx.raw = np.arange(3.0)
    ctx.doubled = double(ctx.raw)
    page = ctx.history("doubled")._repr_html_()
    assert "<svg" not in page and "Install Graphviz" in page
    assert "&lt;" not in page.split("<pre>")[0]  # the heading is not double-escaped
