"""Finding the object files a store wrote, for tests that open them with other tools."""

from __future__ import annotations

from pathlib import Path

import provstore


def stored_files(ctx: provstore.Context, suffix: str) -> list[Path]:
    """Every object file of *ctx*'s store whose name ends with *suffix*."""
    objects = Path(ctx.store.root) / "objects"
    return sorted(p for p in objects.rglob(f"*{suffix}") if p.is_file())


def only_file(ctx: provstore.Context, suffix: str) -> Path:
    """The one object file ending with *suffix* (fails unless there is exactly one)."""
    found = stored_files(ctx, suffix)
    assert len(found) == 1, found
    return found[0]
