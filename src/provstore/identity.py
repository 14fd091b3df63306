"""Which in-memory objects are stored artifacts, and which call made them.

Objects returned by loads and by tracked calls are remembered weakly, so that
``ctx.y = ctx.x`` binds the same artifact and ``f(ctx.x)`` keys the call on
the artifact's recorded digest: no re-hashing, no re-saving, and lineage that
links ``f``'s call to ``x``. Only objects that cannot silently drift from
their stored bytes are remembered: read-only arrays, and nibabel images
guarded by a snapshot of their header and affine (the data proxy itself is
read-only). Values equal to a recent tracked call's output are linked to that
call by content digest (:meth:`IdentityMap.recent_call`), and small values this
process read from the store are linked to their artifact the same way.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .lazy import LazyModule

if TYPE_CHECKING:
    import numpy as np
else:
    np = LazyModule("numpy")  # no array exists before numpy is imported

__all__ = ["CallMemo", "IdentityMap", "Known", "rememberable"]

RECENT_OUTPUTS = 4096


@dataclass(frozen=True)
class Known:
    """What the store knows of a remembered object."""

    artifact_id: int
    digest: str
    call_id: int | None


def _snapshot(value: Any) -> bytes | None:
    """Bytes that change when a remembered mutable object is edited in place."""
    header = getattr(value, "header", None)
    if header is None or not hasattr(value, "affine"):
        return None
    affine = np.asarray(value.affine, dtype=np.float64)
    return bytes(header.binaryblock) + affine.tobytes()


def rememberable(value: Any) -> bool:
    """Whether *value* cannot drift from its stored bytes unnoticed.

    Read-only arrays of plain values (an object array's elements can be
    mutated in place), and nibabel images, whose header and affine are
    checked against a snapshot. Only such objects may be handed out twice.
    """
    if "numpy" in sys.modules and isinstance(value, np.ndarray):
        return not value.flags.writeable and not value.dtype.hasobject
    mod = type(value).__module__
    return mod.startswith("nibabel.") and hasattr(value, "dataobj") and hasattr(value, "header")


class IdentityMap:
    """Weak map from live objects to the artifacts (and calls) they came from."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref[Any], Known, bytes | None]] = {}
        self._recent: OrderedDict[str, tuple[int | None, int]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, value: Any, known: Known) -> None:
        """Remember that *value* is the in-memory form of ``known.artifact_id``."""
        if not rememberable(value):
            return
        key = id(value)
        entries = self._entries

        def forget(_ref: weakref.ref[Any]) -> None:
            entries.pop(key, None)

        try:
            ref = weakref.ref(value, forget)
        except TypeError:
            return
        entries[key] = (ref, known, _snapshot(value))

    def known(self, value: Any) -> Known | None:
        """Return what is known of *value*, if it is that very, unmodified object."""
        entry = self._entries.get(id(value))
        if entry is None or entry[0]() is not value:
            return None
        if entry[2] is not None and _snapshot(value) != entry[2]:
            return None  # a header or affine was edited since the load
        return entry[1]

    def clear(self) -> None:
        """Forget everything (after ``gc`` deleted artifacts this process knew)."""
        with self._lock:
            self._entries.clear()
            self._recent.clear()

    def note_output(self, digest: str, call_id: int | None, artifact_id: int) -> None:
        """Record that this process received content *digest* from the store.

        From a tracked call (*call_id*), or a plain load of an inline value
        (``call_id=None``): small values have no identity to remember them by,
        so a later argument or binding with this content is linked to it.
        """
        with self._lock:
            self._recent[digest] = (call_id, artifact_id)
            self._recent.move_to_end(digest)
            while len(self._recent) > RECENT_OUTPUTS:
                self._recent.popitem(last=False)

    def recent_call(self, digest: str) -> int | None:
        """The call that recently returned content *digest* in this process, if any."""
        found = self._recent.get(digest)
        return None if found is None else found[0]

    def recent_artifact(self, digest: str) -> int | None:
        """The artifact of content *digest* a tracked call recently returned, if any."""
        found = self._recent.get(digest)
        return None if found is None else found[1]


class CallMemo:
    """Per-process memo of finished calls: key → call id, call id → outputs.

    Finished calls never change (artifacts are immutable), so a process may
    answer a repeated call without asking the database again.
    """

    def __init__(self, size: int = 65536) -> None:
        self._keys: OrderedDict[str, int] = OrderedDict()
        self._outputs: OrderedDict[int, list[tuple[str, int, int]]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def call_for(self, key: str) -> int | None:
        """The finished call with *key*, if this process has seen it."""
        return self._keys.get(key)

    def note_key(self, key: str, call_id: int) -> None:
        """Remember that *key* finished as *call_id*."""
        with self._lock:
            self._keys[key] = call_id
            if len(self._keys) > self._size:
                self._keys.popitem(last=False)

    def forget_keys(self) -> None:
        """Forget every key → call answer (calls were forgotten in the database)."""
        with self._lock:
            self._keys.clear()

    def outputs(self, call_id: int) -> list[tuple[str, int, int]] | None:
        """The output rows of *call_id*, if this process has seen them."""
        return self._outputs.get(call_id)

    def note_outputs(self, call_id: int, rows: list[tuple[str, int, int]]) -> None:
        """Remember the output rows of *call_id*."""
        with self._lock:
            self._outputs[call_id] = rows
            if len(self._outputs) > self._size:
                self._outputs.popitem(last=False)
