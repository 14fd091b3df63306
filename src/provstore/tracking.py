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

import functools
import importlib
import inspect
import pickle
import socket
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, overload

import xxhash

from . import ambient, byvalue, callkeys, hashing, leases
from .ambient import View
from .codeversion import FINGERPRINTS, CodeVersion, defined_at, function_identity
from .computing import (
    COMPUTING,
    Computation,
    Hit,
    Input,
    args_text,
    load_outputs,
    summary_of,
)
from .errors import InvalidNameError, NotCachedError, ProvstoreError, UnsupportedTypeError
from .store import Store

__all__ = [
    "CALL_SCHEME", "FINGERPRINTS", "AsyncTrackedFunction", "RecursiveCallError",
    "TrackedFunction", "track",
]

F = TypeVar("F", bound=Callable[..., Any])
_HOST = socket.gethostname()
_warned_untracked: set[str] = set()
# The version of what goes into a call key besides value digests: the rules
# of callkeys for callables, estimators and instances, and the layout of the
# key text. The key also holds hashing.SCHEME_VERSION (the rules for values).
# Changing either changes the key, so old results are a clean miss, never a
# collision.
CALL_SCHEME = "provstore-call/2"
_HASH_SCHEME = f"hashing/{hashing.SCHEME_VERSION}"
# A function that missed this many calls in a row claims its next ones at
# once, reading first on every _READ_EVERY-th (see _claim_at_once).
_MISS_STREAK = 3
_READ_EVERY = 16


class RecursiveCallError(ProvstoreError, RuntimeError):
    """A tracked call needed its own result: it called itself with the same key."""


