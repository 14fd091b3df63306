"""Which view of which store is active in this thread or task.

Two pieces of process state that tracked functions and workers consult when
no store is named explicitly: the stack of views entered with ``with ctx:`` /
``with ctx.scope(...):`` (a :class:`contextvars.ContextVar`, so private to the
thread or asyncio task that entered the block), and the view returned by the
most recent :func:`provstore.open` in this process.

The views themselves are :class:`provstore.Context` objects; this layer sees
them only through the small :class:`View` protocol, so it sits below the
Context that uses it.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable
from typing import Protocol

from .store import Store

__all__ = [
    "View", "active", "current", "entered", "forget_last", "last_opened", "leave", "open_view",
    "opened", "set_opener", "stack",
]


class View(Protocol):
    """What tracked functions and workers need of a Context: its store and scope."""

    @property
    def store(self) -> Store: ...

    @property
    def path(self) -> str: ...

    def scope(self, *labels: str) -> View: ...

    def __enter__(self) -> View: ...

    def __exit__(self, *exc: object) -> None: ...


_active: contextvars.ContextVar[tuple[View, ...]] = contextvars.ContextVar(
    "provstore_active", default=()
)
_last: list[View] = []
# provstore.open, registered by provstore.api: services below the facade that
# must open a store by location (provstore.Memory(location)) call it here.
_opener: list[Callable[[str | os.PathLike[str] | None], View]] = []


def stack() -> tuple[View, ...]:
    """The views entered with ``with`` in this thread/task, outermost first."""
    return _active.get()


def entered(view: View) -> None:
    """Push *view* on this thread/task's stack (``Context.__enter__``)."""
    _active.set((*_active.get(), view))


def leave(view: View) -> None:
    """Remove the innermost entry that is *view* (``Context.__exit__``)."""
    entries = _active.get()
    for i in range(len(entries) - 1, -1, -1):
        if entries[i] is view:
            _active.set(entries[:i] + entries[i + 1 :])
            return


def active() -> View | None:
    """The innermost view entered with ``with`` in this thread/task, if any."""
    entries = _active.get()
    return entries[-1] if entries else None


def opened(view: View) -> None:
    """Remember *view* as the root of the store this process opened last."""
    _last[:] = [view]


def forget_last() -> None:
    """Forget the last opened view (its store was closed)."""
    _last.clear()


def last_opened() -> View | None:
    """The root view of the store this process opened most recently, if any.

    Still valid in a forked child: a Store reconnects, and opens its own run,
    when it finds itself in a new process.
    """
    return _last[-1] if _last else None


def current() -> View | None:
    """The view a tracked function records into: the active one, else the last opened."""
    view = active()
    return view if view is not None else last_opened()



def set_opener(opener: Callable[[str | os.PathLike[str] | None], View]) -> None:
    """Register the function that opens a store by location (``provstore.open``)."""
    _opener[:] = [opener]


def open_view(location: str | os.PathLike[str] | None) -> View:
    """Open the store at *location* with the registered opener (``provstore.open``)."""
    if not _opener:
        raise RuntimeError("import provstore first: no store opener is registered")
    return _opener[0](location)
