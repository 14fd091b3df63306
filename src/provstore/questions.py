"""Questions a :class:`~provstore.context.Context` asks of its store.

:class:`Questions` is a mixin of :class:`~provstore.context.Context`: the
methods that read provenance rather than values (a name's history, why it was
computed, what depends on it, what is stale, and collecting or finding results
across scopes). It holds no state of its own and is not used alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import MissingKeyError
from .lineage import History

if TYPE_CHECKING:
    from .impact import Dependent, Stale
    from .scope import Segment
    from .store import Store

__all__ = ["Questions"]


class Questions:
    """The store-querying methods of :class:`~provstore.context.Context`."""

    # Context defines the slots; an empty tuple here keeps instances dict-free.
    __slots__ = ()

    if TYPE_CHECKING:
        # Provided by Context (stubs, so the class body has no annotations).
        @property
        def _mmap_mode(self) -> str | None: ...

        @property
        def _store(self) -> Store: ...

        @property
        def path(self) -> str: ...

        def _current(self) -> tuple[Segment, ...]: ...

        def _split(self, name: str, *, attr: bool) -> tuple[tuple[Segment, ...], str]: ...

        def _history(self, segments: tuple[Segment, ...], chain: list[int],
                     name: str) -> History: ...

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
        from .impact import dependents

        h = self.history(name)
        if h.latest.artifact_id is None:
            raise MissingKeyError(f"{h.path} is deleted (v{h.latest.number}): no dependents")
        return dependents(self._store, h.latest.artifact_id, transitive=transitive,
                          exclude=h.path)

    def stale(self, *, unimportable: bool = False) -> list[Stale]:
        """Return the results here and below whose recorded recipe changed since.

        A current binding made by a tracked call is stale when the function,
        importable now, has another code version than the call recorded
        (``"code changed: <dependencies>"``), or when an input of the call was
        bound to a name that now holds another value (``"input x rebound:
        scope/name v2 → v3"``). Nothing is recomputed or deleted.

        Parameters
        ----------
        unimportable : bool
            Also list results whose function cannot be imported here
            (reason ``"not importable"``); by default they are skipped.

        Returns
        -------
        list of Stale
            ``path``, ``reason`` and ``call_id`` of each, sorted by path.
        """
        from .impact import stale

        return stale(self._store, self.path, unimportable=unimportable)

    def table(self, name: str, func: Any = None, *, recursive: bool = True) -> Any:
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
        from .sweeps import table

        return table(self._store, self._current(), name, func, recursive=recursive,
                     mmap_mode=self._mmap_mode)

    def find(self, function: Any = None, **params: Any) -> list[Any]:
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
        from .sweeps import find

        return find(self._store, self._current(), function=function, params=params)
