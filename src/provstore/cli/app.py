"""The ``provstore`` group, its error handling and the output helpers every command uses."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from .. import api, maintenance
from ..context import Context
from ..errors import DatabaseDamagedError, ProvstoreError, StoreNotFoundError
from ..lineage import Version

__all__ = [
    "EXIT_DAMAGED", "EXIT_ERROR", "EXIT_NEGATIVE", "EXIT_OK", "CommandError", "Env", "cli",
    "console", "echo_json", "json_option", "main", "on_terminal", "pass_env", "plain_cell",
    "progress_bar", "show_table", "version_dict",
]

EXIT_OK, EXIT_NEGATIVE, EXIT_ERROR, EXIT_DAMAGED = 0, 1, 2, 3
EXIT_CODES = """\b
Exit codes:
  0  success
  1  a negative answer: `verify` found damage (--strict: or orphans), `which` found nothing
  2  an error (no store, unknown name, bad option): the message is on stderr
  3  the database is damaged, or lost while objects exist: nothing was checked or changed"""


class CommandError(ProvstoreError):
    """A command cannot do what was asked (reported like every ProvstoreError)."""


class Group(click.Group):
    """The one error handler: ProvstoreError → message on stderr, exit code 2 (3: damage)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProvstoreError as exc:
            click.echo(f"provstore: error: {exc}", err=True)
            code = EXIT_DAMAGED if isinstance(exc, DatabaseDamagedError) else EXIT_ERROR
            raise click.exceptions.Exit(code) from exc


class Env:
    """The options of the group; opens the store on first use."""

    def __init__(self, store: Path, db: str | None) -> None:
        self.location, self.db = store, db
        self._ctx: Context | None = None

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            try:
                # safe=True: the command line never unpickles anything.
                self._ctx = api.open(self.location, db=self.db, create=False, safe=True)
            except StoreNotFoundError as exc:
                raise self.missing() from exc
        return self._ctx

    def missing(self) -> StoreNotFoundError:
        return StoreNotFoundError(
            f"no provstore store at {self.location.absolute()}; pass --store PATH or set "
            "PROVSTORE (stores are created by provstore.open() in Python)")


pass_env = click.make_pass_decorator(Env)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group(cls=Group, epilog=EXIT_CODES,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), envvar="PROVSTORE",
              default=".provstore", show_default=True, metavar="PATH",
              help="The store directory; $PROVSTORE when set.")
@click.option("--db", metavar="URL", envvar="PROVSTORE_DB",
              help="A database URL overriding the store's SQLite file (PostgreSQL).")
@click.version_option(package_name="provstore", prog_name="provstore")
@click.pass_context
def cli(click_ctx: click.Context, store: Path, db: str | None) -> None:
    """Inspect, verify and clean a provstore store."""
    click_ctx.obj = Env(store, db)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``provstore`` console script and ``python -m provstore``."""
    cli.main(args=argv, prog_name="provstore")


# ------------------------------------------------------------------ output
def on_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def console() -> Console:
    # Created per command: CliRunner swaps sys.stdout. On a terminal, tables
    # fold long cells; in a pipe or a file nothing is wrapped, so every row
    # of a plain listing stays one line.
    return Console(highlight=False, soft_wrap=not on_terminal())


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def show_table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a rich table on a terminal; tab-separated lines to pipes and files.

    The plain form has a header line of column names, preceded by ``# title``
    when the listing has one; tabs and newlines inside cells are written
    ``\\t`` and ``\\n``, so every row is one line for ``cut`` and ``awk``.
    """
    if not on_terminal():
        lines = [f"# {title}"] if title else []
        lines += ["\t".join(columns)]
        lines += ["\t".join(plain_cell(cell) for cell in row) for row in rows]
        click.echo("\n".join(lines))
        return
    table = Table(title=title, title_justify="left", show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:  # Text cells: names must never be read as rich markup
        table.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    console().print(table)


def plain_cell(cell: Any) -> str:
    # Names and scopes cannot hold tabs or newlines (and arrive escaped by
    # scope.escape); other cells (values, command lines) might.
    text = "" if cell is None else str(cell)
    return text.replace("\t", "\\t").replace("\n", "\\n")


@contextmanager
def progress_bar(enabled: bool) -> Iterator[maintenance.Progress | None]:
    """A rich progress bar on stderr when it is a terminal; no-op otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total or None)
            bar.update(tasks[phase], completed=done, total=total or None)

        yield update


def version_dict(v: Version) -> dict[str, Any]:
    run = v.run
    return {"version": v.number, "path": v.path, "deleted": v.deleted, "format": v.format,
            "summary": v.summary, "digest": v.digest, "size": v.size, "created": v.created,
            "run": None if run is None else asdict(run), "origin": v.origin,
            "call_id": v.call_id}
