"""Drawing lineage for people: the text tree of ``str(history)`` and notebook HTML.

The notebook graph is drawn by Graphviz's ``dot`` when it is installed (found
on PATH); without it the page says how to get it and shows the rest.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from typing import Protocol

from .model import LineageGraph, Node, Version

__all__ = ["Shown", "call_line", "history_html", "leaf_text", "render_tree", "svg_of"]


class Shown(Protocol):
    """What the notebook display needs of a history."""

    @property
    def path(self) -> str: ...

    @property
    def versions(self) -> list[Version]: ...

    @property
    def latest(self) -> Version: ...

    def upstream(self) -> LineageGraph: ...


def render_tree(g: LineageGraph) -> list[str]:
    """Lines under the root of ``str(history)``: the root's origin, then each input.

    A call met again (a diamond) is named, not redrawn, so the text stays
    linear in the size of the graph.
    """
    lines: list[str] = []
    drawn: set[str] = set()
    made = g.producer(g.root.id)
    if made is None:
        lines.append(f"← {leaf_text(g, g.root)}")
        return lines
    lines.append(f"← {call_line(made)}")
    _inputs(g, made, "  ", lines, drawn)
    return lines


def _inputs(g: LineageGraph, call: Node, indent: str, lines: list[str], drawn: set[str]) -> None:
    drawn.add(call.id)
    for edge, node in g.parents(call.id):
        if edge.kind != "input":
            continue
        if node.kind == "file":
            lines.append(f"{indent}{edge.name} ← file {node.path}")
            continue
        title = ", ".join(map(str, node.names[:2])) or f"artifact {node.artifact_id}"
        made = g.producer(node.id, call.id)
        if made is None:
            lines.append(f"{indent}{edge.name} ← {title} ← {leaf_text(g, node)}")
        elif made.id in drawn:
            lines.append(f"{indent}{edge.name} ← {title} ← {call_line(made)}  (call "
                         f"{made.call.id if made.call else '?'}, drawn above)")
        else:
            lines.append(f"{indent}{edge.name} ← {title} ← {call_line(made)}")
            _inputs(g, made, indent + "  ", lines, drawn)


def call_line(node: Node) -> str:
    """A call node as one line: its label and its plain-value parameters."""
    assert node.call is not None
    params = node.call.describe_params()
    return f"{node.call.label}  {params}" if params else node.call.label


def leaf_text(g: LineageGraph, node: Node) -> str:
    """Where an artifact no walked call made came from: a file, an assignment, or unknown."""
    if node.truncated:
        return "… (deeper lineage: history.upstream())"
    origins = [n for e, n in g.parents(node.id) if e.kind in ("ingested", "assigned")]
    if not origins:
        return "(no recorded origin)"
    first = origins[0]
    text = f"ingested from {first.path}" if first.kind == "file" else first.label
    return f"{text} (+{len(origins) - 1})" if len(origins) > 1 else text



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


def _versions_table(h: Shown) -> str:
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


def history_html(h: Shown, *, graph: bool = True) -> str:
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
