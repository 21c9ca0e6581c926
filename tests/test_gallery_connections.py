"""The Postgres transport keeps one connection between operations: reused while fresh, closed when
idle too long, replaced when the server ended it, never reused after an error. Real PostgreSQL 18."""

import time

import psycopg
import pytest

from facepipeline.gallery.base import GalleryTimeout
from facepipeline.gallery.postgres import PostgresGallery


def backend(gallery: PostgresGallery) -> int:
    """The server process of the connection the gallery's next operation runs on."""
    with gallery._connection() as conn:
        return conn.info.backend_pid


def open_sessions(dsn: str, *, settle_s: float = 0.0) -> set[int]:
    """The gallery's sessions on the server; with ``settle_s``, waited for to end (a backend leaves
    pg_stat_activity a moment after its client closed)."""
    deadline = time.monotonic() + settle_s
    while True:
        with psycopg.connect(dsn, autocommit=True) as admin:
            rows = admin.execute(
                "select pid from pg_stat_activity where application_name = 'facepipeline' and datname = current_database()"
            ).fetchall()
        if not rows or time.monotonic() >= deadline:
            return {pid for (pid,) in rows}
        time.sleep(0.05)


def test_operations_share_one_connection_until_it_has_been_idle_too_long(gallery_dsn):
    gallery = PostgresGallery(gallery_dsn, keep_idle_s=0.5)
    first = backend(gallery)
    gallery.read_config()
    gallery.face_labels()
    assert backend(gallery) == first and open_sessions(gallery_dsn) == {first}
    time.sleep(1.2)  # the idle timer closes it: a long-lived process holds no connection for long
    assert open_sessions(gallery_dsn, settle_s=5) == set()
    second = backend(gallery)
    assert second != first
    gallery.close()
    assert open_sessions(gallery_dsn, settle_s=5) == set()


def test_with_keep_idle_zero_every_operation_has_a_connection_of_its_own(gallery_dsn):
    gallery = PostgresGallery(gallery_dsn, keep_idle_s=0)
    pids = [backend(gallery) for _ in range(3)]
    assert len(set(pids)) == 3 and open_sessions(gallery_dsn, settle_s=5) == set()


def test_a_kept_connection_the_server_ended_is_replaced_at_once(gallery_dsn):
    gallery = PostgresGallery(gallery_dsn)
    first = backend(gallery)
    with psycopg.connect(gallery_dsn, autocommit=True) as admin:
        assert admin.execute("select pg_terminate_backend(%s)", [first]).fetchone()[0]
    assert gallery.read_config()  # no error: the dead connection is noticed and replaced
    assert backend(gallery) not in (first, None)
    gallery.close()


def test_a_connection_is_not_reused_after_an_operation_failed_on_it(gallery_dsn):
    gallery = PostgresGallery(gallery_dsn, statement_timeout_s=1)
    failed_on = None
    with pytest.raises(GalleryTimeout):
        with gallery._connection() as conn:
            failed_on = conn.info.backend_pid
            conn.execute("select pg_sleep(3)")
    assert failed_on is not None and backend(gallery) != failed_on
    gallery.close()


def test_the_face_source_resource_closes_its_galleries_connection_after_the_run(gallery_dsn):
    from resources import FaceSourceResource

    resource = FaceSourceResource(source="postgres", database_url=gallery_dsn)
    pid = backend(resource.gallery())
    assert open_sessions(gallery_dsn) == {pid}
    resource.teardown_after_execution(None)
    assert open_sessions(gallery_dsn, settle_s=5) == set()


def test_a_silent_server_is_given_up_by_tcp_user_timeout_unless_the_connection_string_says_otherwise(gallery_dsn):
    """What libpq was really given (a server that stops answering cannot be made here: the loopback
    acknowledges everything; the options are read back from the live connection)."""

    def options(gallery: PostgresGallery) -> dict[str, str]:
        with gallery._connection() as conn:
            return {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}

    given = options(PostgresGallery(gallery_dsn, connect_timeout_s=7, keep_idle_s=0))
    assert given["tcp_user_timeout"] == "14000" and given["keepalives_idle"] == "15" and given["keepalives_count"] == "3"
    own = options(PostgresGallery(f"{gallery_dsn}?keepalives_idle=42&tcp_user_timeout=0", keep_idle_s=0))
    assert own["keepalives_idle"] == "42" and own["tcp_user_timeout"] == "0" and own["keepalives_count"] == "3"


def test_the_face_source_resource_hands_keep_idle_s_to_its_gallery(gallery_dsn):
    from resources import FaceSourceResource

    resource = FaceSourceResource(source="postgres", database_url=gallery_dsn, keep_idle_s=0)
    gallery = resource.gallery()
    assert gallery.keep_idle_s == 0
    assert backend(gallery) != backend(gallery)  # a connection per operation
