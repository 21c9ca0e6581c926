"""A small read-only HTTP server for a folder of photos, on 127.0.0.1, so ``photos.url`` are real URLs.

It serves only photo files (``PHOTO_SUFFIXES``) that lie under its root: no directory listings,
no hidden files, no ``..`` (also percent-encoded), no symlinks that lead out of the root. Anything
else is a 404. ``GET`` and ``HEAD`` only; no request logs.

Two ways to run it:

* :func:`serve` - a thread in this process, for tests (``with serve(root) as server: ...``);
* :func:`start_daemon` / :func:`stop_daemon` / :func:`daemon_url` - a detached process for the
  persistent demo (``python -m facepipeline.gallery.photo_server ROOT --port N``), recorded in
  ``STATE_DIR/photo_server.json`` so that it is found again and keeps its port (stable URLs).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import mimetypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit

from facepipeline.errors import FacePipelineError
from facepipeline.sources.folder import PHOTO_SUFFIXES
from facepipeline.versions import replace_file

HOST = "127.0.0.1"
IDENTITY_PATH = "/.well-known/facepipeline-photo-server"
STATE_FILE = "photo_server.json"
LOG_FILE = "photo_server.log"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
_CHUNK = 256 * 1024
mimetypes.add_type("image/webp", ".webp")


class PhotoServerError(FacePipelineError):
    """The photo server could not be started, found or stopped."""


# -- the server ------------------------------------------------------------------------------------


def _resolve(root: Path, url_path: str) -> Path | None:
    """The photo file a request path names, or None when it names nothing we serve."""
    path = unquote(urlsplit(url_path).path, errors="strict")
    if not path.startswith("/") or "\x00" in path or "\\" in path:
        return None
    parts = path[1:].split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return None
    if Path(parts[-1]).suffix.lower() not in PHOTO_SUFFIXES:
        return None
    target = root.joinpath(*parts)
    try:
        target = target.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "facepipeline-photos"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        if urlsplit(self.path).path == IDENTITY_PATH:
            payload = json.dumps({"service": "facepipeline-photo-server", "pid": os.getpid(),
                                  "root": str(self.server.root)}).encode()
            self._send(HTTPStatus.OK, "application/json", payload, body=body)
            return
        try:
            target = _resolve(self.server.root, self.path)
        except UnicodeDecodeError:
            target = None
        if target is None:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n", body=body)
            return
        try:
            handle = target.open("rb")
        except OSError:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n", body=body)
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", mimetypes.guess_type(target.name)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if body:
                while chunk := handle.read(_CHUNK):
                    self.wfile.write(chunk)

    def _send(self, status: HTTPStatus, content_type: str, payload: bytes, *, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 is less than the 8 photos a retrain fetches at once: the
    # kernel drops the connections beyond it, and the client retries each after a 1 s timeout.
    request_queue_size = 128

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        super().__init__((HOST, port), _Handler)

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up mid-answer is not worth a traceback


def _base_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def url_for(base_url: str, relative_path: str | os.PathLike[str]) -> str:
    """``base_url`` plus the relative path, each segment percent-quoted."""
    posix = PurePosixPath(Path(relative_path).as_posix())
    if posix.is_absolute() or ".." in posix.parts:
        raise ValueError(f"not a path inside the photo folder: {relative_path!s}")
    return base_url.rstrip("/") + "/" + "/".join(quote(part, safe="") for part in posix.parts)


class PhotoServer:
    """A photo server running in a background thread of this process; a context manager."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise PhotoServerError(f"photo server: not a directory: {self.root}")
        try:
            self._httpd = _Server(self.root, port)
        except OSError as exc:
            raise PhotoServerError(f"photo server: cannot listen on {HOST}:{port}: {exc.strerror or exc}") from exc
        self.port: int = self._httpd.server_address[1]
        self.base_url = _base_url(self.port)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="photo-server", daemon=True)
        self._thread.start()

    def url_for(self, relative_path: str | os.PathLike[str]) -> str:
        return url_for(self.base_url, relative_path)

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> PhotoServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(root: Path, port: int = 0) -> PhotoServer:
    """Start serving ``root`` on 127.0.0.1 (``port=0``: any free port) in a background thread."""
    return PhotoServer(root, port)


# -- the daemon ------------------------------------------------------------------------------------

_CHILDREN: dict[int, subprocess.Popen] = {}  # started by this process: reaped on stop, no zombies


