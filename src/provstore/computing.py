"""A tracked call's arguments and, on a miss, its computation.

:class:`Input` is one bound argument (its digest, and the stored artifact it
is, if known). :class:`Computation` is a miss: take the key's lease, compute,
publish the outputs and commit them with the inputs and code version (see
:mod:`provstore.leases`), or load the result of whoever committed first.
:func:`load_outputs` loads a finished call's result. The wrapper that
decides between a hit and a miss is :mod:`provstore.tracking`.
"""

from __future__ import annotations

import contextlib
import json
import json.encoder
import os
import socket
import time
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from . import callkeys, leases
from .codeversion import CodeVersion
from .errors import StoreError
from .files import File
from .lazy import LazyModule
from .leases import Claim, LeaseKeeper, claim, lease_seconds
from .records import InputRecord
from .saving import prepare
from .store import Store

if TYPE_CHECKING:
    from sqlalchemy import exc as sa_exc
else:
    sa_exc = LazyModule("sqlalchemy.exc")  # imported with the first miss's commit

__all__ = ["COMPUTING", "Computation", "Hit", "Input", "args_text", "load_outputs",
           "summary_of"]

_HOST = socket.gethostname()
# A commit whose linked copies gc deleted prepares them again; each retry needs
# gc to win a fresh race, so a few attempts make failure practically impossible.
_COMMIT_ATTEMPTS = 10
# Keys this thread or task is computing right now: a call that needs its own
# key again would wait forever on its own lease.
COMPUTING: ContextVar[frozenset[str]] = ContextVar("provstore_computing", default=frozenset())


# json's own string encoder (C), as json.dumps writes strings by default.
_quoted = json.encoder.encode_basestring_ascii
# Exact types only: a bool or an IntEnum is an int with a digest of its own.
_SCALARS = frozenset({int, str})
_SCALAR_DIGESTS: dict[tuple[type, Any], str] = {}


class Input:
    """One bound argument: its digest, and the artifact it is, if known."""

    __slots__ = ("artifact_id", "digest", "file_path", "short_scalar", "summary")

    def __init__(self, digest: str, artifact_id: int | None, file_path: str | None,
                 summary: Any, *, short_scalar: bool = False) -> None:
        self.digest = digest
        self.artifact_id = artifact_id
        self.file_path = file_path
        self.summary = summary
        self.short_scalar = short_scalar

    @classmethod
    def of(cls, store: Store | None, value: Any, *, instance: bool = False) -> Input:
        kind = type(value)
        if kind in _SCALARS and not instance and (kind is int or len(value) <= 256):
            # Ints and short strings, the most common small arguments: their
            # digest depends on their value only, so it is computed once (and
            # the identity map never holds them: they are not rememberable).
            digest = _SCALAR_DIGESTS.get((kind, value))
            if digest is None:
                if len(_SCALAR_DIGESTS) >= 4096:
                    _SCALAR_DIGESTS.clear()
                digest = _SCALAR_DIGESTS[(kind, value)] = callkeys.value_digest(value)
            recent = store.identity.recent_artifact(digest) if store is not None else None
            return cls(digest, recent, None, value, short_scalar=True)
        known = store.identity.known(value) if store is not None else None
        if known is not None:
            return cls(known.digest, known.artifact_id, None, None)
        path = str(value.path) if isinstance(value, File) else None
        # Instances bound to a method are keyed by their state; callables and
        # estimators by code and state (see callkeys); other values by content.
        digest = (callkeys.instance_digest(value) if instance
                  else callkeys.value_digest(value))
        # A small value equal to what a tracked call just returned is that
        # output (ints, lists...: no identity to remember them by).
        recent = store.identity.recent_artifact(digest) if store is not None else None
        return cls(digest, recent, path, value)