class TrackedFunction:
    """A function whose calls are memoized and recorded in a provstore store.

    Calling it returns what the function returns; on a hit the value is loaded
    from the store (arrays as read-only memory maps, like ``ctx.name``), and a
    tuple comes back as a tuple of its stored elements. Misses return stored
    values too, so hits and misses look alike.

    Attributes
    ----------
    identity : str
        The function's name in the store (``calls.function``, what
        ``ctx.find(function=...)`` matches): the ``name=`` given, else
        ``module:qualname`` with a script's stem as its module
        (:func:`provstore.codeversion.function_identity`), with ``.<partial>``
        appended for a ``functools.partial``.
    key_identity : str
        What the call key holds besides the code version: ``name:<name>`` for a
        named function, ``pinned:<identity>`` for a pinned one, else ``code``:
        unnamed functions share results whenever their code and everything it
        resolves to are equal, wherever they live and however they are launched.
    defined_at : str
        ``module:qualname`` where the function lives in this process, recorded on each call.
    """

    # Where a worker records when nothing else says: the view this function
    # would have recorded into where it was pickled (see __reduce__).
    _carried: View | None = None

    def __init__(self, func: Callable[..., Any], *, context: View | None = None,
                 version: str | None = None, ignore: tuple[str, ...] | list[str] = (),
                 name: str | None = None) -> None:
        callkeys.refuse_untrackable(func)
        functools.update_wrapper(self, func)
        self._func = func
        self._context = context
        if version is not None and (not isinstance(version, str) or len(version) > 255):
            raise ValueError(f"version= pins are strings of at most 255 characters, "
                             f"not {version!r:.80}")
        self._version = version
        self._signature = inspect.signature(func)
        # A partial or a bound method is keyed as the call of what it wraps,
        # with its bound arguments (and instance) as arguments: they are inputs.
        self._call = callkeys.Unbound.of(func)
        unknown = set(ignore) - set(self._call.signature.parameters) - set(self._call.freevars)
        if unknown:
            raise InvalidNameError(
                f"ignore= names {sorted(unknown)} are not parameters (or closure variables) "
                f"of {getattr(func, '__qualname__', func)!s}{self._call.signature}"
            )
        self._ignore = frozenset(ignore)
        if name is not None and (not isinstance(name, str) or not name or len(name) > 255):
            raise InvalidNameError(f"track(name=...) takes a non-empty string of at most 255 "
                                   f"characters (such as 'preproc.smooth'), not {name!r:.80}")
        self._name = name
        self.identity = name if name is not None else function_identity(func)
        if name is None and isinstance(func, functools.partial):
            self.identity += ".<partial>"
        self.key_identity = (f"name:{name}" if name is not None
                             else f"pinned:{self.identity}" if version is not None else "code")
        self.defined_at = defined_at(func)
        params = list(self._signature.parameters.values())
        # Calls passing exactly the plain positional parameters skip Signature.bind.
        simple = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params) and self._call.plain
        self._positional = tuple(p.name for p in params) if simple else None
        self._misses = 0  # misses in a row: past a few, a miss skips the read before its claim

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
        # Imported here: a process that only calls tracked functions never
        # needs lineage, which cost ~40 ms of its start-up (-X importtime).
        from .lineage import InputInfo
        from .lineage.explain import explain_call

        described = {name: InputInfo(name, i.digest, i.artifact_id, i.file_path,
                                     summary_of(i.summary)) for name, i in inputs.items()}
        return explain_call(ctx.store, self.identity, key, cv, described)

    @property
    def code_version(self) -> CodeVersion:
        """The current code version (normalized source, dependencies, digest)."""
        return FINGERPRINTS.current(self._func, version=self._version)

    def _resolve_context(self) -> View | None:
        if self._context is not None:
            return self._context
        # A view entered here (ctx.map's worker) wins over the one the function
        # was sent with, then this process's own last opened store, then the
        # view of the tracked function it received last (see _adopt).
        view = ambient.active()
        if view is None:
            view = self._carried
        if view is None:
            view = ambient.last_opened()
        return view if view is not None or not _received else _received[0]

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, recompute: bool) -> Any:
        ctx = self._resolve_context()
        if ctx is None:
            self._warn_untracked()
            return self._func(*args, **kwargs)
        found = self._lookup(ctx.store, args, kwargs, recompute)
        if isinstance(found, Computation):
            return found.run(args, kwargs, recompute)
        return found.value

    def _warn_untracked(self) -> None:
        if self.identity not in _warned_untracked:
            _warned_untracked.add(self.identity)
            warnings.warn(f"no provstore store is open: {self.identity} runs untracked; "
                          "call provstore.open() first", stacklevel=4)

    def _lookup(self, store: Store, args: tuple[Any, ...], kwargs: dict[str, Any],
                recompute: bool) -> Hit | Computation:
        """A hit's value, or the computation a miss needs."""
        key, cv, inputs = self._key(store, args, kwargs)
        if key in COMPUTING.get():
            raise RecursiveCallError(
                f"{self.identity} recursed into its own call: while computing it called "
                "itself with arguments that give the same key (only ignore= parameters "
                "differ?), and would wait forever for its own result; pass a different "
                "argument, or call the undecorated function (.__wrapped__) inside")
        if not recompute:
            hit = store.memo.call_for(key)
            if hit is None and not self._claim_at_once(store):
                hit = leases.finished_call(store, key)
                if hit is not None:
                    store.memo.note_key(key, hit)
            if hit is not None:
                try:
                    value = load_outputs(store, hit)
                except Exception:
                    # gc may have dropped the call since this process saw it: compute again.
                    if not store.forget_if_collected(hit):
                        raise
                else:
                    store.note_hit(hit)
                    self._misses = 0
                    return Hit(value)
        if store.readonly:
            raise NotCachedError(
                f"{self.identity}{args_text(inputs)} is not in the store {store.root}, which "
                "was opened with readonly=True: nothing is computed. Open it without readonly= "
                "to compute it")
        self._misses += 1
        return Computation(self._func, self.identity, self.defined_at, store, key, cv, inputs)

    def _claim_at_once(self, store: Store) -> bool:
        """Whether to skip the read for a finished call: the claim reads it anyway.

        A function that missed its last few calls (a sweep over new
        arguments) most likely misses again: its claim's transaction tells
        a finished call too, and the read before it (~20 µs) is spared.
        Every few calls still read, so that a run of hits is seen again.
        Only with leases on SQLite (a claim without a lease reads nothing;
        on a server a claim locks more than a read), never read-only.
        """
        misses = self._misses
        return (misses >= _MISS_STREAK and misses % _READ_EVERY != 0 and store.lite is not None
                and not store.readonly
                and (store.computing is None or not store.computing.wants_exclusive))

    def _key(self, store: Store | None, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> tuple[str, CodeVersion, dict[str, Input]]:
        if self._positional is not None and not kwargs and len(args) == len(self._positional):
            arguments = dict(zip(self._positional, args))
        else:
            arguments = self._call.bind(args, kwargs)
        owner = self._call.owner
        inputs = {name: Input.of(store, value, instance=name == owner)
                  for name, value in arguments.items() if name not in self._ignore}
        if self._call.captures:
            inputs.update(self._captured())
        cv = FINGERPRINTS.current(self._func, version=self._version)
        # key = xxh3(schemes, key identity, code version, sorted name=digest
        # pairs); a flat string keeps it one hashing call.
        text = "\n".join([CALL_SCHEME, _HASH_SCHEME, self.key_identity, cv.digest,
                          *sorted(f"{name}={i.digest}" for name, i in inputs.items())])
        return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass")), cv, inputs

    def _captured(self) -> dict[str, Input]:
        """Inputs for what the function closes over (``ignore=`` may name closure variables)."""
        found = {}
        for name, value in self._call.captured().items():
            if name.partition(".")[2] in self._ignore:
                continue
            try:
                # Keyed by content, never linked by identity: a captured object
                # may outlive the stored row it was loaded from (gc).
                found[name] = Input.of(None, value, instance=name == "<self>")
            except UnsupportedTypeError as exc:
                raise UnsupportedTypeError(
                    f"{self.identity} closes over {name} (a {type(value).__qualname__}), "
                    f"which has no canonical value ({exc}); if results do not depend on it, "
                    f"list it in ignore=[{name.partition('.')[2]!r}], else pass it as an "
                    "argument or define __provstore_hash__() on its class") from exc
        return found

    # ------------------------------------------------------------ protocol
    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundTracked(self, instance)

    def __reduce__(self) -> tuple[Any, ...]:
        # The view this function would record into here travels with it, so a
        # worker that never opened a store (spawn, loky, Dask) records into the
        # sender's. A function importable by module and qualname is sent by
        # reference; one a worker cannot import (a script's, a notebook's, a
        # nested one, a lambda) by value.
        func, ignore = self._func, tuple(sorted(self._ignore))
        if not self._call.plain:  # a partial or bound method: by value, with what it binds
            options = {"context": self._context, "version": self._version, "ignore": ignore,
                       "name": self._name}
            return (functools.partial(track, **options), (func,))
        carried = None if self._context is not None else self._resolve_context()
        if byvalue.importable(func):
            return (_rebuild_ref, (func.__module__, func.__qualname__, self._context, carried,
                                   self._version, ignore, self._name))
        if byvalue.in_progress():
            # Inside the cloudpickle call below: a shell now, filled by
            # _fill_shell once its function is loaded, so that a function
            # reaching itself through its globals (recursion) is no cycle.
            state = (func, self._context, carried, self._version, ignore, self._name)
            return (_shell, (), state, None, None, _fill_shell)
        return (_rebuild_value, (byvalue.dumps(self),))

    def __provstore_hash__(self) -> Any:
        # As an argument of a call, a tracked function is the function it wraps
        # (name and code), not its pickle, which carries the store it records into.
        return self._func

    def __repr__(self) -> str:
        return f"<tracked {self.identity}{self._signature}>"


class AsyncTrackedFunction(TrackedFunction):
    """A tracked coroutine function: calling it returns a coroutine to await.

    A hit returns without running the body; a miss awaits the body, then
    stores its result. Waiting for another owner of the key sleeps
    asynchronously; the database work itself is short and runs in place.
    """

    def __init__(self, func: Callable[..., Any], **options: Any) -> None:
        super().__init__(func, **options)
        if hasattr(inspect, "markcoroutinefunction"):  # Python >= 3.12
            inspect.markcoroutinefunction(self)
        else:  # inspect reads the flag from any function-like object's code
            target = inspect.unwrap(func)
            self.__code__ = target.__code__
            self.__defaults__ = getattr(target, "__defaults__", None)
            self.__kwdefaults__ = getattr(target, "__kwdefaults__", None)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self._arun(args, kwargs, recompute=False)

    async def recompute(self, *args: Any, **kwargs: Any) -> Any:
        """Await the function even if a finished call with the same key exists."""
        return await self._arun(args, kwargs, recompute=True)

    async def _arun(self, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                    recompute: bool) -> Any:
        ctx = self._resolve_context()
        if ctx is None:
            self._warn_untracked()
            return await self._func(*args, **kwargs)
        found = self._lookup(ctx.store, args, kwargs, recompute)
        if isinstance(found, Computation):
            return await found.arun(args, kwargs, recompute)
        return found.value


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
             ignore: tuple[str, ...], name: str | None = None) -> Any:
    # Pickles made before tracked functions carried their view still load.
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, TrackedFunction):
        return obj
    return track(obj, context=context, version=version, ignore=ignore, name=name)


