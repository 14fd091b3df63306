"""``provstore.Memory``: the ``joblib.Memory`` that scikit-learn and nilearn accept.

scikit-learn's ``Pipeline(memory=...)`` and nilearn's ``memory=`` parameters
take a ``joblib.Memory`` (nilearn checks ``isinstance``; scikit-learn calls
``memory.cache``). :class:`Memory` is one, but joblib's own cache directory is
never created: every function it caches becomes a tracked function of a
provstore store, with its lineage, history, ``explain``, code-aware keys and
exactly-once computation across processes.

    ctx = provstore.open("study")
    pipe = Pipeline(steps, memory=ctx.memory())
    masker = NiftiMasker(memory=ctx.memory(), memory_level=2)

What differs from joblib, by choice:

- Results load as they do from the store: arrays as read-only memory maps
  when ``mmap_mode="r"``; with joblib's default ``mmap_mode=None`` arrays come
  back as fresh in-memory copies, so a caller may modify them.
- ``clear()`` forgets the results of the functions cached through this object
  (their calls are no longer hits; their history stays); it never deletes
  files. ``reduce_size`` runs the store's ``gc`` with retention rules.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from collections.abc import Callable
from typing import Any

import joblib
import numpy as np

from . import ambient, maintenance
from .ambient import View
from .tracking import TrackedFunction

__all__ = ["CachedFunction", "Memory", "ShelvedResult"]


# joblib ships no type information, so its Memory is Any to mypy.
class Memory(joblib.Memory):  # type: ignore[misc]
    """A ``joblib.Memory`` whose cache is a provstore store.

    Parameters
    ----------
    location : path, optional
        The store directory (as for :func:`provstore.open`); ignored when
        *context* is given.
    context : Context, optional
        The store and scope to record into (``ctx.memory()`` passes itself);
        by default the store at *location* is opened with
        :func:`provstore.open`.
    mmap_mode : {None, "r", "c"}
        How array results come back: ``None`` (joblib's default) gives
        in-memory copies, ``"r"`` read-only memory maps.
    verbose : int
        Accepted for compatibility; provstore prints nothing.
    **kwargs
        joblib's ``backend``, ``compress`` and ``backend_options`` are
        accepted and ignored: storage follows provstore's formats.
    """

    def __init__(self, location: str | os.PathLike[str] | None = None, *,
                 context: View | None = None, mmap_mode: str | None = None,
                 verbose: int = 0, **kwargs: Any) -> None:
        ctx = context if context is not None else ambient.open_view(location)
        # joblib's own store backend is never made: location=None here.
        super().__init__(location=None, mmap_mode=mmap_mode, verbose=verbose)
        self.context = ctx
        # Non-None, so scikit-learn clones estimators before fitting them.
        self.location = str(ctx.store.root)
        self._cached: dict[str, CachedFunction] = {}

    def cache(self, func: Callable[..., Any] | None = None, ignore: list[str] | None = None,
              verbose: int | None = None, mmap_mode: str | bool | None = False,
              cache_validation_callback: Any = None) -> Any:
        """Return *func* as a tracked function of this store (a decorator without *func*).

        ``ignore`` names parameters left out of the key; ``mmap_mode``
        overrides this Memory's for the function. ``verbose`` and
        ``cache_validation_callback`` are accepted and ignored: a result is
        valid exactly while the function's code and arguments are unchanged.
        """
        if func is None:
            return functools.partial(self.cache, ignore=ignore, verbose=verbose,
                                     mmap_mode=mmap_mode)
        if isinstance(func, TrackedFunction):  # cache the function itself, once
            func = vars(func)["__wrapped__"]
        mode = mmap_mode if mmap_mode is None or isinstance(mmap_mode, str) else self.mmap_mode
        cached = CachedFunction(func, context=self.context, ignore=tuple(ignore or ()),
                                mmap_mode=mode)
        self._cached[cached.identity] = cached
        return cached

    def eval(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call *func* through the cache."""
        return self.cache(func)(*args, **kwargs)

    def clear(self, warn: bool = True) -> None:
        """Forget the results of every function cached through this Memory."""
        for cached in self._cached.values():
            cached.clear(warn=False)

    def reduce_size(self, bytes_limit: int | str | None = None, items_limit: int | None = None,
                    age_limit: dt.timedelta | None = None) -> None:
        """Run the store's ``gc`` with the matching retention rules, and apply it.

        ``bytes_limit`` is ``gc --max-bytes`` (least recently used calls go
        first), ``age_limit`` is ``--older-than`` and ``items_limit`` is
        ``--keep-calls`` (the newest N calls of each function in each scope).
        As every gc, it never drops current or pinned results, nor what they
        were computed from: the whole store is collected, not only this
        Memory's functions.
        """
        if bytes_limit is None and items_limit is None and age_limit is None:
            return
        maintenance.gc(self.context.store, dry_run=False, max_bytes=bytes_limit,
                       keep_calls=items_limit, older_than=age_limit)

    def __repr__(self) -> str:
        return f"provstore.Memory(location={self.location!r}, scope={self.context.path!r})"


class CachedFunction(TrackedFunction):
    """A tracked function with joblib's ``MemorizedFunc`` methods."""

    def __init__(self, func: Callable[..., Any], *, context: View,
                 ignore: tuple[str, ...] = (), mmap_mode: str | None = None) -> None:
        super().__init__(func, context=context, ignore=ignore)
        self.mmap_mode = mmap_mode

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        value = super().__call__(*args, **kwargs)
        return value if self.mmap_mode is not None else _in_memory(value)

    def call_and_shelve(self, *args: Any, **kwargs: Any) -> ShelvedResult:
        """Compute (or find) the result and return a reference to it (nilearn's shelving)."""
        value = super().__call__(*args, **kwargs)
        return ShelvedResult(value if self.mmap_mode is not None else _in_memory(value))

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Whether this call would be a hit (nothing is computed)."""
        return self.is_cached(*args, **kwargs)

    def clear(self, warn: bool = True) -> None:
        """Forget this function's results: its later calls compute again."""
        ctx = self._resolve_context()
        if ctx is not None:
            ctx.store.forget_calls(self.identity)


class ShelvedResult:
    """A result kept by :meth:`CachedFunction.call_and_shelve`; ``get()`` returns it."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def get(self) -> Any:
        """The result."""
        return self._value

    def clear(self) -> None:
        """Drop this reference (the stored result stays in the store)."""
        self._value = None


def _in_memory(value: Any) -> Any:
    if isinstance(value, np.memmap):
        return np.array(value)
    if type(value) is tuple:
        return tuple(_in_memory(v) for v in value)
    return value
