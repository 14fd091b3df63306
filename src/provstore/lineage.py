"""History of a name: every version, with the artifact and the run behind it.

This is the first cut: versions, artifacts and runs. The producing call of a
version (``Version.call``) and the lineage graph are filled in by tracking.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .runs import status_of

__all__ = ["History", "RunInfo", "Version"]


@dataclass(frozen=True)
class RunInfo:
    """The process that wrote a version."""

    id: int
    host: str
    pid: int
    user: str | None
    started: dt.datetime
    status: str

    def __str__(self) -> str:
        return f"run {self.id} ({self.user or '?'}@{self.host} pid {self.pid}, {self.status})"


@dataclass(frozen=True)
class Version:
    """One version of a binding.

    Attributes
    ----------
    number : int
        1 for the first binding of the name in its scope, then 2, 3...
    artifact_id : int or None
        None when this version records a deletion.
    summary : dict
        Type, dtype and shape (or size) of the value, as the backend described it.
    origin : str or None
        ``file:line`` of the assignment that made this version.
    call : object or None
        The tracked call that produced the value (None for plain assignments).
    """

    number: int
    scope: str
    name: str
    artifact_id: int | None
    digest: str | None
    format: str | None
    size: int | None
    summary: dict[str, Any]
    created: dt.datetime
    origin: str | None
    run: RunInfo | None
    call: Any = None

    @property
    def deleted(self) -> bool:
        """Whether this version is a deletion (a tombstone)."""
        return self.artifact_id is None

    @property
    def path(self) -> str:
        """The qualified name, ``scope/name``."""
        return f"{self.scope}/{self.name}" if self.scope else self.name

    def describe(self) -> str:
        """One line: format, dtype and shape (or type and size)."""
        if self.deleted:
            return "deleted"
        s = self.summary
        parts = [self.format or "?", str(s.get("dtype") or s.get("type", ""))]
        if s.get("shape") is not None:
            parts.append("x".join(map(str, s["shape"])) or "scalar")
        parts.append(_size(self.size or 0))
        return "  ".join(p for p in parts if p)


@dataclass
class History:
    """Every version of one name in one scope, oldest first.

    ``str(history)`` renders a readable table; ``history.latest`` is the
    current version (possibly a deletion).
    """

    scope: str
    name: str
    versions: list[Version] = field(default_factory=list)

    @classmethod
    def from_rows(cls, scope: str, name: str, rows: Sequence[Any]) -> History:
        """Build a history from :data:`provstore.db.queries.VERSIONS` rows."""
        versions = [_version(scope, name, r) for r in rows]
        return cls(scope, name, versions)

    @property
    def path(self) -> str:
        """The qualified name, ``scope/name``."""
        return f"{self.scope}/{self.name}" if self.scope else self.name

    @property
    def latest(self) -> Version:
        """The newest version (a deletion if the name was deleted last)."""
        return self.versions[-1]

    @property
    def call(self) -> Any:
        """The call that produced the current version, if it was tracked."""
        return self.latest.call

    def __len__(self) -> int:
        return len(self.versions)

    def __iter__(self) -> Iterator[Version]:
        return iter(self.versions)

    def __getitem__(self, index: int) -> Version:
        return self.versions[index]

    def __str__(self) -> str:
        lines = [f"{self.path}: {len(self.versions)} version(s)"]
        for v in self.versions:
            when = v.created.strftime("%Y-%m-%d %H:%M:%S")
            digest = f"{v.digest[:12]}" if v.digest else "-" * 12
            lines.append(f"  v{v.number:<3} {when}  {digest}  {v.describe()}")
            if v.run is not None:
                lines.append(f"        by {v.run}")
            if v.origin:
                lines.append(f"        at {v.origin}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<History {self.path!r}: {len(self.versions)} version(s)>"


def _version(scope: str, name: str, r: Any) -> Version:
    run = None
    if r.run_id is not None:
        run = RunInfo(r.run_id, r.host, r.pid, r.user, r.run_started,
                      status_of(r.run_status, r.run_heartbeat))
    return Version(
        number=r.version, scope=scope, name=name, artifact_id=r.artifact_id, digest=r.digest,
        format=r.format, size=r.size, summary=json.loads(r.summary) if r.summary else {},
        created=r.created, origin=r.origin, run=run,
    )


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
