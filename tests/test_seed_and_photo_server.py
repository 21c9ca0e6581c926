"""Seeding a real Postgres gallery from real LFW photos, and the photo server that gives them URLs.

Real parts only: the session's PostgreSQL (``gallery_dsn``), real HTTP on 127.0.0.1, a real
detached daemon process.
"""

from __future__ import annotations

import csv
import http.client
import json
import os
import shutil
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from facepipeline.gallery.photo_server import PhotoServerError, daemon_url, serve, start_daemon, stop_daemon
from facepipeline.gallery.schema import create_schema
from facepipeline.gallery.seed import SeedError, seed_from_folder
from facepipeline.sources.folder import FolderSource
from tests.conftest import GROUP_PHOTOS, copy_people, people_with_most_photos


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """A request line sent as written: no client-side normalisation of ``..``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture()
def second_gallery_dsn(postgres_server) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    create_schema(postgres_server.dsn(name))
    try:
        yield postgres_server.dsn(name)
    finally:
        with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


# -- seeding -------------------------------------------------------------------------------------


def test_seed_small_faces_gives_the_gallery_and_every_url_serves_its_file(gallery_dsn, small_faces):
    with serve(small_faces) as server:
        report = seed_from_folder(gallery_dsn, small_faces, server.url_for)

        assert (report.people, report.events, report.photos, report.faces) == (6, 4, 48, 48)
        assert report.unverified == round(0.1 * 48) and report.verified == 48 - report.unverified
        assert not report.skipped and "48 photos" in report.line()

        people = dict(rows(gallery_dsn, "select id::text, real_name from people"))
        assert sorted(people.values()) == sorted(p.name.replace("_", " ") for p in small_faces.iterdir())
        photos = rows(gallery_dsn, "select id::text, event_id::text, storage_path, url, width, height from photos")
        assert len(photos) == 48
        for _, _, storage_path, url, width, height in photos:
            assert url == server.url_for(storage_path) and url.startswith(server.base_url + "/")
            status, headers, body = fetch(url)
            assert status == 200
            assert body == (small_faces / storage_path).read_bytes()
            assert headers["Content-Type"] == "image/jpeg" and int(headers["Content-Length"]) == len(body)
            assert (width, height) == (250, 250)

    events = rows(gallery_dsn, "select id::text, name, date from events order by date")
    assert len(events) == 4 and len({name for _, name, _ in events}) == 4
    assert (events[-1][2] - events[0][2]).days >= 180, "events spread over the year"
    assert {event_id for _, event_id, *_ in photos} <= {e[0] for e in events}
    assert len({event_id for _, event_id, *_ in photos}) > 1

    faces = rows(gallery_dsn, "select f.person_id::text, f.verified, f.bbox, p.storage_path, f.training_used "
                              "from photo_faces f join photos p on p.id = f.photo_id")
    assert len(faces) == 48
    for person_id, _, bbox, storage_path, training_used in faces:
        assert bbox == {"x": 68, "y": 68, "width": 115, "height": 115}
        assert people[person_id] == storage_path.split("/")[0].replace("_", " ")
        assert training_used is False
    assert sum(1 for f in faces if not f[1]) == report.unverified
    verified_people = {person_id for person_id, verified, *_ in faces if verified}
    assert verified_people == set(people), "everyone keeps at least one verified face"


def test_seeded_ids_are_stable_and_agree_with_the_folder_source(gallery_dsn, second_gallery_dsn, small_faces):
    def url_for(path: str) -> str:
        return f"http://photos.invalid/{path}"

    seed_from_folder(gallery_dsn, small_faces, url_for)
    seed_from_folder(second_gallery_dsn, small_faces, url_for)
    queries = [
        "select id::text, name, date from events order by id",
        "select id::text, real_name from people order by id",
        "select id::text, event_id::text, storage_path, url from photos order by id",
        "select id::text, photo_id::text, person_id::text, bbox::text, verified from photo_faces order by id",
    ]
    for query in queries:
        first = rows(gallery_dsn, query)
        assert first and first == rows(second_gallery_dsn, query)

    source = {face.face_id: face.person_id for face in FolderSource(small_faces).verified_faces()}
    seeded = dict(rows(gallery_dsn, "select id::text, person_id::text from photo_faces"))
    assert seeded == source


def test_seed_changes_with_its_seed_but_not_its_ids(gallery_dsn, second_gallery_dsn, small_faces):
    seed_from_folder(gallery_dsn, small_faces, str, seed=7)
    seed_from_folder(second_gallery_dsn, small_faces, str, seed=8)
    query = "select id::text, verified from photo_faces order by id"
    first, second = rows(gallery_dsn, query), rows(second_gallery_dsn, query)
    assert [i for i, _ in first] == [i for i, _ in second]
    assert first != second


def test_every_person_keeps_one_verified_face_whatever_the_share(gallery_dsn, tmp_path):
    folder = copy_people(tmp_path / "few", people_with_most_photos(3), 4)
    report = seed_from_folder(gallery_dsn, folder, str, unverified_share=1.0)
    assert (report.faces, report.verified, report.unverified) == (12, 3, 9)
    per_person = rows(gallery_dsn, "select person_id, count(*) filter (where verified) from photo_faces group by 1")
    assert sorted(n for _, n in per_person) == [1, 1, 1]


def test_seeding_a_gallery_that_has_photos_is_refused_or_skipped(gallery_dsn, small_faces):
    seed_from_folder(gallery_dsn, small_faces, str)
    count = "select (select count(*) from photos), (select count(*) from photo_faces), (select count(*) from people)"
    before = rows(gallery_dsn, count)

    with pytest.raises(SeedError, match="already has photos"):
        seed_from_folder(gallery_dsn, small_faces, str)
    report = seed_from_folder(gallery_dsn, small_faces, str, if_empty=True)
    assert report.skipped and report.photos == 0 and "nothing seeded" in report.line()
    assert rows(gallery_dsn, count) == before == [(48, 48, 6)]


def test_face_boxes_layout_keeps_unnamed_faces_unverified_without_person(gallery_dsn, tmp_path):
    folder = tmp_path / "event"
    folder.mkdir()
    first, second = people_with_most_photos(2)
    shutil.copy(sorted(first.glob("*.jpg"))[0], folder / "a.jpg")
    shutil.copy(sorted(second.glob("*.jpg"))[0], folder / "b.jpg")
    (folder / "face_boxes.csv").write_text(
        "path,x,y,w,h,identity,in_faces_gallery,box_source\n"
        f"a.jpg,68,68,115,115,{first.name},yes,hand\n"
        "a.jpg,0,10.5,40,40,,,hand\n"
        f"b.jpg,70,66,110,118,{second.name},yes,hand\n"
    )
    report = seed_from_folder(gallery_dsn, folder, str, unverified_share=0.0)
    assert (report.people, report.photos, report.faces, report.verified, report.unverified) == (2, 2, 3, 2, 1)

    faces = rows(gallery_dsn, "select f.id::text, pe.real_name, f.verified, f.bbox, p.storage_path from photo_faces f "
                              "join photos p on p.id = f.photo_id left join people pe on pe.id = f.person_id")
    unnamed = [f for f in faces if f[1] is None]
    assert len(unnamed) == 1
    _, _, verified, bbox, path = unnamed[0]
    assert verified is False and path == "a.jpg" and bbox == {"x": 0, "y": 10.5, "width": 40, "height": 40}
    named = {f[4]: f for f in faces if f[1] is not None}
    assert named["b.jpg"][1:4] == (second.name.replace("_", " "), True, {"x": 70, "y": 66, "width": 110, "height": 118})
    source_ids = {face.face_id for face in FolderSource(folder).verified_faces()}
    assert source_ids == {f[0] for f in named.values()}


def test_seed_the_real_group_photos(gallery_dsn):
    with (GROUP_PHOTOS / "face_boxes.csv").open(newline="") as handle:
        boxes = list(csv.DictReader(handle))
    report = seed_from_folder(gallery_dsn, GROUP_PHOTOS, str)
    assert report.photos == len({b["path"] for b in boxes})
    assert report.faces == len(boxes)
    assert report.people == len({b["identity"] for b in boxes if b["identity"]})
    unnamed = rows(gallery_dsn, "select count(*) from photo_faces where person_id is null and not verified")
    assert unnamed == [(sum(1 for b in boxes if not b["identity"]),)]
    assert rows(gallery_dsn, "select count(*) from photos where width > 250 or height > 250") != [(0,)]


def test_seed_refuses_a_database_without_the_schema(postgres_server, small_faces):
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    try:
        with pytest.raises(SeedError, match="no gallery schema"):
            seed_from_folder(postgres_server.dsn(name), small_faces, str)
    finally:
        with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


# -- the photo server ----------------------------------------------------------------------------


def test_photo_server_serves_only_photos_under_its_root(tmp_path):
    root = copy_people(tmp_path / "root", people_with_most_photos(1), 1)
    person = next(root.iterdir())
    photo = next(person.iterdir())
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"SECRET-BYTES")
    (root / "notes.csv").write_text("path\n")
    (person / ".hidden.jpg").write_bytes(b"SECRET-BYTES")
    (person / "escape.jpg").symlink_to(secret)
    odd = root / "Ana María" / "a b#1?.jpg"
    odd.parent.mkdir()
    shutil.copy(photo, odd)

    with serve(root) as server:
        port = server.port
        assert raw_get(port, f"/{person.name}/{photo.name}") == (200, photo.read_bytes())
        status, headers, body = fetch(server.url_for(f"{person.name}/{photo.name}"), method="HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) == photo.stat().st_size
        status, _, body = fetch(server.url_for("Ana María/a b#1?.jpg"))
        assert status == 200 and body == photo.read_bytes()

        for path in ["/../secret.jpg", f"/{person.name}/../../secret.jpg", "/%2e%2e/secret.jpg", "/..%2fsecret.jpg",
                     "/%2E%2E%2Fsecret.jpg", f"/{person.name}/escape.jpg", f"/{person.name}/.hidden.jpg",
                     "/", f"/{person.name}/", f"/{person.name}", "/notes.csv", "//etc/passwd", "/missing.jpg",
                     f"/{person.name}//{photo.name}", "/%ff.jpg", f"/{person.name}/{photo.name}%00.txt"]:
            status, body = raw_get(port, path)
            assert status in (400, 404), path
            assert b"SECRET" not in body
    with pytest.raises(OSError):
        raw_get(port, f"/{person.name}/{photo.name}")


def test_url_for_refuses_paths_outside_the_root(tmp_path):
    with serve(tmp_path) as server:
        with pytest.raises(ValueError):
            server.url_for("../x.jpg")
        with pytest.raises(ValueError):
            server.url_for("/etc/x.jpg")


@pytest.fixture()
def state_dir(tmp_path) -> Iterator[Path]:
    state = tmp_path / "state"
    try:
        yield state
    finally:
        stop_daemon(state)


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_daemon_is_idempotent_and_keeps_its_port(tmp_path, state_dir, small_faces):
    relative = next(p.relative_to(small_faces).as_posix() for p in sorted(small_faces.rglob("*.jpg")))
    url = start_daemon(small_faces, state_dir)
    state = json.loads((state_dir / "photo_server.json").read_text())
    pid = state["pid"]
    assert state["root"] == str(small_faces.resolve()) and url.endswith(f":{state['port']}")
    assert pid != os.getpid() and _pid_alive(pid)
    assert fetch(f"{url}/{relative}")[::2] == (200, (small_faces / relative).read_bytes())
    assert daemon_url(state_dir) == url

    assert start_daemon(small_faces, state_dir) == url
    assert json.loads((state_dir / "photo_server.json").read_text())["pid"] == pid, "no new process"

    assert stop_daemon(state_dir) is True
    assert not _pid_alive(pid)
    assert daemon_url(state_dir) is None
    with pytest.raises(OSError):
        fetch(f"{url}/{relative}")
    assert stop_daemon(state_dir) is False

    assert start_daemon(small_faces, state_dir) == url, "the recorded port is reused"
    new_pid = json.loads((state_dir / "photo_server.json").read_text())["pid"]
    assert new_pid != pid and _pid_alive(new_pid)
    assert fetch(f"{url}/{relative}")[0] == 200

    other = copy_people(tmp_path / "other", people_with_most_photos(1, skip=10), 1)
    other_photo = next(p.relative_to(other).as_posix() for p in other.rglob("*.jpg"))
    assert start_daemon(other, state_dir) == url, "another root: replaced, same port"
    assert not _pid_alive(new_pid)
    assert fetch(f"{url}/{other_photo}")[::2] == (200, (other / other_photo).read_bytes())
    assert fetch(f"{url}/{relative}")[0] == 404


def test_daemon_refuses_when_its_port_was_taken(state_dir, small_faces):
    url = start_daemon(small_faces, state_dir)
    port = json.loads((state_dir / "photo_server.json").read_text())["port"]
    stop_daemon(state_dir)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past our clients' TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(PhotoServerError, match=f"port 127.0.0.1:{port} is taken"):
            start_daemon(small_faces, state_dir)
        assert daemon_url(state_dir) is None
    assert start_daemon(small_faces, state_dir) == url


def test_daemon_reports_a_root_that_is_not_a_folder(state_dir, tmp_path):
    with pytest.raises(PhotoServerError, match="not a directory"):
        start_daemon(tmp_path / "missing", state_dir)


def test_the_photo_server_queues_every_connection_a_retrain_opens_at_once(tmp_path):
    """A retrain fetches 8 photos at once (more where configured). With socketserver's default
    backlog of 5, the kernel dropped the connections beyond it and each client waited out a 1 s
    SYN retry: ~1 s of a 25-photo incremental retrain. Here the server listens but does not accept
    yet: every one of 32 connections must still be established by the kernel."""
    import select
    import time

    from facepipeline.gallery.photo_server import _Server

    httpd = _Server(tmp_path, 0)  # the server serve() and the daemon run, listening, not accepting
    clients = [socket.socket() for _ in range(32)]
    try:
        poller = select.poll()
        for client in clients:
            client.setblocking(False)
            client.connect_ex(httpd.server_address)
            poller.register(client, select.POLLOUT)
        established: set[int] = set()
        deadline = time.monotonic() + 0.7  # well under the 1 s a dropped connection waits to retry
        while len(established) < len(clients) and (left := deadline - time.monotonic()) > 0:
            established.update(fd for fd, _ in poller.poll(left * 1000))
        assert len(established) == len(clients)
        assert all(client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for client in clients)
    finally:
        for client in clients:
            client.close()
        httpd.server_close()
