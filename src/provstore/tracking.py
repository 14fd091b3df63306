"""Tracked functions: memoized on inputs and code, with lineage.

``@provstore.track`` (or ``@ctx.track``) wraps a function. A call computes a
key from the function's identity, its code version (see
:mod:`provstore.codeversion`) and the canonical digests of its bound
arguments. A finished call with that key is a hit: its stored outputs are
loaded. Otherwise the caller takes the key's lease (see :mod:`provstore.leases`),
computes, and commits outputs, inputs and the call record in one transaction.
Callers that find the lease held wait, then load the winner's result.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import os
import socket
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, overload

import xxhash
from sqlalchemy.exc import IntegrityError

from . import ambient, hashing, leases
from .ambient import View
from .codeversion import FINGERPRINTS, CodeVersion, function_identity
from .errors import InvalidNameError
from .files import File
from .leases import Claim, LeaseKeeper, claim, lease_seconds
from .lineage import InputInfo
from .lineage.explain import explain_call
from .records import InputRecord
from .saving import prepare
from .store import Store

__all__ = ["FINGERPRINTS", "TrackedFunction", "track"]

F = TypeVar("F", bound=Callable[..., Any])
_HOST = socket.gethostname()
_warned_untracked: set[str] = set()


class TrackedFunction:
    """A function whose calls are memoized and recorded in a provstore store.

    Calling it returns what the function returns; on a hit the value is loaded
    from the store (arrays as read-only memory maps, like ``ctx.name``), and a
    tuple comes back as a tuple of its stored elements. Misses return stored
    values too, so hits and misses look alike.

    Attributes
    ----------
    identity : str
        ``module:qualname``, the function's name in the store.
    """

    def __init__(self, func: Callable[..., Any], *, context: View | None = None,
                 version: str | None = None, ignore: tuple[str, ...] | list[str] = ()) -> None:
        functools.update_wrapper(self, func)
        self._func = func
        self._context = context
        if version is not None and (not isinstance(version, str) or len(version) > 255):
            raise ValueError(f"version= pins are strings of at most 255 characters, "
                             f"not {version!r:.80}")
        self._version = version
        self._signature = inspect.signature(func)
        unknown = set(ignore) - set(self._signature.parameters)
        if unknown:
            raise InvalidNameError(
                f"ignore= names {sorted(unknown)} are not parameters of "
                f"{func.__qualname__}{self._signature}"
            )
        self._ignore = frozenset(ignore)
        self.identity = function_identity(func)
        params = list(self._signature.parameters.values())
        # Calls passing exactly the plain positional parameters skip Signature.bind.
        simple = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self._positional = tuple(p.name for p in params) if simple else None

    # ------------------------------------------------------------ calling
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(args, kwargs, recompute=False)

    def recompute(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function even if a finished call with the same key exists."""
        return self._run(args, kwargs, recompute=True)

    def is_cached(self, *args: Any, **kwargs: Any) -> bool:
        """Return whether this call would be a hit (nothing is computed)."""
        ctx = self._resolve_context()
        if ctx is None:
            return False
        key, _, _ = self._key(ctx.store, args, kwargs)
        return ctx.store.finished_call(key) is not None

    def key(self, *args: Any, **kwargs: Any) -> str:
        """Return the call key of these arguments (hex digest)."""
        ctx = self._resolve_context()
        store = ctx.store if ctx is not None else None
        return self._key(store, args, kwargs)[0]

    def explain(self, *args: Any, **kwargs: Any) -> str:
        """Explain whether this call would be a hit and, if not, what changed.

        Nothing is computed. On a miss, the call is compared with the newest
        finished call of the same function: the code version (dependencies
        and a diff of the sources) and each argument's digest.

        Returns
        -------
        str
            A few lines of text, starting with ``hit`` or ``miss`` after a header.
        """
        ctx = self._resolve_context()
        if ctx is None:
            return f"no provstore store is open: {self.identity} would run untracked"
        key, cv, inputs = self._key(ctx.store, args, kwargs)
        described = {name: InputInfo(name, i.digest, i.artifact_id, i.file_path,
                                     _summary(i.summary)) for name, i in inputs.items()}
        return explain_call(ctx.store, self.identity, key, cv, described)

    @property
    def code_version(self) -> CodeVersion:
        """The current code version (normalized source, dependencies, digest)."""
        return FINGERPRINTS.current(self._func, version=self._version)

    def _resolve_context(self) -> View | None:
        if self._context is not None:
            return self._context
        return ambient.current()

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, recompute: bool) -> Any:
        ctx = self._resolve_context()
        if ctx is None:
            if self.identity not in _warned_untracked:
                _warned_untracked.add(self.identity)
                warnings.warn(f"no provstore store is open: {self.identity} runs untracked; "
                              "call provstore.open() first", stacklevel=3)
            return self._func(*args, **kwargs)
        store = ctx.store
        key, cv, inputs = self._key(store, args, kwargs)
        if not recompute:
            hit = store.memo.call_for(key)
            if hit is None:
                hit = store.finished_call(key)
            if hit is not None:
                store.memo.note_key(key, hit)
                return _load_outputs(store, hit)
        return _Computation(self, store, key, cv, inputs).run(args, kwargs, recompute)

    def _key(self, store: Store | None, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> tuple[str, CodeVersion, dict[str, _Input]]:
        if self._positional is not None and not kwargs and len(args) == len(self._positional):
            arguments = dict(zip(self._positional, args))
        else:
            bound = self._signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
        inputs = {name: _Input.of(store, value) for name, value in arguments.items()
                  if name not in self._ignore}
        cv = FINGERPRINTS.current(self._func, version=self._version)
        # key = xxh3(identity, code version, sorted name=digest pairs); a flat
        # string keeps it one hashing call.
        text = "\n".join(["provstore-call/1", self.identity, cv.digest,
                          *sorted(f"{name}={i.digest}" for name, i in inputs.items())])
        return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass")), cv, inputs

    # ------------------------------------------------------------ protocol
    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundTracked(self, instance)

    def __reduce__(self) -> tuple[Any, ...]:
        # By reference, like a plain function: the module attribute is looked up again.
        func = self._func
        return (_rebuild, (func.__module__, func.__qualname__, self._context, self._version,
                           tuple(sorted(self._ignore))))

    def __repr__(self) -> str:
        return f"<tracked {self.identity}{self._signature}>"


class _BoundTracked:
    """A tracked method bound to an instance: every method of the wrapper, with self."""

    __slots__ = ("__self__", "_tracked")

    def __init__(self, tracked: TrackedFunction, instance: Any) -> None:
        self._tracked = tracked
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracked(self.__self__, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._tracked, name)
        if name in ("recompute", "is_cached", "key", "explain"):
            return functools.partial(attr, self.__self__)
        return attr

    def __repr__(self) -> str:
        return f"<bound {self._tracked!r} of {self.__self__!r}>"


def _rebuild(module: str, qualname: str, context: View | None, version: str | None,
             ignore: tuple[str, ...]) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, TrackedFunction):
        return obj
    return TrackedFunction(obj, context=context, version=version, ignore=ignore)


