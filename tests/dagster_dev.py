"""A real ``dagster dev`` (webserver, daemon, code server) for tests, stopped with everything it started.

    with running_dagster_dev({"DAGSTER_HOME": str(tmp_path / "dagster"), ...}) as dev:
        dev.graphql("{ version }")
        ... open dev.base_url in a browser ...

The caller chooses the environment: ``FACEPIPELINE_*``, ``DAGSTER_*`` and ``SUPABASE_*`` variables of
the test process are not passed on, only those in ``env``, so a developer's own settings never leak
into the server (the checkout's ``facepipeline.env`` still gives defaults for what ``env`` leaves unset).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cli.environment import write_instance_config
from tests.conftest import REPO

DAGSTER = Path(sys.executable).with_name("dagster")
NOT_INHERITED = ("FACEPIPELINE_", "DAGSTER_", "SUPABASE_")

LOCATIONS_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message cause { message cause { message } } }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""


@dataclass
class DagsterDev:
    base_url: str
    dagster_home: Path
    process: subprocess.Popen
    log_path: Path

    def graphql(self, query: str, variables: dict | None = None, *, timeout_s: float = 30) -> dict:
        """POST ``query`` to /graphql; returns its ``data``, raises on transport or GraphQL errors."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/graphql", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL errors: {json.dumps(answer['errors'])[:2000]}")
        return answer["data"]

    def log_tail(self, n: int = 80) -> str:
        """The last ``n`` lines ``dagster dev`` wrote (stdout and stderr)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log yet)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_dagster_dev(
    env: dict[str, str], *, port: int | None = None, timeout_s: float = 120
) -> Iterator[DagsterDev]:
    """Start ``dagster dev -w workspace.yaml`` on 127.0.0.1 and yield once every code location loaded.

    ``env`` must hold ``DAGSTER_HOME`` (an absolute path; created if missing) and whatever the
    code location reads (``FACEPIPELINE_HOME``, ``FACEPIPELINE_SOURCE``, ...). The output goes to
    ``$DAGSTER_HOME/dagster-dev.log``. ``dagster.yaml`` is written as the CLI writes it (telemetry
    off, one retrain at a time, ...) unless someone else's file is there. The server runs in its own
    session (process group); on exit the group gets SIGTERM, then SIGKILL after 30 s, also when the
    body raised.

    ``dagster dev`` is started from ``DAGSTER_HOME``, not from the checkout: Dagster loads a
    ``.env`` of its working directory *over* the real environment, so no stray one may be there.
    The workspace file still loads the code from the checkout (its ``working_directory: .`` is
    relative to the workspace file).
    """
    dagster_home = Path(env["DAGSTER_HOME"])
    if not dagster_home.is_absolute():
        raise ValueError(f"DAGSTER_HOME must be absolute, got {dagster_home}")
    write_instance_config(dagster_home)  # creates it; the same dagster.yaml as the CLI's instance
    port = port or free_port()
    log_path = dagster_home / "dagster-dev.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
    full_env.update(env)
    command = [str(DAGSTER), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=dagster_home,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGTERM reaches it, and we can kill them all
        )
    dev = DagsterDev(f"http://127.0.0.1:{port}", dagster_home, process, log_path)
    try:
        _wait_until_loaded(dev, timeout_s)
        yield dev
    finally:
        _stop(process)


def _wait_until_loaded(dev: DagsterDev, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "the webserver never answered"
    while time.monotonic() < deadline:
        if dev.process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {dev.process.returncode}:\n{dev.log_tail()}")
        try:
            workspace = dev.graphql(LOCATIONS_QUERY, timeout_s=5)["workspaceOrError"]
        except (urllib.error.URLError, ConnectionError, TimeoutError, RuntimeError, json.JSONDecodeError) as e:
            last = f"webserver not ready: {e}"
        else:
            entries = workspace.get("locationEntries") or []
            errors = [e for e in entries if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"]
            if errors:
                raise RuntimeError(
                    "code location failed to load: "
                    + "\n".join(f"{e['name']}: {_messages(e['locationOrLoadError'])}" for e in errors)
                    + f"\n--- dagster dev log ---\n{dev.log_tail()}"
                )
            if entries and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"] for e in entries):
                return
            last = f"locations: {[(e['name'], e['loadStatus']) for e in entries] or 'none yet'}"
        time.sleep(0.5)
    raise TimeoutError(f"dagster dev not ready after {timeout_s:.0f} s ({last}):\n{dev.log_tail()}")


def _messages(error: dict | None) -> str:
    """A PythonError's message and those of its causes (the user's exception is usually a cause)."""
    parts = []
    while error:
        parts.append(error["message"].strip())
        error = error.get("cause")
    return "\n  caused by: ".join(parts)


def _stop(process: subprocess.Popen, stop_timeout_s: float = 30) -> None:
    """SIGTERM to the whole process group, SIGKILL to whatever is left after ``stop_timeout_s``."""
    pgid = process.pid  # start_new_session: the group id is the leader's pid
    _signal_group(pgid, signal.SIGTERM)
    try:
        process.wait(timeout=stop_timeout_s)
    except subprocess.TimeoutExpired:
        pass
    # The leader may be gone while children (code server, run workers) of its group linger.
    deadline = time.monotonic() + (2 if process.returncode is not None else 0)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
    process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
