"""Context: the user's view of a store at one scope.

Attribute and item access map names to artifacts. Reads resolve the name in
the current scope first, then in each enclosing scope up to the root (lexical
scoping); writes always bind in the current scope.

``with ctx.scope(subject="01"):`` redirects ``ctx`` itself to the child scope
for the duration of the block. The redirection lives in a
:class:`contextvars.ContextVar`, so it is private to the thread or asyncio
task that entered the block. A view is redirected by the blocks entered on
views derived from it (through ``scope()``), never by unrelated views.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, cast

from . import ambient
from .errors import (
    InvalidNameError,
    MissingAttributeError,
    MissingKeyError,
    NotFoundError,
    ReservedNameError,
    StoreError,
)
from .locations import StoreRef
from .saving import prepare
from .scope import Segment, check_name, display, format_path, parse_path, segment_for_param
from .store import ArtifactCollectedError, Store
from .sweeps import Found, find, table
from .tracking import track

# Lineage, maintenance and parallel mapping are imported by the methods that
# use them: a process that opens a store and gets a hit needs none of them,
# and they cost it ~60 ms of its start-up (python -X importtime, 2026-12-07).
if TYPE_CHECKING:
    from .lineage import Dependent, History, StaleList
    from .maintenance.calls import CallSummary
    from .memory import Memory

__all__ = ["Context", "active_context"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_MMAP_MODES = (None, "r", "c")


def active_context() -> Context | None:
    """Return the innermost context entered with ``with`` in this thread/task."""
    # Only Contexts are ever entered (ambient sees them through its protocol).
    return cast("Context | None", ambient.active())


class Context:
    """A view of a store at one scope; see :func:`provstore.open`.

    Examples
    --------
    >>> ctx = provstore.open("study")                     # doctest: +SKIP
    >>> with ctx.scope(subject="01"):                     # doctest: +SKIP
    ...     ctx.signal = np.arange(10)
    >>> ctx.scope(subject="01").signal                    # doctest: +SKIP
    memmap([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """

    __slots__ = ("__weakref__", "_handle", "_lineage", "_mmap_mode", "_segments", "_token")
    # Declared for the type checker: set through object.__setattr__ (our own
    # __setattr__ stores artifacts), so otherwise they would resolve through
    # __getattr__ as Any.
    _handle: Store | StoreRef
    _lineage: frozenset[object]
    _mmap_mode: str | None
    _segments: tuple[Segment, ...]
    _token: object

    def __init__(self, store: Store | StoreRef, segments: tuple[Segment, ...] = (), *,
                 mmap_mode: str | None = "r", lineage: frozenset[object] = frozenset()) -> None:
        if mmap_mode not in _MMAP_MODES:
            raise ValueError(
                f"mmap_mode must be one of {_MMAP_MODES}; artifacts are immutable, so "
                "writable maps ('r+', 'w+') are not offered"
            )
        object.__setattr__(self, "_handle", store)
        object.__setattr__(self, "_segments", tuple(segments))
        object.__setattr__(self, "_mmap_mode", mmap_mode)
        object.__setattr__(self, "_token", object())
        object.__setattr__(self, "_lineage", lineage)

    # ------------------------------------------------------------ scoping
    def _active_entry(self) -> Context | None:
        for entry in reversed(ambient.stack()):
            if entry is self or (isinstance(entry, Context) and self._token in entry._lineage):
                return entry
        return None

    def _current(self) -> tuple[Segment, ...]:
        entry = self._active_entry()
        return entry._segments if entry is not None else self._segments

    @property
    def path(self) -> str:
        """The current scope's path (``"subject=01/sigma=2.0"``; ``""`` is the root)."""
        return format_path(self._current())

    @property
    def store(self) -> Store:
        """The underlying :class:`~provstore.store.Store`."""
        return self._store

    def scope(self, *labels: str, **params: Any) -> Context:
        """Return a child view, also usable as ``with ctx.scope(...):``.

        Parameters
        ----------
        *labels : str
            Plain segments (``"session1"``), ``"key=value"`` segments, or paths
            joining them with ``/``.
        **params : JSON scalar
            Parameter segments in the order given (``subject="01", sigma=2.0``).

        Returns
        -------
        Context
            A view of the child scope. Inside ``with``, this view's parents
            (including ``ctx``) point at the child too.
        """
        segments = list(self._current())
        for label in labels:
            segments.extend(parse_path(label))
        segments.extend(segment_for_param(k, v) for k, v in params.items())
        lineage = self._lineage | {self._token}
        entry = self._active_entry()
        if entry is not None and entry is not self:
            lineage = lineage | entry._lineage | {entry._token}
        return Context(self._store, tuple(segments), mmap_mode=self._mmap_mode, lineage=lineage)

    def __enter__(self) -> Context:
        ambient.entered(self)
        return self

    def __exit__(self, *exc: object) -> None:
        ambient.leave(self)

    def scopes(self, *, recursive: bool = False) -> list[str]:
        """Return the paths of the child scopes (all descendants with ``recursive=True``)."""
        sid = self._store.scope_id(self._current(), create=False)
        return self._store.child_scopes(sid, recursive=recursive)

    # ------------------------------------------------------------ reading
    def get(self, name: str, *, version: int | None = None, mmap_mode: str | bool | None = True,
            verify: bool = False, **options: Any) -> Any:
        """Load the value bound to *name*, resolving enclosing scopes.

        Parameters
        ----------
        name : str
            The name, or a path relative to this scope (``"subject=01/signal"``).
        version : int, optional
            A version number from :meth:`history` (1 is the first; -1 the last).
        mmap_mode : {"r", "c", None}, optional
            How ``.npy`` arrays are mapped; defaults to the store's (``"r"``).
            ``None`` loads an in-memory copy.
        verify : bool
            Re-hash the object file before loading it.
        **options
            Passed to the backend's loader: ``lazy=True`` opens an HDF5
            artifact as views that read nodes on access.

        Raises
        ------
        NotFoundError
            The name is bound in no visible scope (``KeyError`` flavour).
        """
        return self._get(name, attr=False, version=version, mmap_mode=mmap_mode, verify=verify,
                         options=options)

    def _get(self, name: str, *, attr: bool, version: int | None = None,
             mmap_mode: str | bool | None = True, verify: bool = False,
             options: dict[str, Any] | None = None) -> Any:
        segments, name = self._split(name, attr=attr)
        mode = self._mmap_mode if mmap_mode is True else mmap_mode
        if mode not in _MMAP_MODES:
            raise ValueError(f"mmap_mode must be one of {_MMAP_MODES}")
        chain = self._store.chain(segments)
        where = _where(segments, name)
        if version is None:
            found = self._store.resolve(chain, name)
            if found is None:
                raise self._missing(segments, chain, name, attr=attr)
            artifact_id = found[1]
        else:
            artifact_id = self._versioned(segments, chain, name, version)
        return self._store.load(artifact_id, mmap_mode=mode, verify=verify, where=where,
                                options=options)

    def _versioned(self, segments: tuple[Segment, ...], chain: list[int], name: str,
                   version: int) -> int:
        chosen = self._history(segments, chain, name).version(version)
        if chosen.artifact_id is None:
            raise MissingKeyError(
                f"version {chosen.number} of {_where(segments, name)} is a deletion"
            )
        return chosen.artifact_id

    def _missing(self, segments: tuple[Segment, ...], chain: list[int], name: str, *,
                 attr: bool) -> NotFoundError:
        close = difflib.get_close_matches(name, self._store.visible_names(chain), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        message = (f"{name!r} is not bound in {display(format_path(segments))} "
                   f"or its enclosing scopes{hint}")
        return (MissingAttributeError if attr else MissingKeyError)(message)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._get(name, attr=True)

    def __getitem__(self, name: str) -> Any:
        return self._get(name, attr=False)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            segments, name = self._split(name, attr=False)
        except InvalidNameError:
            return False
        return self._store.resolve(self._store.chain(segments), name) is not None

    def names(self, *, inherited: bool = True) -> list[str]:
        """Return the bound names, sorted; with ``inherited=False`` only this scope's."""
        chain = self._store.chain(self._current())
        sid = self._store.scope_id(self._current(), create=False)
        if not inherited:
            chain = [sid] if sid is not None else []
        return list(self._store.visible_names(chain))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __bool__(self) -> bool:
        # A view of a store is always something, even before any name is bound:
        # `ctx or provstore.open()` must not reopen because a store is empty.
        return True

    def __dir__(self) -> list[str]:
        # Tab completion offers the bound names next to the methods.
        attrs = [n for n in self.names() if n.isidentifier()]
        return sorted(set(attrs) | set(RESERVED))

    # ------------------------------------------------------------ questions
    def _history(self, segments: tuple[Segment, ...], chain: list[int], name: str) -> History:
        bound = self._store.bound_scopes(chain, name) if chain else []
        if not bound:
            raise self._missing(segments, chain, name, attr=False)
        sid = bound[0]
        rows = self._store.versions(sid, name)
        scope_path = self._store.scope_path(sid)
        from .lineage import History  # start-up cost: see the imports

        return History.from_rows(scope_path, name, rows, store=self._store)

    def history(self, name: str) -> History:
        """Return every version of *name* (a name or a path relative to this scope).

        The history of a name resolves like a read, but a scope holding only
        deletions of it still counts, so deleted names keep their history.
        """
        segments, name = self._split(name, attr=False)
        return self._history(segments, self._store.chain(segments), name)

    def explain(self, name: str) -> str:
        """Explain why the current version of *name* was computed.

        Compares the call that produced it with the call of the previous
        version that came from a tracked call.

        Parameters
        ----------
        name : str
            A name or a path relative to this scope.

        Returns
        -------
        str
            What differs: the code version (changed dependencies and a diff
            of the stored sources), the inputs (old → new digests with the
            names bound to each), or neither (a forced recompute); or that it
            is the first computation.
        """
        return self.history(name).explain()

    def dependents(self, name: str, *, transitive: bool = True) -> list[Dependent]:
        """Return the current bindings computed from the current value of *name*.

        Follows the finished calls that read its artifact to the artifacts
        they returned, and those to the names bound to them.

        Parameters
        ----------
        name : str
            A name or a path relative to this scope.
        transitive : bool
            Follow the calls downstream through every level (up to 100);
            ``False`` lists only what was computed from it directly.

        Returns
        -------
        list of Dependent
            ``path``, ``version``, ``function`` and ``call_id`` of each, nearest first.

        Raises
        ------
        NotFoundError
            *name* is not bound, or its current version is a deletion.
        """
        h = self.history(name)
        if h.latest.artifact_id is None:
            raise MissingKeyError(f"{h.path} is deleted (v{h.latest.number}): no dependents")
        from .lineage.impact import dependents  # start-up cost: see the imports

        return dependents(self._store, h.latest.artifact_id, transitive=transitive,
                          exclude=h.path)

    def stale(self, *, unimportable: bool = False) -> StaleList:
        """Return the results here and below whose recorded recipe changed since.

        A current binding made by a tracked call is stale when its code on
        disk differs from the code version the call recorded (``"code changed:
        <functions, classes, constants>"``), or when an input of the call was
        bound to a name that now holds another value (``"input x rebound:
        scope/name v2 → v3"``). Scripts, modules and their helpers are checked
        from their source files, parsed and never run: the call records where
        the function lived and the run which script it ran. Nothing is
        recomputed or deleted.

        Parameters
        ----------
        unimportable : bool
            Also list the results that could not be checked (reason
            ``"not checked: <why>"``); by default they are only counted in
            ``unchecked``.

        Returns
        -------
        StaleList
            A list of :class:`~provstore.lineage.Stale` (``path``, ``reason``,
            ``call_id``, ``downstream``: the results that rerunning would
            recompute too), sorted by path; its ``unchecked`` lists the results
            that could not be checked and why (``summary()`` counts them).
        """
        from .lineage.impact import stale  # start-up cost: see the imports

        return stale(self._store, self.path, unimportable=unimportable)

    def table(self, name: str, func: Callable[[Any], Any] | None = None, *,
              recursive: bool = True) -> Any:
        """Collect *name* from this scope and every scope below it into a DataFrame.

        Parameters
        ----------
        name : str
            The name to collect; a scope counts where *name* is bound, not
            where it is inherited.
        func : callable, optional
            Applied to each value (``lambda m: m.sum()``); the column holds the results.
        recursive : bool
            Every descendant scope; with False only the direct children.

        Returns
        -------
        pandas.DataFrame
            One row per scope, sorted by path: a column per scope parameter
            (``subject``, ``sigma``...; None/NaN where a scope lacks it),
            ``scope`` (the path) and *name*.

        Raises
        ------
        ImportError
            pandas is not installed (``pip install provstore[pandas]``).
        """
        return table(self._store, self._current(), name, func, recursive=recursive,
                     mmap_mode=self._mmap_mode)

    def find(self, function: Any = None, **params: Any) -> list[Found]:
        """Return the current bindings at and below this scope that match.

        Parameters
        ----------
        function : callable or str, optional
            Only values produced by this function: a tracked function, a
            plain function, or its ``"module:qualname"``.
        **params : JSON scalar
            Only scopes with these parameters (``sigma=2.0``).

        Returns
        -------
        list of provstore.sweeps.Found
            With ``path``, ``scope``, ``name``, ``version``, ``artifact_id``,
            ``params`` and ``function``; sorted by scope path, then name.
        """
        return find(self._store, self._current(), function=function, params=params)

    def track(self, func: Any = None, *, version: str | None = None,
              ignore: tuple[str, ...] | list[str] = (), name: str | None = None) -> Any:
        """Memoize *func* and record its calls in this context's store.

        Like :func:`provstore.track`, but bound to this store whatever
        context is active. Usable bare (``@ctx.track``), with options
        (``@ctx.track(version="2")``) or on a library function
        (``ctx.track(nilearn.image.smooth_img)``); ``name=`` names it
        explicitly, as in :func:`provstore.track`.
        """
        return track(func, version=version, ignore=ignore, context=self, name=name)

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any], *,
            executor: Executor | None = None, chunksize: int = 1,
            progress: bool | None = None) -> Iterator[Any]:
        """Run ``func(item)`` for each item in parallel, in this store and scope.

        Each call runs inside ``with view:`` where *view* is this context at
        its current scope, reopened by reference in the worker: tracked
        functions record into this store (hits are loaded, misses computed
        once across all workers), and bindings made through
        :func:`provstore.context.active_context` land in this scope.

        Parameters
        ----------
        func : callable
            Takes one item. In other processes it must be importable by
            reference: a module-level function or tracked function, or a
            ``functools.partial`` of one.
        iterable : iterable
            The items; read in full before the first call is submitted.
        executor : concurrent.futures.Executor, optional
            Where the calls run: a thread or process pool, a loky executor,
            ``dask.distributed.Client.get_executor()``. By default a
            ``ProcessPoolExecutor`` with one worker per core, created here and
            shut down when the results are exhausted.
        chunksize : int
            Items sent to a worker at once (each item still succeeds or fails alone).
        progress : bool, optional
            Show a ``rich`` progress bar on stderr; by default only when stderr
            is a terminal.

        Returns
        -------
        iterator
            The results in input order, as they become available. An item's
            exception is raised when the iterator reaches it (with the worker's
            traceback as its cause); the other calls still run and commit.
        """
        from .parallel import map_calls  # start-up cost: see the imports

        return map_calls(self, func, iterable, executor=executor, chunksize=chunksize,
                         progress=progress)

    def memory(self, *, mmap_mode: str | None = None) -> Memory:
        """Return a ``joblib.Memory`` that caches into this store and scope.

        Pass it where scikit-learn and nilearn take ``memory=``
        (``Pipeline(steps, memory=ctx.memory())``); every cached step becomes
        a tracked call. See :class:`provstore.memory.Memory`.
        """
        # Imported on use: joblib costs ~120 ms of `import provstore` otherwise.
        from .memory import Memory

        return Memory(context=self, mmap_mode=mmap_mode)

    # ------------------------------------------------------------ writing
    def set(self, name: str, value: Any, *, format: str | None = None, **options: Any) -> None:
        """Store *value* and bind it to *name* in the current scope.

        Parameters
        ----------
        name : str
            Letters, digits, ``_``, ``-`` and ``.``.
        value : object
            Anything a backend can store; see :doc:`concepts`.
        format : str, optional
            Force a backend (``"npy"``, ``"hdf5"``, ``"nifti"``, ``"json"``, ``"pickle"``).
        **options
            Passed to the backend (``compress=True`` for NIfTI and HDF5).
        """
        self._put(name, value, format=format, options=options, origin=_caller())

    def _put(self, name: str, value: Any, *, format: str | None, options: dict[str, Any],
             origin: str | None) -> None:
        segments = self._current()
        check_name(name, where=f" in {display(format_path(segments))}")
        self._store.check_writable(f"bind {name!r}")  # before any file is written
        sid: int | None = None
        for _ in range(_BIND_ATTEMPTS):
            prepared = prepare(self._store, value, format=format, **options)
            if sid is None:
                sid = self._store.scope_id(segments, create=True)
                assert sid is not None
            try:
                self._store.bind(sid, name, prepared, origin=origin)
                return
            except ArtifactCollectedError:
                # gc removed the stored copy it linked to before the bind
                # committed: store the value again. Another writer may store
                # the same content and gc remove it again meanwhile.
                continue
        raise StoreError(
            f"could not bind {_where(segments, name)!r} in the store {self._store.root}: gc "
            f"deleted the stored copy of its value {_BIND_ATTEMPTS} times while the bind ran; "
            "run gc less often, or bind again")

    def __setattr__(self, name: str, value: Any) -> None:
        _check_attribute(name, "assign", f"ctx[{name!r}] = ...")
        self._put(name, value, format=None, options={}, origin=_caller())

    def __setitem__(self, name: str, value: Any) -> None:
        self._put(name, value, format=None, options={}, origin=_caller())

    def delete(self, name: str) -> None:
        """Delete *name* from the current scope (a new version records the deletion).

        History keeps every earlier version. A name bound in an enclosing
        scope becomes visible again, like a local variable that stops
        shadowing a global one.
        """
        segments = self._current()
        where = f" in {display(format_path(segments))}"
        check_name(name, where=where)
        self._store.check_writable(f"delete {name!r}")
        sid = self._store.scope_id(segments, create=False)
        if sid is None or self._store.resolve([sid], name) is None:
            raise MissingKeyError(f"{name!r} is not bound{where}; nothing to delete")
        self._store.bind(sid, name, None, origin=_caller())

    def __delattr__(self, name: str) -> None:
        _check_attribute(name, "delete", f"del ctx[{name!r}]")
        try:
            self.delete(name)
        except MissingKeyError as exc:
            raise MissingAttributeError(str(exc)) from None

    def __delitem__(self, name: str) -> None:
        self.delete(name)

    # ------------------------------------------------------------ retention
    def pin(self, name: str) -> None:
        """Keep every version of *name*, and all it was computed from, through any ``gc``.

        Parameters
        ----------
        name : str
            A name or a path relative to this scope (``"subject=01/mask"``),
            pinned in the scope that binds it (as :meth:`history` finds it).

        Raises
        ------
        NotFoundError
            No visible scope binds *name*.
        """
        self._store.pin(*self._pinned(name))

    def unpin(self, name: str) -> None:
        """Let ``gc`` rules apply to *name* again (its current version is always kept).

        Raises
        ------
        NotFoundError
            *name* is not pinned.
        """
        sid, bare = self._pinned(name)
        if not self._store.unpin(sid, bare):
            raise MissingKeyError(f"{_where(self._split(name, attr=False)[0], bare)} is not "
                                  "pinned; `provstore pin --list` lists the pins")

    def pins(self) -> list[str]:
        """Return the pinned names of the store as paths (``"subject=01/mask"``), sorted."""
        return [f"{r.path}/{r.name}" if r.path else r.name for r in self._store.pins()]

    def _pinned(self, name: str) -> tuple[int, str]:
        segments, bare = self._split(name, attr=False)
        chain = self._store.chain(segments)
        bound = self._store.bound_scopes(chain, bare) if chain else []
        if not bound:
            raise self._missing(segments, chain, bare, attr=False)
        return bound[0], bare

    def calls(self, function: Any = None, *, status: str | None = None,
              run: int | None = None, limit: int | None = None) -> list[CallSummary]:
        """Return the store's tracked calls, newest first.

        Parameters
        ----------
        function : callable or str, optional
            Only calls of this function: a tracked or plain function, its
            ``"module:qualname"``, or its qualname alone.
        status : {"done", "failed", "running", "orphaned", "expired"}, optional
            Only calls in this state.
        run : int, optional
            Only calls of this run (``provstore runs`` lists them).
        limit : int, optional
            At most this many.

        Returns
        -------
        list of provstore.maintenance.CallSummary
            Function, scope (of the bindings made from it), status, duration,
            run, error of a failure, and lease owner of a running call.
        """
        from .maintenance.calls import list_calls  # start-up cost: see the imports

        return list_calls(self._store, function=function, status=status, run=run, limit=limit)

    # ------------------------------------------------------------ plumbing
    def _split(self, name: str, *, attr: bool) -> tuple[tuple[Segment, ...], str]:
        if not isinstance(name, str):
            raise InvalidNameError(f"names are strings, got {type(name).__name__}")
        segments = self._current()
        if not attr and "/" in name.strip("/"):
            scope_text, _, name = name.strip("/").rpartition("/")
            segments = segments + tuple(parse_path(scope_text))
        check_name(name, where=f" in {display(format_path(segments))}")
        return segments, name

    def __repr__(self) -> str:
        return f"<provstore.Context {str(self._store.root)!r} at {display(self.path)}>"

    @property
    def _store(self) -> Store:
        handle = self._handle
        if isinstance(handle, StoreRef):
            handle = handle.open()
            object.__setattr__(self, "_handle", handle)
        return handle

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by reference: another process reopens the same store, on
        # first use only, so a Dask scheduler that unpickles every task but
        # runs none never connects to the database or the object root.
        handle = self._handle
        ref = handle if isinstance(handle, StoreRef) else StoreRef(
            handle.url, str(handle.root), handle.safe, handle.durability, handle.readonly)
        return (_reopen, (*ref.args[:3], self.path, self._mmap_mode, *ref.args[3:]))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Context) and other._store is self._store
                and other.path == self.path)

    def __hash__(self) -> int:
        return hash((id(self._store), self.path))


