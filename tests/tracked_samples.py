"""Tracked functions shared by the executor tests (process pools, joblib, Dask).

They live in an importable module so that worker processes can unpickle
them by reference. Each body appends "x pid" to an O_APPEND log, so a test
counts exactly how many times, and where, a body ran.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import provstore


def mark(log: str, x: Any) -> None:
    """Append one line for one body execution (atomic across processes)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, f"{x} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def bodies(log: Path) -> list[int]:
    """The sorted arguments of every body that ran."""
    if not log.exists():
        return []
    return sorted(int(line.split()[0]) for line in log.read_text().splitlines())


def pids(log: Path) -> set[int]:
    """The processes the bodies ran in."""
    return {int(line.split()[1]) for line in log.read_text().splitlines()}


@provstore.track(ignore=("log",))
def square(x: int, log: str) -> int:
    mark(log, x)
    return x * x


@provstore.track(ignore=("log",))
def fragile(x: int, log: str) -> int:
    mark(log, x)
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x + 100



@provstore.track(ignore=("log",))
def square_plus_one(x: int, log: str) -> int:
    # Calls another tracked function of this module: in a worker that never
    # opened a store, the inner call must still record (tests/test_workers.py).
    mark(log, x)
    return square(x + 10, log + ".inner") + 1
