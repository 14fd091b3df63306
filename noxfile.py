"""The Python matrix: the SQLite half of the suite on every CPython the package claims.

``make test-pythons`` runs ``nox``: one session per Python version listed in
pyproject.toml's classifiers, each in a virtualenv made afresh under ``.nox/``
with provstore and its test extras installed editable, as ``make test`` does
(tests/integration/test_install.py builds and checks the wheel itself).
``make test-other-pythons`` (what CI runs after ``make test``) skips the
Python running nox, on which ``make test`` already ran the full suite.

Interpreters are found as ``python3.X`` on PATH and among pyenv's installed
versions. A version that is found nowhere fails its session, and the
summary names it: a claim that is not tested is not kept silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nox

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
DEFAULT = f"{sys.version_info.major}.{sys.version_info.minor}"

nox.options.error_on_missing_interpreters = True  # report a missing Python as a failure
nox.options.download_python = "never"  # test the machine's Pythons, never fetched ones
nox.options.reuse_venv = "no"  # install from scratch every run


def _claims_are_contiguous() -> None:
    # requires-python promises every version from its lower bound up; the
    # classifiers (and so this matrix) must not leave a hole in that promise.
    expected = nox.project.python_versions(PYPROJECT, max_version=PYTHONS[-1])
    if expected != PYTHONS:
        raise SystemExit(
            f"pyproject.toml claims Pythons {expected} through requires-python but its "
            f"classifiers list {PYTHONS}; make them agree")


def _pyenv_root() -> Path | None:
    if pyenv := shutil.which("pyenv"):
        found = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip():
            return Path(found.stdout.strip())
    root = os.environ.get("PYENV_ROOT")
    return Path(root) if root else None


def _expose_pyenv_versions() -> None:
    """Make every CPython pyenv has installed findable as ``python3.X``.

    pyenv's shims answer only for its active versions (``pyenv global``);
    naming all installed CPythons in ``PYENV_VERSION`` activates them for
    this run, and their ``bin`` directories, appended to PATH, serve when the
    shims are not on PATH at all.
    """
    root = _pyenv_root()
    if root is None or not (root / "versions").is_dir():
        return
    installed = sorted(
        (p for p in (root / "versions").iterdir() if re.fullmatch(r"3\.\d+\.\d+", p.name)),
        key=lambda p: tuple(int(part) for part in p.name.split(".")),
    )
    active = [v for v in os.environ.get("PYENV_VERSION", "").split(":") if v]
    os.environ["PYENV_VERSION"] = ":".join([*active, *(p.name for p in installed)])
    os.environ["PATH"] = os.pathsep.join([os.environ["PATH"], *(str(p / "bin") for p in installed)])


_claims_are_contiguous()
_expose_pyenv_versions()


def tests(session: nox.Session) -> None:
    """Install provstore with its test extras, then run the SQLite half of the suite."""
    session.install("-e", ".[test,pandas]")
    session.run("python", "--version")
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs,
                env={"PROVSTORE_TEST_BACKENDS": "sqlite"})


# One named session per version rather than one parametrized session, so that
# `nox -t others` can leave out the Python that `make test` covers in full.
for _python in PYTHONS:
    nox.session(python=_python, name=f"tests-{_python}",
                tags=["matrix"] if _python == DEFAULT else ["matrix", "others"])(tests)
