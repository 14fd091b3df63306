"""The ``provstore`` command: a thin click layer over the library.

Every command opens the store, calls one library function and prints the
result as a rich table (plain text when not on a terminal) or, with
``--json``, as JSON for scripts. Errors are handled in one place,
:meth:`_Group.invoke`: any :class:`~provstore.errors.ProvstoreError` becomes
a message on stderr and exit code 2, or 3 for a damaged, lost or unaccounted
database (:class:`~provstore.errors.DatabaseDamagedError`), so that a script
tells "could not check" (2, 3) from "checked and found damage" (1).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from . import api, maintenance
from .context import Context
from .db.engine import (
    SCHEMA_HEAD,
    check_schema,
    display_url,
    make_engine,
    readonly_reason,
    upgrade,
)
from .errors import DatabaseDamagedError, NotFoundError, ProvstoreError, StoreNotFoundError
from .fstype import sqlite_file
from .lineage import Version
from .maintenance.exchange import write_new_file
from .scope import display, escape, parse_path
from .store import check_database_file, object_count

__all__ = ["cli", "main"]

EXIT_OK, EXIT_NEGATIVE, EXIT_ERROR, EXIT_DAMAGED = 0, 1, 2, 3
EXIT_CODES = """\b
Exit codes:
  0  success
  1  a negative answer: `verify` found damage (--strict: or orphans), `which` found nothing
  2  an error (no store, unknown name, bad option): the message is on stderr
  3  the database is damaged, or lost while objects exist: nothing was checked or changed"""


class CommandError(ProvstoreError):
    """A command cannot do what was asked (reported like every ProvstoreError)."""


class _Group(click.Group):
    """The one error handler: ProvstoreError → message on stderr, exit code 2 (3: damage)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProvstoreError as exc:
            click.echo(f"provstore: error: {exc}", err=True)
            code = EXIT_DAMAGED if isinstance(exc, DatabaseDamagedError) else EXIT_ERROR
            raise click.exceptions.Exit(code) from exc


class _Env:
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


