"""Records and helpers shared by verify, gc, which and export."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from sqlalchemy import func, select

from ..db import queries as q
from ..errors import ProvstoreError
from ..lineage import format_size as _size

if TYPE_CHECKING:
    from ..store import Store


Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``, called as work advances (``total`` may be 0)."""
ProblemKind = Literal["missing", "size", "hash", "inline", "database", "stray", "orphan"]
KINDS: tuple[ProblemKind, ...] = get_args(ProblemKind)
NOTICES = frozenset({"orphan"})  # debris a crash may leave (DESIGN §4.2): reported, not failed
CHUNK = 500  # ids per IN list, far below SQLite's bound-parameter limit
_ci, _co = q.call_inputs, q.call_outputs


@dataclass(frozen=True)
class BindingRef:
    """A version of a (scope, name) binding; ``current`` when it is the newest."""

    scope: str
    name: str
    version: int
    current: bool

    @property
    def path(self) -> str:
        """``scope/name``."""
        return f"{self.scope}/{self.name}" if self.scope else self.name

    def __str__(self) -> str:
        return f"{self.path} v{self.version}" + ("" if self.current else " (old)")


@dataclass(frozen=True)
class CallRef:
    """A tracked call that read (``role="input"``) or returned an artifact."""

    id: int
    function: str
    role: str

    def __str__(self) -> str:
        return f"call {self.id} {self.function} ({self.role})"


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`verify`.

    ``kind`` is ``missing`` (no object file), ``size`` (truncated or appended),
    ``hash`` (changed bytes), ``inline`` (a value in the database that does not
    decode), ``database`` (SQLite integrity or foreign-key check), ``stray`` (a
    file provstore would never write under ``objects/``) or ``orphan`` (a
    well-formed object file with no row: debris of an interrupted write, which
    ``gc`` removes; a notice, not an error).
    """

    kind: ProblemKind
    message: str
    path: str | None = None
    artifact_id: int | None = None
    bindings: tuple[BindingRef, ...] = ()
    calls: tuple[CallRef, ...] = ()

    @property
    def severity(self) -> str:
        """``"error"``, or ``"notice"`` for orphans."""
        return "notice" if self.kind in NOTICES else "error"

    def __str__(self) -> str:
        lines = [f"{self.kind}: {self.message}"]
        lines += [f"  bound to {b}" for b in self.bindings]
        lines += [f"  used by {c}" for c in self.calls]
        return "\n".join(lines)


@dataclass
class VerifyReport:
    """What :func:`verify` checked and found; ``ok`` when no problem is an error."""

    objects: int = 0
    inline: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every object and row is intact (orphans are only notices)."""
        return not self.errors

    @property
    def errors(self) -> list[Problem]:
        """The problems that are errors."""
        return [p for p in self.problems if p.severity == "error"]

    def of_kind(self, kind: str) -> list[Problem]:
        """The problems of one kind."""
        return [p for p in self.problems if p.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        problems = [{**asdict(p), "severity": p.severity} for p in self.problems]
        return {"ok": self.ok, "objects": self.objects, "inline": self.inline,
                "bytes": self.bytes, "problems": problems}

    def __str__(self) -> str:
        head = (f"checked {self.objects} object files ({_size(self.bytes)}) and "
                f"{self.inline} inline values: ")
        if not self.problems:
            return head + "all intact"
        counts = ", ".join(f"{len(self.of_kind(k))} {k}" for k in KINDS if self.of_kind(k))
        return "\n".join([head + counts, *map(str, self.problems)])


# ------------------------------------------------------------------ helpers
def scan_objects(store: Store) -> dict[Path, os.stat_result]:
    """Every entry under ``objects/`` that is not a directory, with its lstat."""
    found: dict[Path, os.stat_result] = {}
    for parent, _dirs, names in os.walk(store.objects.objects):  # symlinked dirs not followed
        for name in names:
            path = Path(parent) / name
            try:
                found[path] = os.lstat(path)
            except FileNotFoundError:
                continue
    return found


def valid_object_name(store: Store, digest: str, suffix: str) -> bool:
    try:
        store.objects.path(digest, suffix)
    except ProvstoreError:
        return False
    return True


def is_object_name(store: Store, path: Path) -> bool:
    """Whether *path* is named as provstore names objects (shard/hex + suffix)."""
    rel = path.relative_to(store.objects.objects).parts
    if len(rel) != 2:
        return False
    stem, dot, rest = rel[1].partition(".")
    return valid_object_name(store, rel[0] + stem, dot + rest) and len(rel[0]) == 2


def chunks(ids: Iterable[Any]) -> Iterator[list[Any]]:
    items = list(ids)
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def tick(progress: Progress | None, phase: str, done: int, total: int) -> None:
    if progress is not None:
        progress(phase, done, total)




_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SPANS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(size: int | str) -> int:
    """Bytes from ``500000``, ``"500k"``, ``"10G"``, ``"1.5GiB"`` (k, M, G, T: powers of 1000).

    Raises
    ------
    ValueError
        Not a size.
    """
    if isinstance(size, int):
        number = size
    else:
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", size, re.IGNORECASE)
        if found is None:
            raise ValueError(f"{size!r} is not a size: write bytes or 500MB, 10G, 1.5GiB")
        number = int(float(found.group(1)) * _UNITS[(found.group(2) or "").lower()])
    if number < 0:
        raise ValueError(f"a size cannot be negative: {size!r}")
    return number


def parse_moment(when: dt.datetime | dt.timedelta | str, now: dt.datetime) -> dt.datetime:
    """A naive-UTC moment from a datetime, an age before *now*, or text.

    Text is an age (``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"``) or an
    ISO date or time (``"2026-01-31"``, ``"2026-01-31T12:00"``; UTC unless an
    offset is given).

    Raises
    ------
    ValueError
        Neither an age nor a date.
    """
    if isinstance(when, dt.timedelta):
        return now - when
    if isinstance(when, str):
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", when, re.IGNORECASE)
        if found is not None:
            return now - dt.timedelta(seconds=float(found.group(1))
                                      * _SPANS[found.group(2).lower()])
        try:
            when = dt.datetime.fromisoformat(when.strip())
        except ValueError:
            raise ValueError(f"{when!r} is neither an age (30d, 12h, 90m) nor a date "
                             "(2026-01-31)") from None
    if when.tzinfo is not None:  # stored times are naive UTC
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when


def bindings_of(store: Store, artifact_ids: Iterable[int]) -> dict[int, list[BindingRef]]:
    """Every binding version pointing at each artifact, current ones first."""
    b, b2 = q.bindings, q.bindings.alias("latest_b")
    latest = (select(func.max(b2.c.version))
              .where(b2.c.scope_id == b.c.scope_id, b2.c.name == b.c.name).scalar_subquery())
    stmt = (select(b.c.artifact_id, q.scopes.c.path, b.c.name, b.c.version,
                   (b.c.version == latest).label("current"))
            .join(q.scopes, q.scopes.c.id == b.c.scope_id))
    found: dict[int, list[BindingRef]] = {}
    for chunk in chunks(artifact_ids):
        for r in store.query(stmt.where(b.c.artifact_id.in_(chunk))):
            found.setdefault(r.artifact_id, []).append(
                BindingRef(r.path, r.name, r.version, bool(r.current)))
    for refs in found.values():
        refs.sort(key=lambda ref: (not ref.current, ref.path, -ref.version))
    return found


def calls_of(store: Store, artifact_ids: Iterable[int]) -> dict[int, list[CallRef]]:
    found: dict[int, list[CallRef]] = {}
    for chunk in chunks(artifact_ids):
        for table, role in ((_ci, "input"), (_co, "output")):
            stmt = (select(table.c.artifact_id, q.calls.c.id, q.calls.c.function)
                    .join(q.calls, q.calls.c.id == table.c.call_id)
                    .where(table.c.artifact_id.in_(chunk)).order_by(q.calls.c.id))
            for r in store.query(stmt):
                found.setdefault(r.artifact_id, []).append(CallRef(r.id, r.function, role))
    return found


