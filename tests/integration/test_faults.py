"""Fault injection at every write point of a bind and of a tracked call (plan C1).

Each case runs ``fault_child`` in a real child process with
``PROVSTORE_FAULT=<point>:<action>@<n>``: it binds ``v0``, calls ``compute(0)``,
binds ``v1``, calls ``compute(1)``, printing ``ack`` after each operation
returns. The fault kills the child (SIGKILL) or raises EIO or ENOSPC at one
step: the temporary file written, its fsync, the rename, the directory
fsync, or a write transaction just before or just after its commit, in the
bind or in the call (its lease claim and its commit). Afterwards:

- the store opens and ``provstore verify`` passes;
- every acknowledged bind reads back its value;
- no file under ``objects/`` is partial, and ``tmp/`` holds nothing;
- a raised fault reached the child as a ``StorageError`` (``StorageFullError``
  for ENOSPC), never a raw exception, and the retry succeeded;
- rerunning the whole script resumes: it completes, and no acknowledged
  call's body runs again (counted in an ``O_APPEND`` log).

Children are forked from two warm server processes (imports done once), so
the whole matrix stays short on two cores. SQLite only: the object-file
points do not depend on the database, and the transaction points are the
same ``db.engine.write`` on both.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tables
from click.testing import CliRunner

import provstore
from provstore import locations
from provstore.cli import cli

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import fault_child  # noqa: E402  (the module the children run, found next to this file)

ACTIONS = ("kill", "eio", "enospc")
PUBLISH_POINTS = ("publish.write", "publish.fsync", "publish.rename", "publish.dirfsync")
TXN_POINTS = ("txn.before_commit", "txn.after_commit")
# Which pass of a point hits which operation (see fault_child.main): object
# files are published by bind v0 (1st) and call 0 (2nd); write transactions
# are the run's record (1st), the scope (2nd), bind v0 (3rd), the lease claim
# of call 0 (4th) and its commit (5th).
PUBLISH_PASSES = {"bind": 1, "call": 2}
TXN_PASSES = {"bind": 3, "claim": 4, "commit": 5}


@dataclass(frozen=True)
class Case:
    point: str
    action: str
    fmt: str
    step: str
    n: int

    @property
    def spec(self) -> str:
        return f"{self.point}:{self.action}@{self.n}"

    def __str__(self) -> str:
        return f"{self.spec} {self.fmt} ({self.step})"


def matrix() -> list[Case]:
    """Every point x action x format at the bind; the tracked call's steps for fewer formats.

    A call publishes its outputs through the same code as a bind, and its
    lease claim holds no value at all, so those steps run for one format
    (npy); a call's commit, which writes the output rows, runs for all.
    """
    files = ("npy", "hdf5", "nifti")  # json values are inline: no object file
    grid = itertools.product
    cases = [Case(pt, act, fmt, "bind", PUBLISH_PASSES["bind"])
             for pt, act, fmt in grid(PUBLISH_POINTS, ACTIONS, files)]
    cases += [Case(pt, act, "npy", "call", PUBLISH_PASSES["call"])
              for pt, act in grid(PUBLISH_POINTS, ACTIONS)]
    cases += [Case(pt, act, fmt, step, TXN_PASSES[step])
              for pt, act, fmt, step in grid(TXN_POINTS, ACTIONS, fault_child.FORMATS,
                                             ("bind", "commit"))]
    cases += [Case(pt, act, "npy", "claim", TXN_PASSES["claim"])
              for pt, act in grid(TXN_POINTS, ACTIONS)]
    return cases


class Zygote:
    """A warm process that forks one child per case (see ``fault_child.serve``)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(HERE), os.environ.get("PYTHONPATH", "")])}
        env.pop("PROVSTORE_FAULT", None)
        # A fault right after a lease claim commits leaves the lease to this
        # live process, unknown to it: its retry waits for the lease to
        # expire (by design). Short leases keep that wait short.
        env["PROVSTORE_LEASE_SECONDS"] = "2"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import fault_child; fault_child.serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def run(self, store: Path, fmt: str, fault: str, out: Path, log: Path) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        job = {"store": str(store), "fmt": fmt, "fault": fault, "out": str(out),
               "log": str(log)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise AssertionError("the fault-injection server died")
        code: int = json.loads(answer)["code"]
        return code

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def zygotes() -> Iterator[list[Zygote]]:
    servers = [Zygote(), Zygote()]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


_CHECK = threading.Lock()  # CliRunner swaps sys.stdout: one check at a time


def run_case(zygote: Zygote, case: Case, root: Path, template: Path) -> str | None:
    """Run *case* in a fresh copy of the empty store *template*; return a violation, or None."""
    store = root / "study"
    shutil.copytree(template, store)  # creating each store would dominate the run time
    log = root / "bodies.log"
    code = zygote.run(store, case.fmt, case.spec, root / "faulted.out", log)
    output = (root / "faulted.out").read_text()
    acked = [line[4:] for line in output.splitlines() if line.startswith("ack ")]
    errors = [line.split() for line in output.splitlines() if line.startswith("error ")]
    if case.action == "kill":
        if code != -9:
            return f"{case}: the fault never fired (exit {code}):\n{output}"
    else:
        if code != 0 or "done" not in output:
            return f"{case}: the child failed (exit {code}):\n{output}"
        want = "StorageFullError" if case.action == "enospc" else "StorageError"
        if [e[3] for e in errors] != [want]:
            return f"{case}: expected one {want}, got:\n{output}"
    with _CHECK:
        problem = check_store(store, case.fmt, acked)
    if problem:
        return f"{case}: after the fault: {problem}\n{output}"
    bodies_before = _bodies(log)
    code = zygote.run(store, case.fmt, "", root / "resumed.out", log)
    resumed = (root / "resumed.out").read_text()
    if code != 0 or resumed.count("ack ") != len(fault_child.OPS):
        return f"{case}: the rerun did not complete (exit {code}):\n{resumed}"
    rerun = _bodies(log)[len(bodies_before):]
    for op in acked:
        if op.startswith("call ") and f"{case.fmt} {op[5:]}" in rerun:
            return f"{case}: acknowledged {op} was computed again by the rerun"
    with _CHECK:
        problem = check_store(store, case.fmt, list(fault_child.OPS))
    return None if not problem else f"{case}: after the rerun: {problem}"


def _bodies(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [" ".join(line.split()[:2]) for line in log.read_text().splitlines()]


def check_store(store: Path, fmt: str, acked: list[str]) -> str | None:
    """The store opens, verifies, holds every acknowledged bind, and nothing partial."""
    if not (store / "provstore.db").exists():
        return None if not acked else "no database, yet operations were acknowledged"
    ctx = provstore.open(store)
    try:
        result = CliRunner().invoke(cli, ["--store", str(store), "verify"])
        if result.exit_code != 0:
            return f"provstore verify failed:\n{result.output}"
        leftovers = list((store / "tmp").iterdir())
        if leftovers:
            return f"tmp/ still holds {leftovers}"
        for op in acked:
            if op.startswith("bind "):
                name = op[5:]
                if not fault_child.same(fmt, ctx[name], int(name[1:])):
                    return f"acknowledged {name} reads back a different value"
        for path in ctx.store.objects.iter_files():
            if not _whole(path):
                return f"{path} is partial"
    finally:
        locations.close(ctx.store)
    return None


def _whole(path: Path) -> bool:
    """Whether an object file (referenced or not) reads back completely."""
    try:
        if path.name.endswith(".npy"):
            np.load(path, mmap_mode="r").sum()
        elif path.name.endswith(".h5"):
            with tables.open_file(str(path)) as f:
                f.root.a.read()
        elif path.name.endswith((".nii", ".nii.gz")):
            np.asarray(nib.load(path).dataobj)
        else:
            path.read_bytes()
    except Exception:
        return False
    return True


def test_every_write_point_fails_safely(zygotes: list[Zygote], tmp_path: Path) -> None:
    template = tmp_path / "template"
    locations.close(provstore.open(template).store)
    cases = matrix()
    roots = [tmp_path / f"case{i}" for i in range(len(cases))]
    for root in roots:
        root.mkdir()
    with ThreadPoolExecutor(len(zygotes)) as pool:
        # Each thread drives one server: a server runs one child at a time.
        lanes = [list(zip(cases[i::len(zygotes)], roots[i::len(zygotes)], strict=True))
                 for i in range(len(zygotes))]
        results = pool.map(lambda z, lane: [run_case(z, c, r, template) for c, r in lane],
                           zygotes, lanes)
        violations = [v for lane in results for v in lane if v is not None]
    print(f"fault matrix: {len(cases)} cases, {len(cases) - len(violations)} consistent, "
          f"{len(violations)} violations")
    assert not violations, "\n\n".join(violations[:5])