class _Input:
    """One bound argument: its digest, and the artifact it is, if known."""

    __slots__ = ("artifact_id", "digest", "file_path", "summary")

    def __init__(self, digest: str, artifact_id: int | None, file_path: str | None,
                 summary: Any) -> None:
        self.digest = digest
        self.artifact_id = artifact_id
        self.file_path = file_path
        self.summary = summary

    @classmethod
    def of(cls, store: Store | None, value: Any) -> _Input:
        known = store.identity.known(value) if store is not None else None
        if known is not None:
            return cls(known.digest, known.artifact_id, None, None)
        path = str(value.path) if isinstance(value, File) else None
        digest = hashing.digest(value)
        # A small value equal to what a tracked call just returned is that
        # output (ints, lists...: no identity to remember them by).
        recent = store.identity.recent_artifact(digest) if store is not None else None
        return cls(digest, recent, path, value)


class _Computation:
    """A miss: lease, compute, commit (or defer to whoever committed first)."""

    def __init__(self, tf: TrackedFunction, store: Store, key: str, cv: CodeVersion,
                 inputs: dict[str, _Input]) -> None:
        self.tf, self.store, self.key, self.cv, self.inputs = tf, store, key, cv, inputs

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any], recompute: bool) -> Any:
        c = self._claim(recompute)
        if isinstance(c, int):
            return _load_outputs(self.store, c)
        ttl = lease_seconds()
        started = time.perf_counter()
        with LeaseKeeper(self.store.engine, c, ttl):
            try:
                value = self.tf._func(*args, **kwargs)
            except BaseException as exc:
                self._fail(c, exc)
                raise
        duration = time.perf_counter() - started
        try:
            committed = self._commit(c, value, duration)
        except BaseException as exc:
            self._abandon(c, exc)
            raise
        while committed is None:
            # Our lease was taken over while we stalled. The taker's result wins
            # if it commits; if the taker dies first, our value is as good as
            # any: claim the key again and commit it.
            again = self._claim(recompute=False)
            if isinstance(again, int):
                return _load_outputs(self.store, again)
            committed = self._commit(again, value, duration)
        self.store.memo.note_key(self.key, committed)
        return _load_outputs(self.store, committed, computed=value)

    def _call_row(self) -> dict[str, Any]:
        params = {name: _short(i) for name, i in self.inputs.items()}
        return {"function": self.tf.identity, "code_digest": self.cv.digest,
                "params": json.dumps(params), "run_id": self.store.runs.run_id(),
                "host": _HOST, "pid": os.getpid()}

    def _claim(self, recompute: bool) -> Claim | int:
        row, ttl = self._call_row(), lease_seconds()
        delay = 0.005
        while True:
            c = claim(self.store.engine, self.key, row, ttl=ttl, force=recompute)
            if c is not None:
                return c
            time.sleep(delay)  # a live owner computes it: wait, then look again
            delay = min(delay * 1.5, 0.5)

    def _fail(self, c: Claim, exc: BaseException) -> None:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        leases.fail(self.store.engine, c, text)

    def _abandon(self, c: Claim, exc: BaseException) -> None:
        # Publishing the outputs or committing them failed (a full disk): drop
        # the lease now, or every retry waits for it to expire. Unless the
        # error came after the commit itself, which then stands.
        with contextlib.suppress(Exception):  # the database may be what failed
            if self.store.finished_call(self.key) != c.call_id:
                self._fail(c, exc)

    def _commit(self, c: Claim, value: Any, duration: float) -> int | None:
        kind = "tuple" if type(value) is tuple else "single"
        elements = list(value) if kind == "tuple" else [value]
        inputs = [InputRecord(name, i.digest, i.artifact_id, i.file_path, _summary(i.summary))
                  for name, i in self.inputs.items()]
        prepared = [prepare(self.store, v) for v in elements]  # files published first
        try:
            committed = leases.commit(self.store, c, prepared, kind=kind, duration=duration,
                                      code=self.cv, inputs=inputs)
        except IntegrityError:
            if not self.store.collected(prepared):
                raise
            # gc removed a stored copy an output was linked to: store them again.
            prepared = [prepare(self.store, v) for v in elements]
            committed = leases.commit(self.store, c, prepared, kind=kind, duration=duration,
                                      code=self.cv, inputs=inputs)
        return c.call_id if committed else None