def _adopt(carried: View | None) -> None:
    """Remember *carried* if this process has not opened a store itself.

    Tracked functions the process imports itself (those the received one
    calls) record there when the process has opened no store of its own, as
    after a fork. Kept here, not as ``ambient``'s last opened store: closing
    a store must not open a view that was received but never used.
    """
    if carried is not None and ambient.last_opened() is None:
        _received[:] = [carried]


_received: list[View] = []


def _rebuild_ref(module: str, qualname: str, context: View | None, carried: View | None,
                 version: str | None, ignore: tuple[str, ...],
                 name: str | None = None) -> TrackedFunction:
    """Unpickle a tracked function sent by reference, with the view it carries."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, TrackedFunction):
        if (context is None or context == obj._context) and carried == obj._resolve_context():
            return obj  # records where it was sent from anyway (same process, same state)
        # The module's own wrapper, with the sender's view: a copy, so the
        # module attribute keeps resolving its view where it runs.
        tracked = object.__new__(type(obj))
        tracked.__dict__.update(obj.__dict__)
        if context is not None:
            tracked._context = context
    else:
        tracked = TrackedFunction(obj, context=context, version=version, ignore=ignore,
                                  name=name)
    tracked._carried = carried
    _adopt(carried)
    return tracked


@functools.lru_cache(maxsize=64)
def _load_by_value(blob: bytes) -> TrackedFunction:
    # One object per distinct pickle, so a worker receiving the same function
    # for every task fingerprints its code once.
    tracked: TrackedFunction = pickle.loads(blob)
    return tracked


def _rebuild_value(blob: bytes) -> TrackedFunction:
    """Unpickle a tracked function sent by value (pickled with cloudpickle)."""
    tracked = _load_by_value(blob)
    _adopt(tracked._carried)
    return tracked


def _shell() -> TrackedFunction:
    return object.__new__(TrackedFunction)


def _fill_shell(tracked: TrackedFunction, state: tuple[Any, ...]) -> None:
    func, context, carried, version, ignore, name = state
    TrackedFunction.__init__(tracked, func, context=context, version=version, ignore=ignore,
                             name=name)
    tracked._carried = carried


@overload
def track(func: F, *, version: str | None = ..., ignore: tuple[str, ...] | list[str] = ...,
          context: View | None = ..., name: str | None = ...) -> TrackedFunction: ...
@overload
def track(func: None = ..., *, version: str | None = ...,
          ignore: tuple[str, ...] | list[str] = ...,
          context: View | None = ..., name: str | None = ...) -> Callable[[F], TrackedFunction]: ...
def track(func: Callable[..., Any] | None = None, *, version: str | None = None,
          ignore: tuple[str, ...] | list[str] = (), context: View | None = None,
          name: str | None = None) -> Any:
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
    name : str, optional
        Name the function explicitly (``"preproc.smooth"``): its calls are listed
        under this name and keyed on it with the code version, so two functions
        with equal code but different names never share results. By default the
        key holds the code version only, and the calls are listed under
        ``module:qualname`` (a script's stem as module).

    Returns
    -------
    TrackedFunction
    """
    if func is None:
        return lambda f: track(f, context=context, version=version, ignore=ignore, name=name)
    cls = AsyncTrackedFunction if inspect.iscoroutinefunction(func) else TrackedFunction
    return cls(func, context=context, version=version, ignore=ignore, name=name)

