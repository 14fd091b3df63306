"""The child of test_faults.py: binds and tracked calls under ``PROVSTORE_FAULT``.

Run as ``python fault_child.py STORE FORMAT``. It binds ``v0``, calls
``compute`` for 0, binds ``v1``, calls for 1, printing ``ack <op>`` only
after each operation returned, so the parent knows what was acknowledged
when the child died. A provstore error is printed (``error <op> <class>
<errno>``) and the operation retried once: the injected fault fires once.
Any other exception is a bug and ends the child with a traceback.

The parent imports this module too, to call ``compute`` again and count
(through the O_APPEND log named by ``PROVSTORE_FAULT_LOG``) whether a body
runs for a call the child acknowledged: it must not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import nibabel as nib
import numpy as np

import provstore
from provstore.errors import ProvstoreError

FORMATS = ("npy", "hdf5", "nifti", "json")
OPS = ("bind v0", "call 0", "bind v1", "call 1")


def value(fmt: str, i: int) -> Any:
    """A small value that the backend *fmt* stores, different for each *i*."""
    if fmt == "npy":
        return np.full(64, i, dtype=np.int64)
    if fmt == "hdf5":
        return {"a": np.full(8, i, dtype=np.float64), "label": f"item {i}"}
    if fmt == "nifti":
        return nib.Nifti1Image(np.full((2, 2, 2), i, dtype=np.int16), np.eye(4))
    return {"i": i, "label": f"item {i}"}


def same(fmt: str, got: Any, i: int) -> bool:
    """Whether *got* is what ``value(fmt, i)`` stored."""
    want = value(fmt, i)
    if fmt == "npy":
        return bool(np.array_equal(got, want))
    if fmt == "hdf5":
        return bool(np.array_equal(got["a"], want["a"])) and got["label"] == want["label"]
    if fmt == "nifti":
        return bool(np.array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj)))
    return bool(got == want)


@provstore.track
def compute(fmt: str, i: int) -> Any:
    """A tracked body that logs each execution; its outputs differ from the bound values."""
    fd = os.open(os.environ["PROVSTORE_FAULT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{fmt} {i} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return value(fmt, 100 + i)


def _attempt(label: str, op: Callable[[], object]) -> None:
    for _ in range(2):
        try:
            op()
        except ProvstoreError as exc:
            print(f"error {label} {type(exc).__name__} {getattr(exc, 'errno', None)}",
                  flush=True)
            continue
        print(f"ack {label}", flush=True)
        return
    sys.exit(3)


def main(store: str, fmt: str) -> None:
    ctx = provstore.open(store)
    for i in range(2):
        _attempt(f"bind v{i}", lambda i=i: ctx.__setitem__(f"v{i}", value(fmt, i)))
        _attempt(f"call {i}", lambda i=i: compute(fmt, i))
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])


def serve() -> None:
    """Fork one child per request line, from this warm process (imports done once).

    Each line on stdin is JSON ``{"store", "fmt", "fault", "out", "log"}``;
    the child arms the fault, writes its acknowledgements to ``out`` and
    exits like a script would (exit handlers run, unless killed). The
    answer is one JSON line: the child's exit code, or minus the signal that
    killed it.
    """
    import atexit
    import json

    from provstore import faults
    from provstore.codeversion import FINGERPRINTS

    # Warm what every child would otherwise redo: the code version of
    # `compute` (it scans the installed distributions, ~0.5 s).
    FINGERPRINTS.current(compute.__wrapped__)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: never returns into the loop
            code = 0
            try:
                fd = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.environ["PROVSTORE_FAULT_LOG"] = job["log"]
                faults.arm(job["fault"])
                main(job["store"], job["fmt"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            atexit._run_exitfuncs()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"code": code}), flush=True)
