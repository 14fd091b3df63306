"""A tracked call's life in the database: claim, keep, commit or fail.

Compute leases make at most one process compute a call key at a time.

A lease is a row keyed by the call key, holding its owner (a random id per
attempt), a fence number and an expiry. Claiming is one ``BEGIN IMMEDIATE``
transaction: if a finished call exists the caller loads it; if the lease is
free it is taken; if it expired (its owner died or stalled), or its owner is
a process of this host that no longer exists, it is taken over with
``fence + 1`` and the take-over is recorded. The owner renews the lease
from a heartbeat thread every third of its lifetime. Completing a call
checks, in the committing transaction, that owner and fence still match; a
holder that stalled past its expiry (``SIGSTOP``, a swapped-out VM) finds
its fence outdated and its result is discarded.

Expiry is read and written on the database's clock (:func:`db_now`): the
server's for PostgreSQL, so workers on hosts whose clocks disagree still
agree on when a lease expired; this host's for SQLite. On PostgreSQL the
claim and the commit of a key first take an advisory lock on it
(:func:`~provstore.db.engine.lock_for_write`): a claim then reads the
finished call and the lease as of one moment, never "not finished" before
a commit and "no lease" after it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import hashing
from .codeversion import CodeVersion
from .lazy import LazyModule
from .periodic import timer
from .records import ArtifactRow, InputRecord, Prepared
from .runs import utcnow
from .store import Store, commit_artifact

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from .db import driver
    from .db import queries as q
    from .db.driver import Tx
    from .db.engine import Readers
else:
    # Imported with a process's first miss: a hit reads through the store
    # alone (provstore.store says why).
    driver = LazyModule("provstore.db.driver")
    q = LazyModule("provstore.db.queries")

__all__ = [
    "DEFAULT_LEASE_SECONDS", "Claim", "LeaseKeeper", "alone", "claim", "commit", "fail",
    "finished_call",
    "lease_seconds", "release",
]

DEFAULT_LEASE_SECONDS = 30.0
_HOST = socket.gethostname()

def lease_seconds() -> float:
    """The lease lifetime: ``$PROVSTORE_LEASE_SECONDS`` or 30 s."""
    return float(os.environ.get("PROVSTORE_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))


@dataclass(frozen=True)
class Claim:
    """A lease held by this attempt, and the call row opened for it."""

    key: str
    owner: str
    fence: int
    call_id: int
    takeover_of: str | None
    # The call's code version was recorded when the claim was taken, in the
    # transaction that inserted the call's row; gc keeps a code version that
    # a call row uses, so the commit need not look for it again.
    code_recorded: bool = False
    #: Without a lease (``exclusive=True``): no row until the commit or the
    #: failure inserts the call's, from *row* (call_id is then 0).
    row: dict[str, Any] | None = None

    @property
    def leased(self) -> bool:
        """Whether a lease row and a running call row stand for this claim."""
        return self.row is None


def alone(key: str, call_row: dict[str, Any]) -> Claim:
    """The claim of a process that computes the store's calls alone (no lease)."""
    return Claim(key, "", 0, 0, None, row={**call_row, "key": key, "fence": 0,
                                           "takeover_of": None, "started": utcnow()})


def finished_call(store: Store, key: str) -> int | None:
    """Return the newest finished call with *key*, if any (the check before a claim).

    Every call asks this once; on SQLite it is read without SQLAlchemy
    (see :mod:`provstore.db.lite`), ~25 µs less than through it.
    """
    return store.finished_call(key)


def claim(engine: Engine, key: str, call_row: dict[str, Any], *,
          ttl: float, force: bool = False, readers: Readers | None = None) -> Claim | int | None:
    """Try to take the lease of *key*.

    Returns a :class:`Claim` when this attempt now computes the call, the id
    of a finished call when there is nothing to compute (never with
    ``force=True``), or None when a live owner is computing it.
    """

    def attempt(tx: Tx) -> Claim | int | None:
        tx.lock(f"lease {key}")  # PostgreSQL: one claim or commit of a key at a time
        state = tx.execute(q.CLAIM_STATE, {
            "key": key, "code_digest": call_row["code_digest"]}).first()
        if state.done is not None and not force:
            return int(state.done)
        lease = None if state.key is None else state
        now = tx.now()
        if lease is not None and lease.expires > now and not _owner_dead(lease):
            return None
        return _take(tx, key, lease, call_row, now, ttl, code_recorded=bool(state.code_known))

    try:
        return driver.transaction(engine, attempt, readers)
    except _TakenMeanwhile:
        return None


class _TakenMeanwhile(Exception):
    """Another process changed the lease between our read and our update."""