pass_env = click.make_pass_decorator(_Env)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group(cls=_Group, epilog=EXIT_CODES,
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
    click_ctx.obj = _Env(store, db)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``provstore`` console script and ``python -m provstore``."""
    cli.main(args=argv, prog_name="provstore")


# ------------------------------------------------------------------ output
def _terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _console() -> Console:
    # Created per command: CliRunner swaps sys.stdout. On a terminal, tables
    # fold long cells; in a pipe or a file nothing is wrapped, so every row
    # of a plain listing stays one line.
    return Console(highlight=False, soft_wrap=not _terminal())


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _show(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a rich table on a terminal; tab-separated lines to pipes and files.

    The plain form has a header line of column names, preceded by ``# title``
    when the listing has one; tabs and newlines inside cells are written
    ``\\t`` and ``\\n``, so every row is one line for ``cut`` and ``awk``.
    """
    if not _terminal():
        lines = [f"# {title}"] if title else []
        lines += ["\t".join(columns)]
        lines += ["\t".join(_plain(cell) for cell in row) for row in rows]
        click.echo("\n".join(lines))
        return
    table = Table(title=title, title_justify="left", show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:  # Text cells: names must never be read as rich markup
        table.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    _console().print(table)


def _plain(cell: Any) -> str:
    # Names and scopes cannot hold tabs or newlines (and arrive escaped by
    # scope.escape); other cells (values, command lines) might.
    text = "" if cell is None else str(cell)
    return text.replace("\t", "\\t").replace("\n", "\\n")


@contextmanager
def _progress(enabled: bool) -> Iterator[maintenance.Progress | None]:
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


def _version_dict(v: Version) -> dict[str, Any]:
    run = v.run
    return {"version": v.number, "path": v.path, "deleted": v.deleted, "format": v.format,
            "summary": v.summary, "digest": v.digest, "size": v.size, "created": v.created,
            "run": None if run is None else asdict(run), "origin": v.origin,
            "call_id": v.call_id}


# ---------------------------------------------------------------- commands
@cli.command("ls")
@click.argument("scope", required=False, default="")
@click.option("-a", "--all", "inherited", is_flag=True,
              help="Also list names inherited from enclosing scopes.")
@json_option
@pass_env
def ls_command(env: _Env, scope: str, inherited: bool, as_json: bool) -> None:
    """List the names bound in SCOPE (default: the root) and its child scopes."""
    store = env.ctx.store
    segments = tuple(parse_path(scope))
    sid = store.scope_id(segments, create=False)
    if sid is None:
        raise NotFoundError(f"{display(scope.strip('/'))} does not exist in this store")
    view = env.ctx.scope(scope) if segments else env.ctx
    chain = store.chain(segments) if inherited else [sid]
    # The history of scope/name from the scope that binds it: an inner scope
    # holding only a deletion of the name must not hide the visible binding.
    latest = [env.ctx.history(f"{path}/{name}" if path else name).latest
              for name, path in ((n, store.scope_path(s))
                                 for n, s in store.visible_names(chain).items())]
    children = view.scopes()
    if as_json:
        _echo_json({"scope": view.path, "names": [_version_dict(v) for v in latest],
                    "scopes": children})
        return
    # escape: lookalike paths (NFC/NFD, invisible characters) must print apart.
    rows = [[escape(v.name), escape(v.scope) if v.scope != view.path else "", f"v{v.number}",
             v.describe(), v.created.strftime("%Y-%m-%d %H:%M")] for v in latest]
    where = f"scope {escape(view.path)}" if view.path else display(view.path)
    _show(f"names in {where}", ["name", "inherited from", "version", "value", "created"], rows)
    if children:
        _show("scopes", ["scope"], [[escape(c)] for c in children])


@cli.command("show")
@click.argument("name")
@json_option
@pass_env
def show_command(env: _Env, name: str, as_json: bool) -> None:
    """Summarize the current value of NAME (a path such as subject=01/mask)."""
    v = env.ctx.history(name).latest
    made = getattr(v, "call", None)  # the producing call, also when linked by content
    data = {**_version_dict(v), "call": None if made is None else {
        "id": made.id, "function": made.function, "code_digest": made.code_digest,
        "status": made.status, "params": made.params}}
    if as_json:
        _echo_json(data)
        return
    run = f"{v.run}" if v.run else None
    call = None if made is None else str(made)
    rows: list[list[Any]] = [
        ["name", v.path], ["version", v.number], ["value", v.describe()], ["format", v.format],
        ["dtype", v.summary.get("dtype")], ["shape", v.summary.get("shape")],
        ["digest", v.digest], ["size", v.size], ["created", v.created], ["run", run],
        ["origin", v.origin], ["call", call]]
    _show(None, ["field", "value"], [r for r in rows if r[1] is not None])


@cli.command("history")
@click.argument("name")
@json_option
@pass_env
def history_command(env: _Env, name: str, as_json: bool) -> None:
    """Print how NAME was made (lineage tree) and every version of it."""
    h = env.ctx.history(name)
    if as_json:
        _echo_json({"path": h.path, "scope": h.scope, "name": h.name,
                    "versions": [_version_dict(v) for v in h.versions]})
        return
    click.echo(str(h))


@cli.command("runs")
@click.option("-n", "--limit", type=click.IntRange(min=1), metavar="N",
              help="Only the newest N runs.")
@json_option
@pass_env
def runs_command(env: _Env, limit: int | None, as_json: bool) -> None:
    """List the processes that wrote to the store, newest first.

    A run still marked running shows as crashed when its process is gone: at
    once on this host, after five minutes without a heartbeat on another.
    Each run shows its tracked calls found in the store (hits), those it
    computed (misses), and the compute time the hits saved: the recorded
    duration of the calls they reused.
    """
    runs = maintenance.list_runs(env.ctx.store, limit=limit)
    if as_json:
        _echo_json([asdict(r) for r in runs])
        return
    rows = [[r.id, r.status, r.started.strftime("%Y-%m-%d %H:%M:%S"),
             r.ended.strftime("%Y-%m-%d %H:%M:%S") if r.ended else "",
             f"{r.user or '?'}@{r.host}:{r.pid}",
             (r.git_commit or "")[:10] + ("+dirty" if r.git_dirty else ""),
             _reuse(r.hits, r.misses, r.saved_seconds), " ".join(r.argv)] for r in runs]
    _show("runs", ["id", "status", "started", "ended", "where", "git", "hits/misses (saved)",
                   "command"], rows)


def _reuse(hits: int | None, misses: int | None, saved: float | None) -> str:
    if hits is None and misses is None:
        return ""
    return f"{hits or 0}/{misses or 0} ({saved or 0.0:.3g} s)"


@cli.command("verify")
@click.option("--strict", is_flag=True, help="Also fail on orphan files (crash debris).")
@json_option
@pass_env
def verify_command(env: _Env, strict: bool, as_json: bool) -> None:
    """Re-hash every object file and check every row; exit 1 when anything is wrong.

    Permissions and modification times are never trusted: every byte is read.
    Inline values are decoded and keyed again; SQLite's integrity_check runs.
    Damaged objects are reported with the bindings and calls they affect.
    Exits 3, having checked nothing, when the database itself cannot be read.
    """
    with _progress(not as_json) as progress:
        report = maintenance.verify(env.ctx.store, progress=progress)
    failed = not report.ok or (strict and bool(report.problems))
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(str(report))
    if failed:
        raise click.exceptions.Exit(EXIT_NEGATIVE)


@cli.command("gc")
@click.option("--dry-run/--apply", default=True, show_default=True,
              help="Only report what would be removed, or remove it.")
@click.option("--keep-versions", type=click.IntRange(min=1), metavar="N",
              help="Delete binding versions older than the newest N of each name, and the "
                   "artifacts nothing references any more.")
@click.option("--keep-calls", type=click.IntRange(min=1), metavar="N",
              help="Keep the newest N calls of each function in each scope; drop older "
                   "ones with the inputs and outputs nothing else needs.")
@click.option("--older-than", metavar="AGE|DATE",
              help="Drop calls last used before this: an age (30d, 12h, 90m) or a date "
                   "(2026-01-31). With --keep-calls, a call either keeps stays.")
@click.option("--max-bytes", metavar="SIZE",
              help="Then drop the least recently used calls until the stored values fit in "
                   "SIZE (10G, 500MB, 1.5GiB).")
@click.option("--grace", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              metavar="SECONDS",
              help="Keep orphan files younger than this: they may be publications in flight.")
@click.option("--force", is_flag=True,
              help="Remove orphans even when the database names none or few of the files.")
@json_option
@pass_env
def gc_command(env: _Env, dry_run: bool, keep_versions: int | None, keep_calls: int | None,
               older_than: str | None, max_bytes: str | None, grace: float, force: bool,
               as_json: bool) -> None:
    """Free space: orphan files and, with retention rules, old versions and calls.

    A dry run by default: it prints what --apply would free (files, bytes,
    rows per table). Never removes the current version of a name, any
    version of a pinned name (`provstore pin`), what those were computed
    from, what a kept call reads or returns, nor what a running call uses.
    After a code change, `provstore gc --keep-versions 1 --keep-calls 1
    --apply` brings the store back to its current results. Refuses (exit 3)
    when the database does not account for the object files, as after a lost
    or wrongly restored database, unless --force.
    """
    try:
        with _progress(not as_json) as progress:
            report = maintenance.gc(env.ctx.store, dry_run=dry_run, grace_seconds=grace,
                                    keep_versions=keep_versions, keep_calls=keep_calls,
                                    older_than=older_than, max_bytes=max_bytes,
                                    progress=progress, force=force)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(str(report))


@cli.command("pin")
@click.argument("names", nargs=-1)
@click.option("-l", "--list", "listing", is_flag=True, help="List the pinned names.")
@json_option
@pass_env
def pin_command(env: _Env, names: tuple[str, ...], listing: bool, as_json: bool) -> None:
    """Pin NAMES: gc keeps every version of each and all it was made from.

    NAMES are paths such as subject=01/mask. Without NAMES (or with --list),
    list the pins.
    """
    for name in names:
        env.ctx.pin(name)
        if not as_json:
            click.echo(f"pinned {name}")
    if listing or not names:
        pins = env.ctx.pins()
        if as_json:
            _echo_json(pins)
        else:
            click.echo("\n".join(pins) if pins else "nothing is pinned")


@cli.command("unpin")
@click.argument("names", nargs=-1, required=True)
@pass_env
def unpin_command(env: _Env, names: tuple[str, ...]) -> None:
    """Unpin NAMES: gc rules apply to their old versions again."""
    for name in names:
        env.ctx.unpin(name)
        click.echo(f"unpinned {name}")


@cli.command("calls")
@click.option("-f", "--function", metavar="NAME",
              help="Only calls of this function (module:qualname, or the qualname alone).")
@click.option("-s", "--status", type=click.Choice(maintenance.calls.STATUSES),
              help="Only calls in this state.")
@click.option("-r", "--run", type=int, metavar="ID", help="Only calls of this run.")
@click.option("-n", "--limit", type=click.IntRange(min=1), metavar="N",
              help="Only the newest N calls.")
@json_option
@pass_env
def calls_command(env: _Env, function: str | None, status: str | None, run: int | None,
                  limit: int | None, as_json: bool) -> None:
    """List tracked calls, newest first: function, scope, status, duration and run.

    Failed calls show their error; running calls the host and pid holding
    their lease. The scope is that of the bindings made from a call.
    """
    found = env.ctx.calls(function, status=status, run=run, limit=limit)
    if as_json:
        _echo_json([c.to_dict() for c in found])
        return
    rows = [[c.id, c.function, "" if c.scope is None else (c.scope or "/"), c.status,
             "" if c.duration is None else f"{c.duration:.3g} s", c.run_id,
             _call_note(c)] for c in found]
    _show("calls", ["id", "function", "scope", "status", "duration", "run", "note"], rows)


def _call_note(c: maintenance.CallSummary) -> str:
    if c.error:
        return c.error.strip().splitlines()[-1]
    if c.status == "running" and c.lease_host is not None:
        return f"lease held by {c.lease_host}:{c.lease_pid}"
    return ""


@cli.command("which")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@pass_env
def which_command(env: _Env, file: Path, as_json: bool) -> None:
    """Find FILE in the store by its content and print the history of each binding.

    Exits 1 when the content is not in this store.
    """
    matches = maintenance.which(env.ctx.store, file)
    if as_json:
        _echo_json([asdict(m) for m in matches])
    elif matches:
        for m in matches:
            click.echo(f"{file} is artifact {m.artifact_id} ({m.format} {m.digest[:12]}, "
                       f"matched by {m.how})")
            for path in sorted({b.path for b in m.bindings}):
                click.echo("")
                click.echo(str(env.ctx.history(path)))
            if not m.bindings:
                click.echo("  bound to no name (a call output or an ingested file only)")
    if not matches:
        if not as_json:
            click.echo(f"{file}: not in this store", err=True)
        raise click.exceptions.Exit(EXIT_NEGATIVE)


@cli.command("export")
@click.argument("name")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True,
              help="Replace FILE and its sidecar if they exist (links are replaced, "
                   "never followed).")
@pass_env
def export_command(env: _Env, name: str, file: Path, force: bool) -> None:
    """Copy the current value of NAME to FILE in its standard format.

    A lineage sidecar FILE.provstore.json is written next to it. An existing
    FILE or sidecar is refused unless --force.
    """
    target = maintenance.export(env.ctx, name, file, force=force)
    click.echo(f"exported {name} to {target} (lineage in {target}.provstore.json)")


@cli.command("upgrade")
@pass_env
def upgrade_command(env: _Env) -> None:
    """Bring the database schema to this provstore's version (server databases).

    SQLite stores are upgraded automatically when opened. A server database
    (PostgreSQL) is shared by every worker, so its upgrade is this explicit
    step: back it up and stop the workers first.
    """
    location = env.location.absolute()
    try:
        url = api.database_url(location, env.db, create=False)
        path = sqlite_file(url)
        if path is not None:  # before connecting, which would write into an empty file
            check_database_file(path, location, create=False)
    except StoreNotFoundError:
        raise env.missing() from None
    reason = None if path is None else readonly_reason(path)
    if reason is not None:
        raise CommandError(f"cannot upgrade the store at {location}: {reason}")
    engine = make_engine(url)
    try:
        before = check_schema(engine)
        if before is None:  # commands never create a store
            if object_count(location):
                raise DatabaseDamagedError(
                    f"the database {display_url(url)} of the store at {location} is empty "
                    "while its "
                    "objects/ holds files: restore it from a backup copy (see "
                    "docs/guarantees.md, 'Damaged or missing database')")
            raise env.missing()
        if before == SCHEMA_HEAD:
            click.echo(f"the schema is already at {SCHEMA_HEAD}; nothing to do")
            return
        upgrade(engine, lock_path=location / ".provstore.lock")
        click.echo(f"upgraded the schema from {before or 'empty'} to {SCHEMA_HEAD}")
    finally:
        engine.dispose()


@cli.command("graph")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file: .dot/.gv as DOT, .svg/.png through Graphviz.")
@click.option("--force", is_flag=True,
              help="Replace the -o file if it exists (a link is replaced, never followed).")
@pass_env
def graph_command(env: _Env, name: str, output: Path | None, force: bool) -> None:
    """Print the lineage graph of NAME in Graphviz DOT, or render it with -o.

    An existing -o file is refused unless --force.
    """
    h = env.ctx.history(name)
    upstream: Callable[[], Any] | None = getattr(h, "upstream", None)
    try:
        dot = upstream().to_dot() if upstream is not None else None
    except (AttributeError, ValueError) as exc:
        raise CommandError(f"no lineage graph for {h.path}: {exc}") from exc
    if dot is None:
        raise CommandError("`provstore graph` needs lineage graphs (History.upstream), "
                           "which this provstore lacks")
    if output is None:
        click.echo(dot, nl=False)
        return
    kind = output.suffix.lower()
    if kind in (".dot", ".gv", ""):
        data = dot.encode()
    elif kind in (".svg", ".png"):
        data = _render(dot, output, kind[1:])
    else:
        raise CommandError(f"cannot write {output.name}: use .dot, .gv, .svg or .png")
    _write_output(output, data, force)
    click.echo(f"wrote the lineage of {h.path} to {output}")


def _write_output(output: Path, data: bytes, force: bool) -> None:
    # Like `export`: an existing file (or a link planted at the name) is
    # refused without --force, and the bytes go through an O_EXCL|O_NOFOLLOW
    # temporary, so no link is ever followed.
    if not output.parent.is_dir():
        raise CommandError(f"cannot write {output}: the directory {output.parent} does not "
                           "exist; create it first")
    if os.path.lexists(output) and not force:
        raise CommandError(f"{output} already exists; choose another name, remove it, or "
                           "pass --force to replace it")
    write_new_file(output, lambda f: f.write(data), force=force)


def _render(dot: str, output: Path, fmt: str) -> bytes:
    exe = shutil.which("dot")
    if exe is None:
        raise CommandError(f"rendering {fmt.upper()} needs Graphviz's `dot` on PATH "
                           "(apt install graphviz, brew install graphviz); "
                           f"or write DOT with -o {output.with_suffix('.dot').name}")
    # Graphviz renders to stdout: its own -o would open the path following links.
    done = subprocess.run([exe, f"-T{fmt}"], input=dot.encode(), capture_output=True,
                          check=False)
    if done.returncode != 0:
        raise CommandError(f"Graphviz failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


@cli.command("stale")
@click.argument("scope", required=False, default="")
@click.option("-a", "--all", "unimportable", is_flag=True,
              help="Also list each result that could not be checked.")
@json_option
@pass_env
def stale_command(env: _Env, scope: str, unimportable: bool, as_json: bool) -> None:
    """List results in SCOPE and below whose producing code or inputs changed since.

    A result is stale when its code on disk (script, module, helpers and
    literal constants, parsed and never run) differs from the code version
    recorded, or when an input was rebound to another value. Each is followed
    by the results computed from it, which a rerun recomputes too; results
    that could not be checked are counted with the reason. Nothing is
    recomputed or deleted; the exit code is 0 either way.
    """
    view = env.ctx.scope(scope) if parse_path(scope) else env.ctx
    found = view.stale(unimportable=unimportable)
    if as_json:
        _echo_json({"stale": [s.to_dict() for s in found],
                    "unchecked": [dataclasses.asdict(u) for u in found.unchecked]})
        return
    for s in found:
        click.echo(str(s))
        for d in s.downstream:
            click.echo(f"  and downstream: {d}")
    if not found:
        checked = " of what could be checked" if found.unchecked else ""
        click.echo(f"nothing is stale in {display(view.path)}{checked}")
    for line in found.summary():
        click.echo(line)


@cli.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--depth", type=click.IntRange(min=1), default=1, show_default=True,
              help="Call levels to follow into inputs that differ.")
@json_option
@pass_env
def diff_command(env: _Env, a: str, b: str, depth: int, as_json: bool) -> None:
    """Compare how A and B (paths such as subject=01/mask) were made.

    Each is a name at its current version, or NAME@N for version N (x@1 x@3
    compares two versions of one name; x@-2 is the one before the current).
    Reports the first differences in code version (with a diff of the sources
    of the function and of each changed helper), parameters, inputs and
    package versions; or identical lineage.
    """
    (name_a, version_a), (name_b, version_b) = _at_version(a), _at_version(b)
    result = env.ctx.history(name_a).diff(env.ctx.history(name_b), version=version_a,
                                          other_version=version_b, depth=depth)
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo(str(result))


@cli.command("explain")
@click.argument("name")
@pass_env
def explain_command(env: _Env, name: str) -> None:
    """Tell why NAME's current version was computed (what changed since).

    Compares the producing call with that of the previous computed version:
    the code (changed dependencies, and a unified diff of the function and of
    each changed helper, class or constant), and each input; or says that the
    result was reused, or computed for the first time.
    """
    click.echo(env.ctx.history(name).explain())


def _at_version(text: str) -> tuple[str, int | None]:
    """``"x@3"`` → ``("x", 3)``; ``"x"`` → ``("x", None)``."""
    name, at, number = text.rpartition("@")
    if not at:
        return text, None
    try:
        return name, int(number)
    except ValueError:
        raise click.BadParameter(f"{text!r}: the version after @ is a number (x@3, x@-2)"
                                 ) from None


@cli.command("dependents")
@click.argument("name")
@click.option("--direct", is_flag=True, help="Only results computed from NAME itself.")
@json_option
@pass_env
def dependents_command(env: _Env, name: str, direct: bool, as_json: bool) -> None:
    """List the results computed from NAME, nearest first.

    NAME is a path such as subject=01/bold. Follows calls downstream: every
    current binding whose value was made from NAME's current value, directly
    or through other tracked calls.
    """
    found = env.ctx.dependents(name, transitive=not direct)
    if as_json:
        _echo_json([dataclasses.asdict(d) for d in found])
    elif found:
        for d in found:
            click.echo(str(d))
    else:
        click.echo(f"nothing in the store was computed from {name}")
