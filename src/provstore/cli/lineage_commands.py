"""Commands on lineage: graph, stale, diff, explain and dependents."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..maintenance.exchange import write_new_file
from ..scope import display, parse_path
from .app import (
    CommandError,
    Env,
    cli,
    echo_json,
    json_option,
    pass_env,
)

__all__: list[str] = []  # commands register on the group

@cli.command("graph")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file: .dot/.gv as DOT, .svg/.png through Graphviz.")
@click.option("--force", is_flag=True,
              help="Replace the -o file if it exists (a link is replaced, never followed).")
@pass_env
def graph_command(env: Env, name: str, output: Path | None, force: bool) -> None:
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
def stale_command(env: Env, scope: str, unimportable: bool, as_json: bool) -> None:
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
        echo_json({"stale": [s.to_dict() for s in found],
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
def diff_command(env: Env, a: str, b: str, depth: int, as_json: bool) -> None:
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
        echo_json(result.to_dict())
    else:
        click.echo(str(result))


@cli.command("explain")
@click.argument("name")
@pass_env
def explain_command(env: Env, name: str) -> None:
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
def dependents_command(env: Env, name: str, direct: bool, as_json: bool) -> None:
    """List the results computed from NAME, nearest first.

    NAME is a path such as subject=01/bold. Follows calls downstream: every
    current binding whose value was made from NAME's current value, directly
    or through other tracked calls.
    """
    found = env.ctx.dependents(name, transitive=not direct)
    if as_json:
        echo_json([dataclasses.asdict(d) for d in found])
    elif found:
        for d in found:
            click.echo(str(d))
    else:
        click.echo(f"nothing in the store was computed from {name}")