def _owner_dead(lease: Any) -> bool:
    """Whether the lease's owner is a process of this host that no longer exists.

    Then the lease is taken over at once: a rerun after a crash need not wait
    for the lease to expire. Owners on other hosts can only expire.
    """
    if lease.host != _HOST or lease.pid == os.getpid():
        return False
    try:
        os.kill(lease.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _take(tx: Tx, key: str, lease: Any, call_row: dict[str, Any], now: dt.datetime,
          ttl: float, *, code_recorded: bool) -> Claim:
    owner = os.urandom(16).hex()  # a uuid4's randomness, without building a UUID
    fence = 1 if lease is None else lease.fence + 1
    takeover = None if lease is None else lease.owner
    call_id = tx.execute(q.INSERT_CALL, {
        **call_row, "key": key, "fence": fence, "takeover_of": takeover, "status": "running",
        "started": now,
    }).scalar_one()
    expires, pid = now + dt.timedelta(seconds=ttl), os.getpid()
    if lease is None:
        tx.execute(q.INSERT_LEASE, {"key": key, "owner": owner, "fence": fence,
                                    "expires": expires, "host": _HOST, "pid": pid,
                                    "call_id": call_id})
    else:
        # The previous attempt's lease expired: it crashed, or stalled and
        # will find its fence outdated when it tries to commit.
        if not tx.execute(q.UPDATE_LEASE, {
                "p_key": key, "p_owner": owner, "p_fence": fence, "p_expires": expires,
                "p_host": _HOST, "p_pid": pid, "p_call_id": call_id,
                "p_old_fence": lease.fence}).rowcount:
            raise _TakenMeanwhile  # rolls back the call row: the other taker computes
        if lease.call_id is not None:
            tx.execute(q.EXPIRE_CALL, {"p_id": lease.call_id, "p_finished": now})
    return Claim(key, owner, fence, int(call_id), takeover, code_recorded)


def release(tx: Tx, c: Claim) -> bool:
    """Drop the lease of *c* if it still holds it; return whether it did."""
    return bool(tx.execute(q.DELETE_LEASE, _held(c)).rowcount)


def _held(c: Claim) -> dict[str, Any]:
    return {"p_key": c.key, "p_owner": c.owner, "p_fence": c.fence}


class LeaseKeeper:
    """Keeps a lease renewed while the owner computes.

    Renewal runs every third of the lifetime, so two missed beats still
    leave the lease valid. A renewal that finds the lease gone (taken over)
    sets :attr:`lost`; the result will then be refused at commit.

    The process's one periodic thread (:mod:`provstore.periodic`) renews
    every held lease: starting a thread per call cost more than the rest of a
    tiny call's miss.
    """

    def __init__(self, engine: Engine, c: Claim, ttl: float) -> None:
        self.engine = engine
        self.claim = c
        self.ttl = ttl
        self.lost = False

    def __enter__(self) -> LeaseKeeper:
        timer().add(self, self.ttl / 3)
        return self

    def __exit__(self, *exc: object) -> None:
        timer().remove(self)

    def beat(self) -> bool:
        """Renew, from the periodic thread; a lost lease needs no more renewals."""
        self.renew()
        return not self.lost

    def renew(self) -> None:
        """Push the lease's expiry one lifetime ahead; note when it was taken over."""
        c = self.claim

        def push(tx: Tx) -> bool:
            params = {**_held(c), "p_expires": tx.now() + dt.timedelta(seconds=self.ttl)}
            return not tx.execute(q.RENEW_LEASE, params).rowcount

        self.lost = driver.transaction(self.engine, push)


def fail(engine: Engine, c: Claim, error: str) -> None:
    """Record *c*'s call as failed with *error*, and release its lease, at once."""

    def record(tx: Tx) -> None:
        if not c.leased:
            assert c.row is not None
            tx.execute(q.INSERT_CALL, {**c.row, "status": "failed", "finished": utcnow(),
                                       "error": error[:10_000]})
            return
        tx.execute(q.FINISH_CALL, {
            "p_id": c.call_id, "p_status": "failed", "p_finished": utcnow(),
            "p_duration": None, "p_kind": None, "p_error": error[:10_000]})
        release(tx, c)

    driver.transaction(engine, record)


OutputRows = list[tuple[str, int, int]]


def commit(store: Store, c: Claim, prepared: list[Prepared], *, kind: str, duration: float,
           code: CodeVersion, inputs: list[InputRecord]) -> tuple[int, OutputRows] | None:
    """Commit a finished call: outputs, inputs, code version and status, in one transaction.

    The object files of *prepared* are already published. Returns the
    call's id and output rows (``(kind, position, artifact_id)``, as
    :meth:`Store.call_outputs` reads them), or None, recording the call
    ``orphaned``, when the lease was taken over meanwhile (this attempt
    stalled past its expiry): the taker's result wins.
    """
    run_id = store.runs.run_id()

    def body(tx: Tx) -> tuple[int, list[tuple[int, bool]]] | None:
        tx.lock(f"lease {c.key}")  # a claim reads all of this or none
        now = utcnow()
        finish = {"p_id": c.call_id, "p_finished": now, "p_duration": duration,
                  "p_kind": kind, "p_error": None}
        if c.leased:
            call_id = c.call_id
            # Releasing first tells whether the lease is still ours, in one
            # statement: a taken-over call rolls nothing else in.
            if not release(tx, c):
                tx.execute(q.FINISH_CALL, {**finish, "p_status": "orphaned"})
                return None
        else:  # no lease: the call's row, finished, is inserted now
            assert c.row is not None
            call_id = int(tx.execute(q.INSERT_CALL, {
                **c.row, "status": "done", "finished": now, "duration": duration,
                "output_kind": kind}).scalar_one())
        if not c.code_recorded:
            _record_code(tx, code, now)
        stored = [commit_artifact(tx, p, run_id, now) for p in prepared]
        if stored:  # a call returning () has none, and is still done
            tx.execute(q.INSERT_CALL_OUTPUT, [
                {"call_id": call_id, "position": i, "artifact_id": a}
                for i, (a, _) in enumerate(stored)])
        _record_inputs(tx, call_id, inputs)
        if c.leased:
            tx.execute(q.FINISH_CALL, {**finish, "p_status": "done"})
        return call_id, stored

    done = driver.transaction(store.engine, body, store.readers)
    if done is None:
        return None
    call_id, stored = done
    for (artifact_id, inserted), p in zip(stored, prepared):
        if inserted:  # committed: the row just written, so loading the result reads nothing
            store.note_artifact(ArtifactRow(
                id=artifact_id, digest=p.digest, format=p.backend.name, suffix=p.suffix,
                size=p.size, file_digest=p.file_digest, inline=p.inline,
                meta=_as_read(p.meta), summary=_as_read(p.summary)))
    return call_id, [(kind, i, artifact_id) for i, (artifact_id, _) in enumerate(stored)]


_FLAT = frozenset({str, int, float, bool, type(None)})


def _as_read(value: dict[str, Any] | None) -> dict[str, Any]:
    """*value* as it reads back from its JSON column (tuples become lists...)."""
    if not value:
        return {}
    if all(type(k) is str and type(v) in _FLAT for k, v in value.items()):
        return dict(value)  # a flat dict of scalars reads back as it is
    return dict(json.loads(json.dumps(value)))


def _record_code(tx: Tx, code: CodeVersion, now: dt.datetime) -> None:
    if tx.execute(q.CODE_BY_DIGEST, {"digest": code.digest}).first() is not None:
        return  # its parts were recorded with it
    tx.execute(q.INSERT_CODE, {
        "digest": code.digest, "identity": code.identity, "source": code.source,
        "deps": json.dumps(code.deps, sort_keys=True), "pinned": code.pinned,
        "created": now})
    # Each helper, class and constant the key depends on gets a row of its own
    # (keyed by its own digest), so explain and diff can show how it changed.
    names = {d: name for name, d in sorted(code.deps.items(), reverse=True)}
    for part, source in code.parts.items():
        if part != code.digest and tx.execute(
                q.CODE_BY_DIGEST, {"digest": part}).first() is None:
            tx.execute(q.INSERT_CODE, {
                "digest": part, "identity": names.get(part, ""), "source": source,
                "deps": "{}", "pinned": None, "created": now})


def _record_inputs(tx: Tx, call_id: int, inputs: list[InputRecord]) -> None:
    rows = []
    for i in inputs:
        artifact_id = i.artifact_id
        if artifact_id is None and i.stored_file:  # equal to a stored value: links to it
            # Only stored files (arrays, images...): an argument 5 is not
            # the lineage of every artifact whose value is 5.
            artifact_id = tx.execute(q.ANY_ARTIFACT_BY_DIGEST, {
                "algorithm": hashing.ALGORITHM, "digest": i.digest}).scalar()
        rows.append({"call_id": call_id, "name": i.name, "digest": i.digest,
                     "artifact_id": artifact_id, "file_path": i.file_path,
                     # JSON's text of an int is its repr, without an encoder's setup.
                     "summary": (repr(i.summary) if type(i.summary) is int
                                 else json.dumps(i.summary))})
    if rows:
        tx.execute(q.INSERT_CALL_INPUT, rows)
