"""Listing tracked calls: what ran, where, how long, and why it failed."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any

from ..codeversion import function_identity
from ..db import queries as q
from ..scope import display
from ..store import Store

__all__ = ["CallSummary", "list_calls"]

STATUSES = ("done", "failed", "running", "orphaned", "expired")


@dataclass(frozen=True)
class CallSummary:
    """One tracked call as ``provstore calls`` lists it.

    ``scope`` is the scope of the first binding made from the call (None for
    a result bound nowhere); ``lease_host``/``lease_pid`` name the process
    holding a running call's lease, ``lease_expires`` when it lapses unless
    renewed; ``error`` is a failure's exception.
    """

    id: int
    function: str
    status: str
    scope: str | None
    started: dt.datetime
    finished: dt.datetime | None
    duration: float | None
    run_id: int | None
    host: str
    pid: int
    error: str | None
    last_hit: dt.datetime | None
    params: dict[str, Any]
    lease_host: str | None
    lease_pid: int | None
    lease_expires: dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (times as ISO strings)."""
        return {k: v.isoformat() if isinstance(v, dt.datetime) else v
                for k, v in asdict(self).items()}

    def __str__(self) -> str:
        took = "" if self.duration is None else f" in {self.duration:.3g} s"
        where = f" in {display(self.scope)}" if self.scope is not None else ""
        line = f"call {self.id} {self.function}{where}: {self.status}{took} (run {self.run_id})"
        if self.status == "running" and self.lease_host is not None:
            line += f", computed by {self.lease_host}:{self.lease_pid}"
        if self.error:
            line += f"\n  {self.error.splitlines()[-1]}"
        return line


def list_calls(store: Store, *, function: Any = None, status: str | None = None,
               run: int | None = None, limit: int | None = None) -> list[CallSummary]:
    """The tracked calls of *store*, newest first, filtered as asked.

    Parameters
    ----------
    store : Store
        ``ctx.store``.
    function : callable or str, optional
        A tracked or plain function, ``"module:qualname"``, or a qualname
        alone or its last part (``"smooth"``, ``"Model.fit"``: any module).
    status : str, optional
        One of ``done``, ``failed``, ``running``, ``orphaned``, ``expired``.
    run : int, optional
        A run id.
    limit : int, optional
        At most this many calls.

    Returns
    -------
    list of CallSummary
    """
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    name = function if function is None or isinstance(function, str) else (
        function_identity(function))
    pattern = dotted = None
    if name is not None and ":" not in name:
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern, dotted = f"%:{escaped}", f"%.{escaped}"
    stmt = q.CALLS_LISTING if limit is None else q.CALLS_LISTING.limit(limit)
    rows = store.query(stmt, {"function": name, "pattern": pattern, "dotted": dotted,
                              "status": status, "run_id": run})
    return [CallSummary(
        r.id, r.function, r.status, r.scope, r.started, r.finished, r.duration, r.run_id,
        r.host, r.pid, r.error, r.last_hit, json.loads(r.params or "{}"), r.lease_host,
        r.lease_pid, r.lease_expires) for r in rows]
