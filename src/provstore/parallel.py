"""``ctx.map``: run a function over items through any ``concurrent.futures.Executor``.

Each call runs inside the store and the scope of the context that started the
map: a worker receives the context by reference (store URL + scope path, see
:meth:`Context.__reduce__ <provstore.context.Context.__reduce__>`), reopens the
store once per process, and enters the scope with ``with view:`` around each
call. Tracked functions therefore record into that store, and bindings made
through :func:`provstore.context.active_context` land in that scope.

A function no worker can import (a lambda, a nested function) is pickled by
value (:mod:`provstore.byvalue`).

Items are sent in chunks of ``chunksize`` with ``executor.submit``, which every
executor implements (process and thread pools, ``loky``,
``dask.distributed.Client.get_executor()``). A failing item does not fail its
chunk: each item's outcome travels back separately, and is raised when the
iterator reaches it.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import pickle
import socket
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import byvalue
from .ambient import View
from .tracking import TrackedFunction

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["WorkerTraceback", "map_calls"]

# The default pool's workers start from a clean process, never by fork() of
# the caller: a fork copies every lock the caller's threads hold (its own,
# SQLite's, any library's) without the threads that would release them, and
# a worker that needs one waits forever. Python 3.14 made the same choice.
_START_METHOD = ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                 else "spawn")


class WorkerTraceback(Exception):
    """The formatted traceback of an exception raised in another process.

    Set as the ``__cause__`` of the re-raised exception, as
    :mod:`concurrent.futures` does, so the worker's frames show up above the
    parent's in the printed traceback.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


@dataclass(frozen=True)
class _Failure:
    """An item's exception, with where it was raised and its traceback text."""

    exc: BaseException
    text: str
    where: tuple[str, int]


@dataclass(frozen=True)
class _ScopedCall:
    """``func`` applied to each item of a chunk inside ``with ctx:``.

    Picklable by any executor: the context by reference (it reopens the
    store), the function by module and qualname, or by value when a worker
    could not import it.
    """

    ctx: View
    func: Callable[[Any], Any]

    def __call__(self, chunk: tuple[Any, ...]) -> list[Any]:
        here = (socket.gethostname(), os.getpid())
        outcomes: list[Any] = []
        with self.ctx:
            for item in chunk:
                try:
                    outcomes.append(self.func(item))
                except Exception as exc:
                    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                    outcomes.append(_Failure(_portable(exc), text, here))
        return outcomes

    def __reduce__(self) -> tuple[Any, ...]:
        # A function no worker can import (a lambda, a nested function, one of
        # the script's under loky) goes by value; tracked functions choose
        # for themselves.
        func = self.func
        if isinstance(func, TrackedFunction) or byvalue.importable(func):
            return (_ScopedCall, (self.ctx, func))
        return (_scoped_by_value, (self.ctx, byvalue.dumps(func)))


def _scoped_by_value(ctx: View, blob: bytes) -> _ScopedCall:
    return _ScopedCall(ctx, pickle.loads(blob))


def _portable(exc: Exception) -> BaseException:
    # An exception that cannot cross a process boundary would fail the whole
    # chunk's future; replace it by a RuntimeError that names it.
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    return exc


class _Results(Iterator[Any]):
    """The results of one map, in input order; shuts down the pool it owns."""

    def __init__(self, futures: list[tuple[Future[list[Any]], int]], pool: Executor | None,
                 progress: Progress | None) -> None:
        self._futures = futures
        self._pool = pool
        self._progress = progress
        self._chunk: list[Any] = []
        self._next_chunk = 0
        self._here = (socket.gethostname(), os.getpid())

    def __iter__(self) -> _Results:
        return self

    def __next__(self) -> Any:
        while not self._chunk:
            if self._next_chunk >= len(self._futures):
                self.close()
                raise StopIteration
            future, _ = self._futures[self._next_chunk]
            self._next_chunk += 1
            try:
                self._chunk = list(reversed(future.result()))
            except BaseException:
                self.close(cancel=not isinstance(sys.exc_info()[1], Exception))
                raise
        outcome = self._chunk.pop()
        if isinstance(outcome, _Failure):
            # The other calls keep running; with our own pool, wait for them to
            # commit before the exception leaves, so the store is complete.
            self.close()
            exc = outcome.exc
            if outcome.where != self._here:
                raise exc from WorkerTraceback(outcome.text)
            raise exc
        return outcome

    def close(self, *, cancel: bool = False) -> None:
        """Stop the progress bar and shut down the pool ``map`` created.

        Calls already running finish (and commit) first; with ``cancel=True``
        calls not yet started are cancelled.
        """
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=cancel)
        if self._progress is not None:
            progress, self._progress = self._progress, None
            progress.stop()

    def __del__(self) -> None:
        # Abandoned early (``break``, garbage): started calls finish, the rest are cancelled.
        with contextlib.suppress(Exception):
            self.close(cancel=True)


def map_calls(ctx: View, func: Callable[[Any], Any], iterable: Iterable[Any], *,
              executor: Executor | None = None, chunksize: int = 1,
              progress: bool | None = None) -> Iterator[Any]:
    """Run ``func(item)`` for each item in *ctx*'s store and current scope.

    See :meth:`provstore.Context.map`, which calls this.
    """
    if chunksize < 1:
        raise ValueError(f"chunksize must be at least 1, not {chunksize}")
    items = list(iterable)
    # A fresh view of the current scope: pickled, it names this scope; in a
    # thread, entering it also redirects ``ctx`` (the view derives from it).
    call = _ScopedCall(ctx.scope(), func)
    chunks = [tuple(items[i : i + chunksize]) for i in range(0, len(items), chunksize)]
    pool: Executor | None = None
    if executor is None:
        pool = executor = ProcessPoolExecutor(
            max_workers=max(1, min(os.cpu_count() or 1, len(chunks) or 1)),
            mp_context=multiprocessing.get_context(_START_METHOD))
    if progress is None:
        progress = _interactive()
    bar = _start_progress(func, len(items)) if progress else None
    futures: list[tuple[Future[list[Any]], int]] = []
    try:
        for chunk in chunks:
            future = executor.submit(call, chunk)
            if bar is not None:
                future.add_done_callback(_advance(bar, len(chunk)))
            futures.append((future, len(chunk)))
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.stop()
        raise
    return _Results(futures, pool, bar)


def _interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _start_progress(func: Callable[[Any], Any], total: int) -> Progress:
    # Imported here: rich's progress machinery costs tens of milliseconds at
    # start-up, and only maps on a terminal draw a bar.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
    bar.add_task(_describe(func), total=total)
    bar.start()
    return bar


def _describe(func: Any) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return str(getattr(func, "__qualname__", None) or type(func).__name__)


def _advance(bar: Progress, n: int) -> Callable[[Future[list[Any]]], None]:
    def done(_: Future[list[Any]]) -> None:
        task_id = bar.task_ids[0]
        bar.advance(task_id, n)

    return done
