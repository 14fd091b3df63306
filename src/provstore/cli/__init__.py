"""The ``provstore`` command: a thin click layer over the library.

Every command opens the store, calls one library function and prints the
result as a rich table (plain text when not on a terminal) or, with
``--json``, as JSON for scripts. Errors are handled in one place,
:meth:`provstore.cli.app.Group.invoke`: any :class:`~provstore.errors.ProvstoreError` becomes
a message on stderr and exit code 2, or 3 for a damaged, lost or unaccounted
database (:class:`~provstore.errors.DatabaseDamagedError`), so that a script
tells "could not check" (2, 3) from "checked and found damage" (1).
"""

from __future__ import annotations

from . import lineage_commands, store_commands
from .app import cli, main

__all__ = ["cli", "lineage_commands", "main", "store_commands"]