# A bind whose linked copy gc deleted prepares again; each retry needs gc to
# win a fresh race, so a few attempts make failure practically impossible.
_BIND_ATTEMPTS = 10


def _reopen(url: str, root: str, safe: bool, path: str, mmap_mode: str | None,
            durability: str = "normal", readonly: bool = False) -> Context:
    return Context(StoreRef(url, root, safe, durability, readonly), tuple(parse_path(path)),
                   mmap_mode=mmap_mode)


def _where(segments: tuple[Segment, ...], name: str) -> str:
    path = format_path(segments)
    return f"{path}/{name}" if path else name


def _check_attribute(name: str, verb: str, instead: str) -> None:
    if name.startswith("_"):
        raise ReservedNameError(
            f"attribute names starting with '_' are reserved; use {instead}"
        )
    if name in RESERVED:
        raise ReservedNameError(f"cannot {verb} {name!r}: it is a Context method; use {instead}")


def _caller() -> str | None:
    # The first frame outside provstore is the user's line that assigned.
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return None
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


# Method names, present and planned, that attribute assignment must not shadow.
RESERVED = frozenset(
    {n for n in dir(Context) if not n.startswith("_")}
    | {"track", "dependents", "stale", "find", "table", "map", "explain", "close", "pin",
       "unpin", "pins", "calls"}
)
