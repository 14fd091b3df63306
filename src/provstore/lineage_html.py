"""Notebook display of a history: the lineage tree, a versions table, an SVG graph.

The graph is drawn by Graphviz's ``dot`` when it is installed (found on PATH);
without it the page says how to get it and shows the rest.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .lineage import History

__all__ = ["history_html", "svg_of"]

_STYLE = "border-collapse:collapse;font-family:monospace;font-size:90%"
_CELL = "border:1px solid #ccc;padding:2px 6px;text-align:left"


def svg_of(dot: str, *, timeout: float = 20.0) -> str | None:
    """Render DOT text to SVG with Graphviz, or None when ``dot`` is unavailable."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-Tsvg"], input=dot, capture_output=True, text=True,
                              timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    svg = done.stdout
    start = svg.find("<svg")  # drop the XML prolog and doctype: inline HTML wants the element
    return svg[start:] if start >= 0 else None


def _versions_table(h: History) -> str:
    head = ["version", "created", "value", "digest", "made by", "where"]
    rows = []
    for v in h.versions:
        call = v.call
        made_by = call.label if call is not None else ("deleted" if v.deleted else "assignment")
        cells = [f"v{v.number}", v.created.strftime("%Y-%m-%d %H:%M:%S"), v.describe(),
                 (v.digest or "")[:12], made_by, v.origin or ""]
        rows.append("<tr>" + "".join(f'<td style="{_CELL}">{html.escape(str(c))}</td>'
                                     for c in cells) + "</tr>")
    header = "".join(f'<th style="{_CELL}">{c}</th>' for c in head)
    return f'<table style="{_STYLE}"><tr>{header}</tr>{"".join(rows)}</table>'


def history_html(h: History, *, graph: bool = True) -> str:
    """HTML for Jupyter: a heading, the lineage tree, the versions table and the graph."""
    parts = [f"<h4>{html.escape(h.path)}</h4>",
             f"<pre>{html.escape(str(h).split(chr(10) + chr(10))[0])}</pre>",
             _versions_table(h)]
    if graph and h.versions and not h.latest.deleted:
        try:
            svg = svg_of(h.upstream().to_dot())
        except ValueError:  # a history built without a store has no graph
            svg = None
        parts.append(svg if svg is not None else
                     "<p><i>Install Graphviz (<code>dot</code>) to see the lineage graph.</i></p>")
    return "\n".join(parts)
