"""The ``provstore`` command, through CliRunner and real ``python -m provstore`` processes.

``docs/cli.md`` is checked against the commands' ``--help``: run
``PROVSTORE_UPDATE_DOCS=1 pytest tests/test_cli.py -k docs`` to regenerate it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner, Result

import provstore
from provstore.cli import cli
from sql import sql

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
BEGIN, END = "<!-- BEGIN GENERATED HELP -->", "<!-- END GENERATED HELP -->"


@pytest.fixture
def study(store_dir: Path) -> Path:
    ctx = provstore.open(store_dir)

    @ctx.track
    def threshold(img: Any, level: float) -> Any:
        return np.asarray(img.dataobj) > level

    ctx.template = {"space": "MNI152"}
    for subject in ("01", "02"):
        with ctx.scope(subject=subject):
            ctx.bold = nib.Nifti1Image(np.full((3, 3, 3), int(subject), np.float32), np.eye(4))
            ctx.mask = threshold(ctx.bold, 0.5)
    ctx.score = np.arange(3)
    ctx.score = np.arange(4)
    return store_dir


def run(store: Path, *args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(cli, ["--store", str(store), *args], catch_exceptions=False,
                              **kwargs)


def test_ls_lists_names_and_child_scopes(study: Path) -> None:
    result = run(study, "ls")
    assert result.exit_code == 0
    for text in ("template", "score", "subject=01", "subject=02"):
        assert text in result.output
    data = json.loads(run(study, "ls", "subject=01", "--json").output)
    assert [n["path"] for n in data["names"]] == ["subject=01/bold", "subject=01/mask"]
    inherited = json.loads(run(study, "ls", "subject=01", "--all", "--json").output)
    assert {n["path"] for n in inherited["names"]} >= {"template", "subject=01/mask"}


def test_ls_shows_the_binding_an_inner_deletion_unshadows(store_dir: Path) -> None:
    ctx = provstore.open(store_dir)
    ctx.x = np.arange(3)
    with ctx.scope("inner"):
        ctx.x = np.arange(4)
        del ctx.x
    [name] = json.loads(run(store_dir, "ls", "inner", "--all", "--json").output)["names"]
    assert name["path"] == "x" and name["summary"]["shape"] == [3]


def test_show_summarizes_the_current_value(study: Path) -> None:
    result = run(study, "show", "subject=01/mask")
    assert result.exit_code == 0
    assert "subject=01/mask" in result.output and "bool" in result.output
    assert "threshold" in result.output  # the producing call
    data = json.loads(run(study, "show", "score", "--json").output)
    assert data["version"] == 2 and data["summary"]["shape"] == [4]
    assert data["run"]["status"] in ("running", "finished")


def test_history_prints_the_tree_and_versions(study: Path) -> None:
    result = run(study, "history", "subject=02/mask")
    assert result.exit_code == 0
    assert "threshold" in result.output and "subject=02/mask" in result.output
    data = json.loads(run(study, "history", "score", "--json").output)
    assert [v["version"] for v in data["versions"]] == [1, 2]


def test_runs_shows_crashed_runs(study: Path) -> None:
    sql(study, "INSERT INTO runs (uuid, host, pid, started, heartbeat, status, argv) VALUES "
        "('x', 'node7', 4242, '2020-01-01', '2020-01-01', 'running', '[\"job.py\"]')",
        write=True)
    result = run(study, "runs")
    assert result.exit_code == 0 and "crashed" in result.output and "job.py" in result.output
    data = json.loads(run(study, "runs", "--json").output)
    assert data[0]["status"] == "crashed" and data[0]["host"] == "node7"


def test_verify_passes_then_names_the_damaged_binding(study: Path) -> None:
    assert run(study, "verify").exit_code == 0
    ctx = provstore.open(study)
    row = ctx.store.artifact(ctx.history("subject=01/bold").latest.artifact_id or 0)
    path = ctx.store.objects.path(row.digest, row.suffix)
    os.chmod(path, stat.S_IWUSR | stat.S_IRUSR)
    with open(path, "ab") as f:
        f.write(b"x")
    os.chmod(path, 0o444)
    result = run(study, "verify")
    assert result.exit_code == 1
    assert "subject=01/bold v1" in result.output and "size" in result.output
    data = json.loads(run(study, "verify", "--json").output)
    assert data["ok"] is False and data["problems"][0]["kind"] == "size"


def test_verify_strict_fails_on_orphans(study: Path) -> None:
    orphan = study / "objects" / "ab" / ("c" * 30 + ".npy")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    assert run(study, "verify").exit_code == 0
    assert run(study, "verify", "--strict").exit_code == 1


def test_gc_is_a_dry_run_unless_applied(study: Path) -> None:
    orphan = study / "objects" / "ab" / ("c" * 30 + ".npy")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    os.utime(orphan, (0, 0))
    data = json.loads(run(study, "gc", "--keep-versions", "1", "--json").output)
    assert data["dry_run"] and data["bindings"] == 1 and data["artifacts"] == 1
    assert sorted(f["reason"] for f in data["files"]) == ["orphan", "unreferenced"]
    assert orphan.exists()
    result = run(study, "gc", "--apply", "--grace", "60")
    assert result.exit_code == 0 and "removed 1 orphan" in result.output
    assert not orphan.exists() and len(provstore.open(study).history("score")) == 2
    assert run(study, "gc", "--keep-versions", "0").exit_code == 2


def test_export_then_which_finds_the_history(study: Path, tmp_path: Path) -> None:
    target = tmp_path / "mask.npy"
    result = run(study, "export", "subject=01/mask", str(target))
    assert result.exit_code == 0 and target.exists()
    assert json.loads(Path(f"{target}.provstore.json").read_text())["call"] is not None
    result = run(study, "which", str(target))
    assert result.exit_code == 0
    assert "subject=01/mask" in result.output and "threshold" in result.output
    [match] = json.loads(run(study, "which", str(target), "--json").output)
    assert match["how"] == "bytes"


def test_which_on_an_unknown_file_exits_1(study: Path, tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.bin"
    unknown.write_bytes(b"never stored")
    result = run(study, "which", str(unknown))
    assert result.exit_code == 1 and "not in this store" in result.output
    assert json.loads(run(study, "which", str(unknown), "--json").output) == []


def test_upgrade_is_a_no_op_at_head(study: Path) -> None:
    result = run(study, "upgrade")
    assert result.exit_code == 0 and "already at" in result.output


def test_graph_prints_dot_and_renders_through_graphviz(study: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(study, "graph", "subject=01/mask")
    assert result.exit_code == 0 and result.output.startswith("digraph")
    dot_file = tmp_path / "g.dot"
    assert run(study, "graph", "subject=01/mask", "-o", str(dot_file)).exit_code == 0
    assert dot_file.read_text() == result.output
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    missing = run(study, "graph", "subject=01/mask", "-o", str(tmp_path / "g.svg"))
    assert missing.exit_code == 2 and "Graphviz" in missing.output
    fake = tmp_path / "bin" / "dot"  # stands in for Graphviz: copies stdin to stdout
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write("
                    "'<svg>' + sys.stdin.read() + '</svg>')\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert run(study, "graph", "subject=01/mask", "-o", str(tmp_path / "g.svg")).exit_code == 0
    assert (tmp_path / "g.svg").read_text().startswith("<svg>digraph")


def test_errors_exit_2_with_a_message(study: Path, tmp_path: Path) -> None:
    del provstore.open(study).template
    for args in (["show", "nope"], ["ls", "subject=99"], ["history", "bad/../name"],
                 ["export", "score", str(tmp_path / "score.nii")], ["graph", "template"],
                 ["graph", "score", "-o", str(tmp_path / "g.pdf")]):
        result = run(study, *args)
        assert result.exit_code == 2, args
        assert result.stderr.startswith("provstore: error: "), args
    missing = run(tmp_path / "nowhere", "ls")
    assert missing.exit_code == 2 and "no provstore store" in missing.stderr
    assert not (tmp_path / "nowhere").exists()


def test_the_store_comes_from_provstore_env(study: Path) -> None:
    result = CliRunner().invoke(cli, ["ls"], env={"PROVSTORE": str(study)})
    assert result.exit_code == 0 and "template" in result.output


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_help(name: str) -> None:
    command = cli.commands[name]
    assert command.help and len(command.help) > 20
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0 and command.help.splitlines()[0] in result.output


def test_python_m_provstore(study: Path, tmp_path: Path) -> None:
    def provstore_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "provstore", "--store", str(study), *args],
                              capture_output=True, text=True, timeout=120)

    done = provstore_cmd("verify", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert "score" in provstore_cmd("ls").stdout
    unknown = tmp_path / "x.txt"
    unknown.write_text("nothing")
    assert provstore_cmd("which", str(unknown)).returncode == 1
    failed = provstore_cmd("show", "nope")
    assert failed.returncode == 2 and "provstore: error:" in failed.stderr


# --------------------------------------------------------------------- docs
def render_reference() -> str:
    """Every command's --help, as docs/cli.md embeds it (fixed width: no drift by terminal)."""
    # The group's context settings (-h, --help), as a real invocation has them.
    root = click.Context(cli, info_name="provstore", terminal_width=100, **cli.context_settings)
    blocks = [("provstore", cli.get_help(root))]
    for name in sorted(cli.commands):
        command = cli.commands[name]
        sub = click.Context(command, info_name=name, parent=root)
        blocks.append((f"provstore {name}", command.get_help(sub)))
    parts = [f"### `{title}`\n\n```text\n{text}\n```\n" for title, text in blocks]
    return "\n".join(parts)


