"""Training sessions and config when the database goes away: a real PostgreSQL, really stopped."""

import psycopg
import pytest

from facepipeline.gallery.base import GalleryUnavailable
from facepipeline.gallery.config import ConfigStore
from facepipeline.gallery.embedded_postgres import ThrowAwayPostgres
from facepipeline.gallery.postgres import PostgresGallery
from facepipeline.gallery.schema import create_schema
from facepipeline.sessions import SessionHistory, TrainingSessions


@pytest.fixture()
def own_postgres():
    """A server of this test's own, so stopping it disturbs no other test."""
    pg = ThrowAwayPostgres()
    with pg as running:
        create_schema(running.dsn())
        yield pg, running.dsn()


def _status(dsn: str, session_id: str):
    with psycopg.connect(dsn) as conn:
        return conn.execute("select status, metrics from face_training_sessions where id = %s", [session_id]).fetchone()


def test_a_session_ended_while_the_database_was_down_reaches_it_with_the_next_run(own_postgres, tmp_path):
    pg, dsn = own_postgres
    gallery = PostgresGallery(dsn, connect_timeout_s=2)
    sessions = TrainingSessions(SessionHistory(tmp_path / "history"), gallery, gallery.description)
    record = sessions.start("run-1", {"training_mode": "full", "faces_count": 10})
    assert sessions.start("run-1", {}).id == record.id  # the same run, the same session
    assert _status(dsn, record.id)[0] == "running"

    pg.server.stop()
    ended, warning = sessions.finish("run-1", "failed", {"metrics": {"error": "database lost during write-back"}})
    assert ended.status == "failed" and not ended.synced
    assert "is failed locally but the gallery was not updated" in warning and "127.0.0.1" in warning
    [local] = SessionHistory(tmp_path / "history").list()  # readable while the database is down
    assert (local.status, local.error, local.synced) == ("failed", "database lost during write-back", False)
    assert sessions.sync_pending() == []  # still down: nothing pushed, nothing lost

    pg.server.start()  # the same data directory, the same port
    assert sessions.sync_pending() == [record.id]
    assert _status(dsn, record.id) == ("failed", {"error": "database lost during write-back"})
    assert SessionHistory(tmp_path / "history").for_run("run-1").synced
    assert sessions.sync_pending() == []


def test_the_last_good_config_is_used_with_a_warning_while_the_database_is_down(own_postgres, tmp_path):
    pg, dsn = own_postgres
    gallery = PostgresGallery(dsn, connect_timeout_s=2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update face_recognition_config set value = '7' where key = 'min_faces_per_person'")
    fresh = ConfigStore(tmp_path / "fresh", gallery.description, gallery)
    store = ConfigStore(tmp_path / "config", gallery.description, gallery)
    assert store.load() == (store.load()[0], []) and store.load()[0].min_faces_per_person == 7

    pg.server.stop()
    config, notes = store.load()
    assert config.min_faces_per_person == 7
    assert len(notes) == 1 and "cannot reach the gallery database at 127.0.0.1" in notes[0] and "config saved at" in notes[0]
    with pytest.raises(GalleryUnavailable):
        fresh.load()  # no saved copy: the error stands
