"""Python blocks of the docs, turned into programs that keep the docs' line numbers.

:func:`parse` reads a markdown page into :class:`Block` records (with the ``docs-test``
markers written right before each block); :func:`assemble` lays a page's runnable blocks out
as one script whose line *n* is line *n* of the page, so a traceback names the doc's line.
``tests/test_docs.py`` runs the result; its docstring describes the markers.
"""

from __future__ import annotations

import doctest
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Block", "DocError", "Program", "assemble", "parse"]

_FENCE = re.compile(r"^[ \t]*(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")
# A marker opens its own line: one quoted in running text (`<!-- docs-test ... -->`) is prose.
_MARKER = re.compile(r"^[ \t]*<!--\s*docs-test\s+(?P<kind>[a-z]+)\s*:(?P<body>.*?)-->",
                     re.DOTALL | re.MULTILINE)
_KINDS = ("prelude", "skip", "file", "script")
_SCRIPT_NAME = re.compile(r"[A-Za-z_][\w-]*\.py")


class DocError(ValueError):
    """A marker the test cannot honour: unknown, misplaced or malformed."""


@dataclass
class Block:
    """One fenced Python block of a page, with the markers written right before it.

    ``line`` is the 1-based line of the block's first code line; ``code`` is dedented and
    keeps one entry per source line; ``prelude`` maps page lines to prelude code lines.
    """

    doc: str
    line: int
    code: list[str]
    prelude: dict[int, str] = field(default_factory=dict)
    skip: str | None = None
    file: str | None = None
    script: str | None = None
    markers: int = 0

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def last_line(self) -> int:
        return self.line + len(self.code) - 1

    def statements(self) -> dict[int, str]:
        """Page line -> code line; interactive (``>>>``) blocks keep only their input."""
        if not any(line.lstrip().startswith(">>>") for line in self.code):
            return {self.line + i: text for i, text in enumerate(self.code)}
        first = next(line for line in self.code if line.strip())
        if not first.lstrip().startswith(">>>"):
            # doctest would take the lines before the first prompt as prose: never run.
            raise DocError(f"{self.where}: code before the first '>>>' prompt; make every "
                           "line of an interactive block a '>>>' or '...' line, or its output")
        placed: dict[int, str] = {}
        text = "\n".join(self.code) + "\n"
        for example in doctest.DocTestParser().get_examples(text):
            for i, src in enumerate(example.source.rstrip("\n").split("\n")):
                placed[self.line + example.lineno + i] = src
        return placed


def parse(path: Path, name: str) -> list[Block]:
    """Every ``python`` block of the page at `path` (shown as `name`), in order."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = _closing(lines, i, match, name)
        if match["info"] in ("python", "py"):
            code = textwrap.dedent("\n".join(lines[i + 1:end])).split("\n")
            block = Block(name, i + 2, code)
            _attach_markers(block, lines, i)
            blocks.append(block)
        i = end + 1
    _check_stray_markers(lines, blocks, name)
    return blocks


def _closing(lines: list[str], start: int, match: re.Match[str], name: str) -> int:
    fence = match["fence"]
    for j in range(start + 1, len(lines)):
        if lines[j].strip().startswith(fence) and not lines[j].strip().strip(fence[0]):
            return j
    raise DocError(f"{name}:{start + 1}: code block never closed")


def _attach_markers(block: Block, lines: list[str], fence: int) -> None:
    """Read the marker comments that end on the lines right above the fence."""
    end = fence - 1
    while end >= 0 and lines[end].rstrip().endswith("-->"):
        start = end
        while start > 0 and not lines[start].lstrip().startswith("<!--"):
            start -= 1
        marker = _MARKER.search("\n".join(lines[start:end + 1]))
        if marker is None:
            return
        _apply(block, marker["kind"], marker["body"].split("\n"), start + 1)
        end = start - 1


def _apply(block: Block, kind: str, rows: list[str], line: int) -> None:
    """Record marker `kind` whose text `rows` starts on page line `line`."""
    where = f"{block.doc}:{line}"
    block.markers += 1
    if kind not in _KINDS:
        raise DocError(f"{where}: unknown marker 'docs-test {kind}:' (use one of {_KINDS})")
    if kind == "prelude":
        rows = [rows[0].strip(), *textwrap.dedent("\n".join(rows[1:])).split("\n")]
        block.prelude.update({line + i: text for i, text in enumerate(rows) if text.strip()})
        if not block.prelude:
            raise DocError(f"{where}: 'docs-test prelude:' without code")
        return
    value = " ".join(" ".join(rows).split())
    if not value:
        raise DocError(f"{where}: 'docs-test {kind}:' needs a value")
    if kind in ("file", "script") and not _SCRIPT_NAME.fullmatch(value):
        raise DocError(f"{where}: 'docs-test {kind}: {value}' must name a .py file")
    if block.file is not None or block.script is not None or block.skip is not None:
        raise DocError(f"{where}: one block takes one of 'docs-test file/script/skip:'")
    setattr(block, kind, value)


def _check_stray_markers(lines: list[str], blocks: list[Block], name: str) -> None:
    # A marker that is not right above a Python block would silently stop applying.
    seen = len(_MARKER.findall("\n".join(lines)))
    used = sum(b.markers for b in blocks)
    if seen != used:
        raise DocError(f"{name}: {seen - used} 'docs-test' marker(s) not right above a "
                       "```python block")


@dataclass
class Program:
    """What running a page takes: the main script and the files written beside it."""

    script: str
    files: dict[str, str]
    skipped: list[Block]
    origin: dict[tuple[str, int], Block]
    launchers: set[tuple[str, int]] = field(default_factory=set)


def assemble(blocks: list[Block], main: str,
             substitute: Callable[[str], str] = lambda s: s) -> Program:
    """Lay `blocks` out as script `main` plus ``file:``/``script:`` files, by page line."""
    size = max((b.last_line for b in blocks), default=0) + 1
    rows = [""] * size
    files: dict[str, str] = {}
    skipped: list[Block] = []
    origin: dict[tuple[str, int], Block] = {}
    launchers: set[tuple[str, int]] = set()
    for block in blocks:
        if block.skip is not None:
            skipped.append(block)
            continue
        for line, text in block.prelude.items():
            rows[line - 1] = text
            origin[(main, line)] = block
        target = block.file or block.script
        if target is None:
            for line, text in block.statements().items():
                rows[line - 1] = substitute(text)
                origin[(main, line)] = block
            continue
        padded = [""] * (block.line - 1) + [substitute(t) for t in block.code]
        files[target] = "\n".join(padded) + "\n"
        origin.update({(target, block.line + i): block for i in range(len(block.code))})
        if block.script is not None:
            # Run it as its own program here, after the blocks above it.
            rows[block.line - 2] = (f"import subprocess, sys; subprocess.run([sys.executable, "
                                    f"{block.script!r}], check=True)")
            origin[(main, block.line - 1)] = block
            launchers.add((main, block.line - 1))
    return Program("\n".join(rows) + "\n", files, skipped, origin, launchers)
