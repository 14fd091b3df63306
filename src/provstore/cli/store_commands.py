"""Commands on the store itself: listing, runs and calls, verify, gc, pins, which, export."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from .. import api, maintenance
from ..db.engine import display_url, make_engine, readonly_reason
from ..db.schema import SCHEMA_HEAD, check_schema, upgrade
from ..errors import DatabaseDamagedError, NotFoundError, StoreNotFoundError
from ..fstype import sqlite_file
from ..scope import display, escape, parse_path
from ..store import check_database_file, object_count
from .app import (
    EXIT_NEGATIVE,
    CommandError,
    Env,
    cli,
    echo_json,
    json_option,
    pass_env,
    progress_bar,
    show_table,
    version_dict,
)

__all__: list[str] = []  # commands register on the group

@cli.command("ls")
@click.argument("scope", required=False, default="")
@click.option("-a", "--all", "inherited", is_flag=True,
              help="Also list names inherited from enclosing scopes.")
@json_option
@pass_env
def ls_command(env: Env, scope: str, inherited: bool, as_json: bool) -> None:
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
        echo_json({"scope": view.path, "names": [version_dict(v) for v in latest],
                    "scopes": children})
        return
    # escape: lookalike paths (NFC/NFD, invisible characters) must print apart.
    rows = [[escape(v.name), escape(v.scope) if v.scope != view.path else "", f"v{v.number}",
             v.describe(), v.created.strftime("%Y-%m-%d %H:%M")] for v in latest]
    where = f"scope {escape(view.path)}" if view.path else display(view.path)
    show_table(f"names in {where}", ["name", "inherited from", "version", "value", "created"], rows)
    if children:
        show_table("scopes", ["scope"], [[escape(c)] for c in children])


@cli.command("show")
@click.argument("name")
@json_option
@pass_env
def show_command(env: Env, name: str, as_json: bool) -> None:
    """Summarize the current value of NAME (a path such as subject=01/mask)."""
    v = env.ctx.history(name).latest
    made = getattr(v, "call", None)  # the producing call, also when linked by content
    data = {**version_dict(v), "call": None if made is None else {
        "id": made.id, "function": made.function, "code_digest": made.code_digest,
        "status": made.status, "params": made.params}}
    if as_json:
        echo_json(data)
        return
    run = f"{v.run}" if v.run else None
    call = None if made is None else str(made)
    rows: list[list[Any]] = [
        ["name", v.path], ["version", v.number], ["value", v.describe()], ["format", v.format],
        ["dtype", v.summary.get("dtype")], ["shape", v.summary.get("shape")],
        ["digest", v.digest], ["size", v.size], ["created", v.created], ["run", run],
        ["origin", v.origin], ["call", call]]
    show_table(None, ["field", "value"], [r for r in rows if r[1] is not None])


@cli.command("history")
@click.argument("name")
@json_option
@pass_env
def history_command(env: Env, name: str, as_json: bool) -> None:
    """Print how NAME was made (lineage tree) and every version of it."""
    h = env.ctx.history(name)
    if as_json:
        echo_json({"path": h.path, "scope": h.scope, "name": h.name,
                    "versions": [version_dict(v) for v in h.versions]})
        return
    click.echo(str(h))


@cli.command("runs")
@click.option("-n", "--limit", type=click.IntRange(min=1), metavar="N",
              help="Only the newest N runs.")
@json_option
@pass_env
def runs_command(env: Env, limit: int | None, as_json: bool) -> None:
    """List the processes that wrote to the store, newest first.

    A run still marked running shows as crashed when its process is gone: at
    once on this host, after five minutes without a heartbeat on another.
    Each run shows its tracked calls found in the store (hits), those it
    computed (misses), and the compute time the hits saved: the recorded
    duration of the calls they reused.
    """
    runs = maintenance.list_runs(env.ctx.store, limit=limit)
    if as_json:
        echo_json([asdict(r) for r in runs])
        return
    rows = [[r.id, r.status, r.started.strftime("%Y-%m-%d %H:%M:%S"),
             r.ended.strftime("%Y-%m-%d %H:%M:%S") if r.ended else "",
             f"{r.user or '?'}@{r.host}:{r.pid}",
             (r.git_commit or "")[:10] + ("+dirty" if r.git_dirty else ""),
             _reuse(r.hits, r.misses, r.saved_seconds), " ".join(r.argv)] for r in runs]
    show_table("runs", ["id", "status", "started", "ended", "where", "git", "hits/misses (saved)",
                   "command"], rows)


def _reuse(hits: int | None, misses: int | None, saved: float | None) -> str:
    if hits is None and misses is None:
        return ""
    return f"{hits or 0}/{misses or 0} ({saved or 0.0:.3g} s)"


@cli.command("verify")
@click.option("--strict", is_flag=True, help="Also fail on orphan files (crash debris).")
@json_option
@pass_env
def verify_command(env: Env, strict: bool, as_json: bool) -> None:
    """Re-hash every object file and check every row; exit 1 when anything is wrong.

    Permissions and modification times are never trusted: every byte is read.
    Inline values are decoded and keyed again; SQLite's integrity_check runs.
    Damaged objects are reported with the bindings and calls they affect.
    Exits 3, having checked nothing, when the database itself cannot be read.
    """
    with progress_bar(not as_json) as progress:
        report = maintenance.verify(env.ctx.store, progress=progress)
    failed = not report.ok or (strict and bool(report.problems))
    if as_json:
        echo_json(report.to_dict())
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
def gc_command(env: Env, dry_run: bool, keep_versions: int | None, keep_calls: int | None,
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
        with progress_bar(not as_json) as progress:
            report = maintenance.gc(env.ctx.store, dry_run=dry_run, grace_seconds=grace,
                                    keep_versions=keep_versions, keep_calls=keep_calls,
                                    older_than=older_than, max_bytes=max_bytes,
                                    progress=progress, force=force)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(str(report))


@cli.command("pin")
@click.argument("names", nargs=-1)
@click.option("-l", "--list", "listing", is_flag=True, help="List the pinned names.")
@json_option
@pass_env
def pin_command(env: Env, names: tuple[str, ...], listing: bool, as_json: bool) -> None:
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
            echo_json(pins)
        else:
            click.echo("\n".join(pins) if pins else "nothing is pinned")


@cli.command("unpin")
@click.argument("names", nargs=-1, required=True)
@pass_env
def unpin_command(env: Env, names: tuple[str, ...]) -> None:
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
def calls_command(env: Env, function: str | None, status: str | None, run: int | None,
                  limit: int | None, as_json: bool) -> None:
    """List tracked calls, newest first: function, scope, status, duration and run.

    Failed calls show their error; running calls the host and pid holding
    their lease. The scope is that of the bindings made from a call.
    """
    found = env.ctx.calls(function, status=status, run=run, limit=limit)
    if as_json:
        echo_json([c.to_dict() for c in found])
        return
    rows = [[c.id, c.function, "" if c.scope is None else (c.scope or "/"), c.status,
             "" if c.duration is None else f"{c.duration:.3g} s", c.run_id,
             _call_note(c)] for c in found]
    show_table("calls", ["id", "function", "scope", "status", "duration", "run", "note"], rows)


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
def which_command(env: Env, file: Path, as_json: bool) -> None:
    """Find FILE in the store by its content and print the history of each binding.

    Exits 1 when the content is not in this store.
    """
    matches = maintenance.which(env.ctx.store, file)
    if as_json:
        echo_json([asdict(m) for m in matches])
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
def export_command(env: Env, name: str, file: Path, force: bool) -> None:
    """Copy the current value of NAME to FILE in its standard format.

    A lineage sidecar FILE.provstore.json is written next to it. An existing
    FILE or sidecar is refused unless --force.
    """
    target = maintenance.export(env.ctx, name, file, force=force)
    click.echo(f"exported {name} to {target} (lineage in {target}.provstore.json)")


@cli.command("upgrade")
@pass_env
def upgrade_command(env: Env) -> None:
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
