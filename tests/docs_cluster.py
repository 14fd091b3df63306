"""A real Dask cluster for docs that connect to ``tcp://scheduler:8786``.

Run as a program by tests/test_docs.py in the page's working directory: it starts a
``LocalCluster`` of two single-threaded worker processes, writes the scheduler's address to
the file given as argument, and keeps the cluster up until its stdin closes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dask.distributed import LocalCluster


def main(address_file: str) -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        Path(address_file + ".tmp").write_text(cluster.scheduler_address)
        Path(address_file + ".tmp").rename(address_file)  # whole address or nothing
        sys.stdin.read()


if __name__ == "__main__":  # the workers re-import this module: start the cluster once
    main(sys.argv[1])
