"""Mutated real files never crash a reader: a value or a ProvstoreError, in bounded memory.

Each format runs in its own subprocess (tests/backends/fuzz_readers.py) under an
address-space limit; hypothesis' deadline bounds the time of every case.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("fuzz_readers.py")
FORMATS = ["npy", "npy-structured", "hdf5", "nifti", "nifti-gz", "json", "parquet", "netcdf"]
EXAMPLES = 300


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_files_raise_only_provstore_errors(fmt: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(WORKER), fmt, str(EXAMPLES), str(tmp_path)],
                            capture_output=True, text=True, timeout=1800)
    # A negative return code is a signal: the reader crashed the interpreter.
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    found = re.search(r"FUZZ \S+ cases=(\d+) loaded=(\d+) refused=(\d+)", result.stdout)
    assert found, result.stdout
    cases, loaded, refused = (int(n) for n in found.groups())
    assert cases >= EXAMPLES // 2 and loaded + refused == cases
    assert refused > 0  # the mutations did reach the checks
    print(result.stdout.strip())
