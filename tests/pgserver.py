"""A throwaway PostgreSQL cluster for the test suite (initdb + pg_ctl, no service)."""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

__all__ = ["PostgresCluster", "find_bindir"]

_SETTINGS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
             "-c max_connections=500 -c shared_buffers=64MB")


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` live: PATH, else the newest Debian install."""
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "pg_ctl").exists():
        return Path(initdb).parent
    candidates = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")
                  if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()]
    candidates.sort(key=lambda d: tuple(int(p) for p in d.parent.name.split(".") if p.isdigit()))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_PREFIX = "provstore-pg-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_orphans() -> None:
    """Stop clusters of test runs that were killed: SIGKILL skips atexit."""
    for d in Path(tempfile.gettempdir()).glob(_PREFIX + "*"):
        try:
            owner = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            continue  # still being set up, or not ours
        if _alive(owner):
            continue
        try:
            server = int((d / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(server, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
        except (OSError, ValueError, IndexError):
            pass
        shutil.rmtree(d, ignore_errors=True)


class PostgresCluster:
    """Start a private cluster on a free localhost port; :meth:`stop` removes it."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl were not found")
        self.bindir = found
        self._as_root = os.geteuid() == 0
        _reap_orphans()
        self.dir = Path(tempfile.mkdtemp(prefix=_PREFIX))
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = 0
        self._admin: Engine | None = None
        self._running = False
        self._pid = os.getpid()
        atexit.register(self.stop)
        try:
            if self._as_root:  # initdb refuses root: the cluster runs as `postgres`
                shutil.chown(self.dir, "postgres", "postgres")
            self._initdb()
            self._start()
        except BaseException:
            self.stop()
            raise

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True, check=False)

    def _initdb(self) -> None:
        base = ("initdb", "-D", str(self.data), "--auth=trust", "--username=postgres",
                "--encoding=UTF8")
        result = self._run(*base, "--locale=C.UTF-8")
        if result.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            result = self._run(*base, "--no-locale")
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def _start(self) -> None:
        for _ in range(5):
            self.port = _free_port()
            result = self._pg_ctl_start()
            if result.returncode == 0:
                self._running = True
                return
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            if "could not bind" not in log and "already in use" not in log:
                break  # not a port collision: retrying will not help
        tail = "\n".join(log.splitlines()[-30:])
        raise RuntimeError(f"PostgreSQL did not start:\n{result.stderr}\n{tail}")

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                f"-c unix_socket_directories={self.dir} {_SETTINGS}")
        return self._run("pg_ctl", "-w", "-t", "60", "-D", str(self.data),
                         "-l", str(self.log), "-o", opts, "start")

    def pause(self) -> None:
        """Shut the server down (``-m fast``), keeping its data: clients get refused."""
        result = self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed:\n{result.stderr}")
        self._running = False

    def resume(self) -> None:
        """Start the paused server again on the same port."""
        result = self._pg_ctl_start()
        if result.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start again:\n{result.stderr}")
        self._running = True

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def _execute(self, sql: str) -> None:
        if self._admin is None:
            self._admin = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(sql))

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create *name* (a copy of *template*, if given) and return its URL."""
        suffix = f" TEMPLATE {_quote(template)}" if template else ""
        self._execute(f"CREATE DATABASE {_quote(name)}{suffix}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")

    def stop(self) -> None:
        """Stop the server at once (its data is thrown away) and remove the directory."""
        if os.getpid() != self._pid:
            return  # a forked child inherited the atexit hook: the server is not its own
        if self._admin is not None:
            self._admin.dispose()
            self._admin = None
        if self._running:
            self._running = False
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
        atexit.unregister(self.stop)
