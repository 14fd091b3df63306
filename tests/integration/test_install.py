"""An installed wheel (not the editable checkout) creates and upgrades stores."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_migrations_and_creates_a_store(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(REPO)],
        check=True,
    )
    wheel = next(dist.glob("provstore-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # The fresh venv sees this environment's dependencies through a plain path
    # entry; .pth files there (the editable install of provstore) are not run.
    purelib = sysconfig.get_paths()["purelib"]
    fresh_site = Path(
        subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       check=True, capture_output=True, text=True).stdout.strip()
    )
    (fresh_site / "deps.pth").write_text(purelib + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True)
    script = textwrap.dedent(
        """
        import sys, provstore
        from provstore.db.schema import migrations_dir
        print(provstore.__file__)
        print(migrations_dir())
        ctx = provstore.open(sys.argv[1])
        ctx.x = [1, 2, 3]
        print(provstore.open(sys.argv[1]).x)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PROVSTORE"}}
    out = subprocess.run([str(py), "-c", script, str(tmp_path / "store")], check=True,
                         capture_output=True, text=True, cwd=tmp_path, env=env).stdout.split("\n")
    assert out[0].startswith(str(fresh_site))
    assert out[1].startswith(str(fresh_site)) and out[1].endswith("_migrations")
    assert out[2] == "[1, 2, 3]"
    assert (tmp_path / "store" / "provstore.db").is_file()