def _read_state(state_dir: Path) -> dict:
    try:
        state = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(state_dir: Path, state: dict) -> None:
    replace_file(state_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def _identity(port: int, timeout: float = 1.0) -> dict | None:
    """What answers on ``port``, when it is a photo server of ours."""
    try:
        with urllib.request.urlopen(_base_url(port) + IDENTITY_PATH, timeout=timeout) as answer:  # noqa: S310 (loopback)
            data = json.loads(answer.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return data if isinstance(data, dict) and data.get("service") == "facepipeline-photo-server" else None


def _alive(pid: int) -> bool:
    if pid in _CHILDREN:
        return _CHILDREN[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` runs this module (guards against a recycled pid)."""
    try:
        return b"facepipeline.gallery.photo_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _serving(state: dict) -> bool:
    """Whether the recorded daemon is alive and answering as itself on its recorded port."""
    pid, port = state.get("pid"), state.get("port")
    if not isinstance(pid, int) or not isinstance(port, int) or not _alive(pid):
        return False
    identity = _identity(port)
    return identity is not None and identity.get("pid") == pid


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def _locked(state_dir: Path):
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "photo_server.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _stop_recorded(state_dir: Path, state: dict) -> None:
    pid = state.get("pid")
    if isinstance(pid, int) and _alive(pid) and (_serving(state) or _is_ours(pid)):
        _terminate(pid)
    if state:
        _write_state(state_dir, {**state, "pid": None})


def start_daemon(root: Path, state_dir: Path, port: int | None = None) -> str:
    """Serve ``root`` from a detached process and return its base URL; idempotent.

    The daemon already recorded in ``state_dir`` is reused when it serves the same root (on the
    asked port, if one is asked). Otherwise it is replaced; the new one listens on ``port``, else on
    the recorded port (so URLs stay stable), else on a free one. A recorded port that something
    else holds is an error, never silently swapped for another.
    """
    root = Path(root).expanduser().resolve()
    state_dir = Path(state_dir).expanduser().resolve()
    if not root.is_dir():
        raise PhotoServerError(f"photo server: not a directory: {root}")
    with _locked(state_dir):
        state = _read_state(state_dir)
        if _serving(state) and state.get("root") == str(root) and port in (None, state.get("port")):
            return _base_url(state["port"])
        _stop_recorded(state_dir, state)
        recorded = state.get("port") if isinstance(state.get("port"), int) else None
        chosen = port or recorded or _free_port()
        if not _port_free(chosen):
            raise PhotoServerError(
                f"photo server: port {HOST}:{chosen} is taken by another program; stop it, or start the photo "
                f"server on another port (this changes the photos' URLs), or remove {state_dir / STATE_FILE}"
            )
        log_path = state_dir / LOG_FILE
        with log_path.open("ab") as log:
            child = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [sys.executable, "-m", "facepipeline.gallery.photo_server", str(root), "--port", str(chosen)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd="/",
            )
        _CHILDREN[child.pid] = child
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            identity = _identity(chosen, timeout=0.5)
            if identity is not None and identity.get("pid") == child.pid:
                break
            if child.poll() is not None or time.monotonic() > deadline:
                if child.poll() is None:
                    _terminate(child.pid)
                _CHILDREN.pop(child.pid, None)
                tail = log_path.read_text(errors="replace")[-2000:].strip()
                raise PhotoServerError(f"photo server did not come up on {HOST}:{chosen}; log {log_path}:\n{tail}")
            time.sleep(0.02)
        _write_state(state_dir, {"pid": child.pid, "port": chosen, "root": str(root), "url": _base_url(chosen)})
        return _base_url(chosen)


def stop_daemon(state_dir: Path) -> bool:
    """Stop the daemon recorded in ``state_dir``; True when one was running. Its port stays recorded."""
    state_dir = Path(state_dir).expanduser().resolve()
    if not (state_dir / STATE_FILE).is_file():
        return False
    with _locked(state_dir):
        state = _read_state(state_dir)
        was_running = _serving(state)
        _stop_recorded(state_dir, state)
        return was_running


def daemon_url(state_dir: Path) -> str | None:
    """The base URL of the daemon recorded in ``state_dir``, when it is running and answering."""
    state = _read_state(Path(state_dir).expanduser().resolve())
    return _base_url(state["port"]) if _serving(state) else None


def recorded_url(state_dir: Path) -> str | None:
    """The base URL recorded in ``state_dir``, running or not (the photos' URLs keep it)."""
    state = _read_state(Path(state_dir).expanduser().resolve())
    return _base_url(state["port"]) if isinstance(state.get("port"), int) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facepipeline.gallery.photo_server", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the folder of photos to serve")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    args = parser.parse_args(argv)
    root = args.root.expanduser().resolve()
    if not root.is_dir():
        print(f"photo server: not a directory: {root}", file=sys.stderr)
        return 1
    try:
        httpd = _Server(root, args.port)
    except OSError as exc:
        print(f"photo server: cannot listen on {HOST}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving {root} at {_base_url(httpd.server_address[1])} (pid {os.getpid()})", file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0

if __name__ == "__main__":
    sys.exit(main())