def _load_outputs(store: Store, call_id: int, computed: Any = None) -> Any:
    """Load a finished call's outputs, remembering them and their call."""
    rows = store.memo.outputs(call_id)
    if rows is None:
        rows = store.call_outputs(call_id)
        store.memo.note_outputs(call_id, rows)
    kind = rows[0][0] if rows else "single"
    values = []
    for position, (_, _, artifact_id) in enumerate(rows):
        row = store.artifact(artifact_id)
        store.identity.note_output(row.digest, call_id, artifact_id)
        values.append(store.load_output(artifact_id, call_id,
                                        computed=_element(computed, kind, position)))
    return tuple(values) if kind == "tuple" else values[0]


def _element(computed: Any, kind: str, position: int) -> Any:
    if computed is None:
        return None
    return computed[position] if kind == "tuple" else computed


def _short(i: _Input) -> Any:
    if i.artifact_id is not None:
        return {"artifact": i.artifact_id}
    if i.file_path is not None:
        return {"file": i.file_path}
    return _summary(i.summary)


def _summary(value: Any) -> Any:
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


@overload
def track(func: F, *, version: str | None = ..., ignore: tuple[str, ...] | list[str] = ...,
          context: View | None = ...) -> TrackedFunction: ...
@overload
def track(func: None = ..., *, version: str | None = ...,
          ignore: tuple[str, ...] | list[str] = ...,
          context: View | None = ...) -> Callable[[F], TrackedFunction]: ...
def track(func: Callable[..., Any] | None = None, *, version: str | None = None,
          ignore: tuple[str, ...] | list[str] = (), context: View | None = None) -> Any:
    """Memoize *func* on its inputs and code, and record its lineage.

    Usable bare (``@provstore.track``) or with options
    (``@provstore.track(version="2", ignore=["verbose"])``), and on library
    functions (``smooth = provstore.track(nilearn.image.smooth_img)``).

    Parameters
    ----------
    func : callable
        The function.
    version : str, optional
        Pin the code version by hand: edits no longer invalidate results
        until the pin changes.
    ignore : sequence of str
        Parameters left out of the key (``verbose``, ``n_jobs``...).
    context : Context, optional
        The store to record into. By default the innermost active context
        (``with ctx:`` / ``with ctx.scope(...)``), else the store opened last
        in this process; with no store at all the function runs untracked
        (with a warning, once).

    Returns
    -------
    TrackedFunction
    """
    if func is None:
        return lambda f: TrackedFunction(f, context=context, version=version, ignore=ignore)
    return TrackedFunction(func, context=context, version=version, ignore=ignore)