class Hit:
    """A finished call's outputs, loaded."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Computation:
    """A miss: lease, compute, commit (or defer to whoever committed first).

    Whatever fails once the lease is held (the body, storing its result,
    the database) records the call ``failed`` and releases the lease at
    once, so the next caller with the key computes instead of waiting.
    """

    def __init__(self, func: Callable[..., Any], identity: str, defined_at: str, store: Store,
                 key: str, cv: CodeVersion, inputs: dict[str, Input]) -> None:
        self.func, self.identity, self.defined_at = func, identity, defined_at
        self.store, self.key, self.cv, self.inputs = store, key, cv, inputs
        self._ttl: float | None = None
        # How many calls this process had computed alone when this miss was
        # found: more when it claims, and the database is read again. (One
        # that ended sooner is in the memo: a thread notes its key first.)
        self.generation = store.computing.generation if store.computing is not None else 0
        self.committed_alone: int | None = None  # the call's id, once committed without a lease

    @property
    def ttl(self) -> float:
        """The lease lifetime, read once: the claim and its keeper use the same."""
        if self._ttl is None:  # (a call computed alone has no lease)
            self._ttl = lease_seconds()
        return self._ttl

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any], recompute: bool) -> Any:
        c = self._claim(recompute)
        if isinstance(c, int):  # another process computed it meanwhile
            self.store.note_hit(c)
            return load_outputs(self.store, c)
        with self._holding(c) as holding:
            self.store.runs.count_miss()
            started = time.perf_counter()
            value = self.func(*args, **kwargs)
            holding.committed = self._commit_until_done(holding, value,
                                                        time.perf_counter() - started)
        return self._loaded(holding, value)

    async def arun(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                   recompute: bool) -> Any:
        """:meth:`run` for a coroutine function: waits and computes without blocking the loop."""
        c = await self._aclaim(recompute)
        if isinstance(c, int):  # another task or process computed it meanwhile
            self.store.note_hit(c)
            return load_outputs(self.store, c)
        with self._holding(c) as holding:
            self.store.runs.count_miss()
            started = time.perf_counter()
            value = await self.func(*args, **kwargs)
            holding.committed = self._commit_until_done(holding, value,
                                                        time.perf_counter() - started)
        return self._loaded(holding, value)

    def _holding(self, c: Claim) -> _Holding:
        """Keep the lease while computing and storing; fail the call on any error."""
        return _Holding(self, c)

    def _loaded(self, holding: _Holding, value: Any) -> Any:
        assert holding.committed is not None
        if not holding.ours:  # (our own commit noted its key already, in _commit)
            self.store.memo.note_key(self.key, holding.committed)
        # Another attempt's result won (ours was refused): return what it stored.
        computed = value if holding.ours else None
        return load_outputs(self.store, holding.committed, computed=computed)

    def _commit_until_done(self, holding: _Holding, value: Any, duration: float) -> int:
        committed = self._commit(holding.claim, value, duration)
        while committed is None:
            # Our lease was taken over while we stalled. The taker's result wins
            # if it commits; if the taker dies first, our value is as good as
            # any: claim the key again and commit it.
            again = self._claim(recompute=False)
            if isinstance(again, int):
                holding.ours = False
                return again
            holding.claim = again
            committed = self._commit(again, value, duration)
        return committed

    def _call_row(self) -> dict[str, Any]:
        params = {name: _short(i) for name, i in self.inputs.items()}
        return {"function": self.identity, "defined_at": self.defined_at,
                "code_digest": self.cv.digest,
                "params": params_text(params), "run_id": self.store.runs.run_id(),
                "host": _HOST, "pid": os.getpid()}

    def _try_claim(self, row: dict[str, Any], recompute: bool, *,
                   block: bool = True) -> Claim | int | None:
        lock = self.store.computing
        if lock is not None and lock.hold():
            return self._claim_alone(row, recompute, block)
        return claim(self.store.engine, self.key, row, ttl=self.ttl, force=recompute,
                     readers=self.store.readers)

    def _claim_alone(self, row: dict[str, Any], recompute: bool,
                     block: bool) -> Claim | int | None:
        """No lease: this process computes the store's calls alone (``exclusive=True``).

        None while another thread or task computes the key: a thread waits
        for it first (*block*); a task must not block its event loop.
        """
        lock = self.store.computing
        assert lock is not None
        running = lock.begin_alone(self.key)
        if running is not None:
            if block:
                running.wait()
            return None
        try:
            if not recompute:
                # Committed by another thread since this call looked (each notes
                # its key before it lets waiters go), or by this process earlier.
                done = self.store.memo.call_for(self.key)
                if done is None and self.generation != lock.generation:
                    done = self.store.finished_call(self.key)
                if done is not None:
                    lock.end_alone(self.key)
                    return done
            return leases.alone(self.key, row)
        except BaseException:
            lock.end_alone(self.key)  # or the threads waiting for it would wait forever
            raise

    def _claim(self, recompute: bool) -> Claim | int:
        row, delay = self._call_row(), 0.005
        while (c := self._try_claim(row, recompute)) is None:
            time.sleep(delay)  # a live owner computes it: wait, then look again
            delay = min(delay * 1.5, 0.5)
        return c

    async def _aclaim(self, recompute: bool) -> Claim | int:
        # Imported here: asyncio costs every start-up ~15 ms, and a coroutine
        # function's event loop has imported it already.
        import asyncio

        row, delay = self._call_row(), 0.005
        while (c := self._try_claim(row, recompute, block=False)) is None:
            await asyncio.sleep(delay)  # another task or process computes it
            delay = min(delay * 1.5, 0.5)
        return c

    def _fail(self, c: Claim, exc: BaseException) -> None:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        leases.fail(self.store.engine, c, text)

    def abandon(self, c: Claim, exc: BaseException) -> None:
        """Fail the call of *c* after *exc*, unless it committed already."""
        # Publishing the outputs or committing them failed (a full disk): drop
        # the lease now, or every retry waits for it to expire. Unless the
        # error came after the commit itself, which then stands.
        with contextlib.suppress(Exception):  # the database may be what failed
            if c.leased:
                committed = self.store.finished_call(self.key) == c.call_id
            else:  # computing alone, the call has no row before it commits
                committed = self.committed_alone is not None
            if not committed:
                self._fail(c, exc)

    def _commit(self, c: Claim, value: Any, duration: float) -> int | None:
        kind = "tuple" if type(value) is tuple else "single"
        elements = list(value) if kind == "tuple" else [value]
        inputs = [InputRecord(name, i.digest, i.artifact_id, i.file_path, summary_of(i.summary),
                              stored_file=not i.short_scalar)
                  for name, i in self.inputs.items()]
        for _ in range(_COMMIT_ATTEMPTS):
            prepared = [prepare(self.store, v) for v in elements]  # files published first
            try:
                done = leases.commit(self.store, c, prepared, kind=kind, duration=duration,
                                     code=self.cv, inputs=inputs)
                break
            except sa_exc.IntegrityError:
                relinked = self.store.relinked(inputs)
                if not self.store.collected(prepared) and relinked == inputs:
                    raise
                # gc removed a stored copy an output or input was linked to
                # before the commit: store them again (as a bind does).
                inputs = relinked
        else:
            raise StoreError(
                f"could not commit a call of {self.identity} in the store {self.store.root}: gc "
                f"deleted the stored copy of an output or input {_COMMIT_ATTEMPTS} times while "
                "it committed; run gc less often, or call it again")
        if done is None:
            return None
        call_id, outputs = done
        if not c.leased:
            self.committed_alone = call_id
        # The rows just committed: loading the result reads none of them back.
        self.store.memo.note_outputs(call_id, outputs)
        # Before a thread waiting for this key (computing alone) looks again.
        self.store.memo.note_key(self.key, call_id)
        return call_id


class _Holding:
    """The claim a computation holds, and the call it committed, once it has.

    Entered, it keeps the lease renewed and marks the key as computed by
    this thread or task; an error before the commit fails the call and
    releases the lease. (A class rather than a generator context manager:
    a tiny call's miss pays for every call it makes.)
    """

    __slots__ = ("_keeper", "_token", "claim", "committed", "computation", "ours")
    _keeper: LeaseKeeper | None

    def __init__(self, computation: Computation, claim: Claim) -> None:
        self.computation = computation
        self.claim = claim
        self.committed: int | None = None
        self.ours = True  # False when another attempt's call finished the key instead

    def __enter__(self) -> _Holding:
        comp = self.computation
        self._token = COMPUTING.set(COMPUTING.get() | {comp.key})
        self._keeper = None
        if self.claim.leased:  # computing alone, there is no lease to keep
            try:
                self._keeper = LeaseKeeper(comp.store.engine, self.claim, comp.ttl)
                self._keeper.__enter__()
            except BaseException as exc:
                self._end(exc)
                raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        try:
            if self._keeper is not None:
                self._keeper.__exit__(kind, exc, tb)
        except BaseException as error:
            self._end(error)
            raise
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        comp = self.computation
        try:
            if exc is not None and self.committed is None:
                comp.abandon(self.claim, exc)
        finally:
            COMPUTING.reset(self._token)
            if not self.claim.leased and comp.store.computing is not None:
                comp.store.computing.end_alone(comp.key)


def load_outputs(store: Store, call_id: int, computed: Any = None) -> Any:
    """Load a finished call's outputs, remembering them and their call."""
    rows = store.memo.outputs(call_id)
    if rows is None:
        rows = store.call_outputs(call_id)
        store.memo.note_outputs(call_id, rows)
    if not rows:  # a single output always has its row: no rows is an empty tuple
        return ()
    kind = rows[0][0]
    values = []
    for position, (_, _, artifact_id) in enumerate(rows):
        row = store.artifact(artifact_id)
        element = _element(computed, kind, position)
        if row.inline is None or element is not None:
            # (Store.load notes an inline value it loads for this call itself.)
            store.identity.note_output(row.digest, call_id, artifact_id)
        values.append(store.load_output(artifact_id, call_id, computed=element))
    return tuple(values) if kind == "tuple" else values[0]


def _element(computed: Any, kind: str, position: int) -> Any:
    if computed is None:
        return None
    return computed[position] if kind == "tuple" else computed


def args_text(inputs: dict[str, Input]) -> str:
    text = ", ".join(f"{name}={_short(i)!r}" for name, i in inputs.items())
    return f"({text[:197]}...)" if len(text) > 200 else f"({text})"


def params_text(params: dict[str, Any]) -> str:
    """``json.dumps(params)`` for a call's arguments, written directly when it can be.

    (``json.dumps`` sets up an encoder on every call: a fifth of the Python
    time of a tiny call's miss went there.)
    """
    text = _flat_json(params)
    return json.dumps(params) if text is None else text


def _flat_json(value: Any) -> str | None:
    """JSON for ints, strings, None and dicts of them with string keys; None for the rest."""
    kind = type(value)
    if kind is int:
        return repr(value)  # JSON's text of an int
    if kind is str:
        return _quoted(value)
    if value is None:
        return "null"
    if kind is not dict:
        return None
    parts = []
    for name, element in value.items():
        text = _flat_json(element)
        if text is None or type(name) is not str:
            return None
        parts.append(f"{_quoted(name)}: {text}")
    return "{" + ", ".join(parts) + "}"


def _short(i: Input) -> Any:
    if i.artifact_id is not None:
        return {"artifact": i.artifact_id}
    if i.file_path is not None:
        return {"file": i.file_path}
    return summary_of(i.summary)


def summary_of(value: Any) -> Any:
    """A small JSON-able description of an argument for history and params."""
    if value is None or (isinstance(value, (bool, int, str)) and len(str(value)) <= 200):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None:
        return {"type": type(value).__name__, "shape": list(shape), "dtype": str(dtype)}
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
