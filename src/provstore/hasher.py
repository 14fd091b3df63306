"""The hasher every canonical digest is fed into: xxh3-128 with tagged, framed payloads.

Kept apart from :mod:`provstore.hashing` (which decides how each type is
encoded) so that the encoders split into their own modules
(:mod:`provstore.hashing_callables`, :mod:`provstore.hashing_pandas`) can use
it without importing the dispatcher that imports them.
"""

from __future__ import annotations

import struct

import xxhash

__all__ = ["Hasher"]

_Q = struct.Struct("<Q").pack


class Hasher:
    """Feed values into one xxh3-128 stream with type tags."""

    __slots__ = ("_active", "_h")

    def __init__(self, active: set[int] | None = None) -> None:
        self._h = xxhash.xxh3_128()
        # Ids of the functions being fed, shared with child hashers, so that a
        # function whose closure refers to itself is fed once, not forever.
        # Made on first use: most digests never meet a function.
        self._active = active

    def raw(self, data: bytes | memoryview) -> None:
        """Feed bytes with no tag (callers add their own framing)."""
        self._h.update(data)

    def tagged(self, tag: bytes, payload: bytes) -> None:
        """Feed a tag, the payload length, then the payload."""
        self._h.update(tag + _Q(len(payload)) + payload)

    def hexdigest(self) -> str:
        """Return the 32-character hex digest of everything fed so far."""
        return self._h.hexdigest()

    def child(self) -> Hasher:
        """Return a fresh hasher that shares this one's recursion guard."""
        return Hasher(self.active())

    def active(self) -> set[int]:
        """Return the ids of the functions being fed (the recursion guard)."""
        if self._active is None:
            self._active = set()
        return self._active