def test_docs_match_the_help() -> None:
    generated = render_reference()
    text = DOCS.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if os.environ.get("PROVSTORE_UPDATE_DOCS"):
        DOCS.write_text(f"{head}{BEGIN}\n{generated}{END}{tail}")
        text = DOCS.read_text()
    assert f"{BEGIN}\n{generated}{END}" in text, (
        "docs/cli.md is out of date: PROVSTORE_UPDATE_DOCS=1 pytest tests/test_cli.py -k docs")


@pytest.mark.parametrize(
    ("args", "code", "is_json"),
    [
        (["ls", "--json"], 0, True),
        (["ls", "subject=01"], 0, False),
        (["show", "score", "--json"], 0, True),
        (["history", "subject=01/mask", "--json"], 0, True),
        (["runs", "--json"], 0, True),
        (["stale", "--json"], 0, True),
        (["diff", "subject=01/mask", "subject=02/mask", "--json"], 0, True),
        (["dependents", "subject=01/bold", "--json"], 0, True),
        (["dependents", "subject=01/bold"], 0, False),
        (["verify", "--json"], 0, True),
        (["gc", "--json"], 0, True),
        (["upgrade"], 0, False),
        (["graph", "subject=01/mask"], 0, False),
        (["history", "missing-name"], 2, False),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else str(v),
)
def test_every_command_as_a_real_process(study: Path, args: list[str], code: int,
                                         is_json: bool) -> None:
    """The installed console script, as a user types it (no CliRunner in between)."""
    script = Path(sys.executable).with_name("provstore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "provstore"]
    done = subprocess.run([*command, "--store", str(study), *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == code, done.stderr
    if is_json:
        json.loads(done.stdout)
    if code == 2:
        assert done.stderr.startswith("provstore: error:")
    else:
        assert done.stdout.strip()


def test_export_and_which_as_real_processes(study: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("provstore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "provstore"]
    dest = tmp_path / "score.npy"
    exported = subprocess.run([*command, "--store", str(study), "export", "score", str(dest)],
                              capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    assert np.load(dest).tolist() == [0, 1, 2, 3]
    assert json.loads((tmp_path / "score.npy.provstore.json").read_text())["name"] == "score"
    found = subprocess.run([*command, "--store", str(study), "which", str(dest)],
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert "score" in found.stdout


def test_dependents_lists_what_was_computed_from_an_input(study: Path) -> None:
    found = json.loads(run(study, "dependents", "subject=01/bold", "--json").output)
    # Both subjects' masks are all True: one artifact, bound under two names.
    assert sorted(d["path"] for d in found) == ["subject=01/mask", "subject=02/mask"]
    assert found[0]["function"].endswith("threshold") and found[0]["depth"] == 1
    assert "nothing in the store" in run(study, "dependents", "template").output


def _ls_through(study: Path, *, terminal: bool) -> str:
    """``provstore ls`` as a real process, its stdout a pipe or a pseudo-terminal."""
    import pty

    command = [sys.executable, "-m", "provstore", "--store", str(study), "ls"]
    env = {**os.environ, "COLUMNS": "200"}
    if not terminal:
        return subprocess.run(command, capture_output=True, text=True, check=True,
                              env=env).stdout
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(command, stdout=follower, stderr=subprocess.PIPE, env=env,
                              check=True)
        assert done.returncode == 0
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the pty reports EIO once drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(leader)


def test_listings_are_tab_separated_in_pipes_and_tables_on_terminals(tmp_path: Path) -> None:
    ctx = provstore.open(tmp_path / "study")
    long_name = "a_rather_long_name_" + "x" * 90  # once folded over two lines in a pipe
    ctx[long_name] = 1
    ctx["tab"] = "a\tb"
    piped = _ls_through(tmp_path / "study", terminal=False)
    lines = piped.splitlines()
    assert lines[0] == "# names in the root scope"
    assert lines[1].split("\t") == ["name", "inherited from", "version", "value", "created"]
    names = [line.split("\t")[0] for line in lines[2:]]
    assert long_name in names and "tab" in names
    assert all(line.count("\t") == 4 for line in lines[1:])
    assert "─" not in piped and "│" not in piped
    shown = _ls_through(tmp_path / "study", terminal=True)
    assert "│" in shown and "\t" not in shown
