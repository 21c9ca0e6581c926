"""Training sessions and config when the database goes away: a real PostgreSQL, really stopped."""

import os
import time

import psycopg
import pytest

from facepipeline.gallery.base import GalleryUnavailable
from facepipeline.gallery.config import ConfigStore
from facepipeline.gallery.postgres import PostgresGallery
from facepipeline.sessions import SessionHistory, TrainingSessions


def _status(dsn: str, session_id: str):
    with psycopg.connect(dsn) as conn:
        return conn.execute("select status, metrics from face_training_sessions where id = %s", [session_id]).fetchone()


def test_a_session_ended_while_the_database_was_down_reaches_it_with_the_next_run(own_postgres, tmp_path):
    pg, dsn = own_postgres, own_postgres.dsn
    gallery = PostgresGallery(dsn, connect_timeout_s=2)
    sessions = TrainingSessions(SessionHistory(tmp_path / "history"), gallery, gallery.description)
    record = sessions.start("run-1", {"training_mode": "full", "faces_count": 10})
    assert sessions.start("run-1", {}).id == record.id  # the same run, the same session
    assert _status(dsn, record.id)[0] == "running"

    pg.stop()
    ended, warning = sessions.finish("run-1", "failed", {"metrics": {"error": "database lost during write-back"}})
    assert ended.status == "failed" and not ended.synced
    assert "is failed locally but the gallery was not updated" in warning and "127.0.0.1" in warning
    [local] = SessionHistory(tmp_path / "history").list()  # readable while the database is down
    assert (local.status, local.error, local.synced) == ("failed", "database lost during write-back", False)
    assert sessions.sync_pending() == []  # still down: nothing pushed, nothing lost

    pg.start()  # the same data directory, the same port
    assert sessions.sync_pending() == [record.id]
    assert _status(dsn, record.id) == ("failed", {"error": "database lost during write-back"})
    assert SessionHistory(tmp_path / "history").for_run("run-1").synced
    assert sessions.sync_pending() == []


def test_the_last_good_config_is_used_with_a_warning_while_the_database_is_down(own_postgres, tmp_path):
    pg, dsn = own_postgres, own_postgres.dsn
    gallery = PostgresGallery(dsn, connect_timeout_s=2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update face_recognition_config set value = '7' where key = 'min_faces_per_person'")
    fresh = ConfigStore(tmp_path / "fresh", gallery.description, gallery)
    store = ConfigStore(tmp_path / "config", gallery.description, gallery)
    assert store.load() == (store.load()[0], []) and store.load()[0].min_faces_per_person == 7

    pg.stop()
    config, notes = store.load()
    assert config.min_faces_per_person == 7
    assert len(notes) == 1 and "cannot reach the gallery database at 127.0.0.1" in notes[0] and "config saved at" in notes[0]
    with pytest.raises(GalleryUnavailable):
        fresh.load()  # no saved copy: the error stands


def test_a_session_whose_start_could_not_reach_the_database_gets_exactly_one_row_once_it_is_back(own_postgres, tmp_path):
    """The database crashes between the run's read and its session's start: the ledger holds the session
    (its id made locally), the run ends it failed, and the next run writes that one row: failed."""
    pg, dsn = own_postgres, own_postgres.dsn
    gallery = PostgresGallery(dsn, connect_timeout_s=2)
    sessions = TrainingSessions(SessionHistory(tmp_path / "history"), gallery, gallery.description)
    pg.crash()
    with pytest.raises(GalleryUnavailable, match="cannot reach the gallery database at 127.0.0.1"):
        sessions.start("run-1", {"training_mode": "full"})
    started = SessionHistory(tmp_path / "history").for_run("run-1")
    assert (started.status, started.in_gallery, started.synced) == ("running", True, False)
    ended, warning = sessions.finish("run-1", "failed", {"metrics": {"error": "lost the database"}})
    assert warning and not ended.synced

    pg.start()
    assert sessions.sync_pending() == [started.id]
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select id::text, status, training_mode, metrics from face_training_sessions").fetchall()
    assert rows == [(started.id, "failed", "full", {"error": "lost the database"})]


def test_creating_a_session_again_with_its_id_updates_the_one_row(own_postgres):
    """A create retried after its answer was lost (the row committed) leaves one row, as last written."""
    gallery = PostgresGallery(own_postgres.dsn)
    session_id = "3f1b2a9e-8c4d-4e2f-9a1b-0c3d5e7f9a11"
    assert gallery.create_session({"status": "running", "faces_count": 3}, session_id=session_id) == session_id
    assert gallery.create_session({"status": "failed", "faces_count": 3}, session_id=session_id) == session_id
    with psycopg.connect(own_postgres.dsn) as conn:
        assert conn.execute("select id::text, status, faces_count from face_training_sessions").fetchall() == [
            (session_id, "failed", 3)
        ]


# -- the open sessions, found without reading the whole ledger -------------------------------------


def _record(run_id: str, status: str, *, synced: bool, in_gallery: bool = True):
    from facepipeline.sessions import SessionRecord

    return SessionRecord(id=f"id-{run_id}", run_id=run_id, source="s", status=status, created_at=f"2026-01-01T00:00:{run_id[-2:]}",
                         updated_at="u", in_gallery=in_gallery, synced=synced)


def test_a_retrain_reads_only_the_open_sessions_however_long_the_ledger(tmp_path, monkeypatch):
    history = SessionHistory(tmp_path / "history")
    for n in range(300):
        history.save(_record(f"run-{n:03d}", "completed", synced=True))  # closed: no marker
    history.save(_record("run-900", "running", synced=True))
    history.save(_record("run-901", "failed", synced=False))  # not in the gallery yet
    history.save(_record("run-902", "completed", synced=True, in_gallery=False))  # a folder source's: closed
    assert sorted(p.name for p in (tmp_path / "history" / "open").iterdir()) == ["run-900", "run-901"]

    reads = []
    real = SessionHistory.for_run
    monkeypatch.setattr(SessionHistory, "for_run", lambda self, run_id: reads.append(run_id) or real(self, run_id))
    assert [r.run_id for r in history.open_records()] == ["run-901", "run-900"]  # newest first
    assert sorted(reads) == ["run-900", "run-901"]  # two reads, not 303
    monkeypatch.undo()

    closed = history.for_run("run-901")
    closed.synced = True
    history.save(closed)
    assert [p.name for p in (tmp_path / "history" / "open").iterdir()] == ["run-900"]  # its marker went with it
    assert [r.run_id for r in history.open_records()] == ["run-900"]
    assert len(history.list()) == 303  # the full listing is unchanged


def test_a_ledger_without_markers_gets_them_once_and_a_marker_left_by_a_crash_is_dropped(tmp_path):
    import shutil

    history = SessionHistory(tmp_path / "history")
    history.save(_record("run-001", "running", synced=False))
    history.save(_record("run-002", "completed", synced=True))
    shutil.rmtree(tmp_path / "history" / "open")  # a ledger written before the markers
    assert [r.run_id for r in history.open_records()] == ["run-001"]
    assert [p.name for p in (tmp_path / "history" / "open").iterdir()] == ["run-001"]
    markers = tmp_path / "history" / "open"
    (markers / "run-002").touch()  # a crash between the closed record and its marker's removal
    (markers / "run-999").touch()  # or before an open record was written, long ago
    stale = time.time() - 120
    os.utime(markers / "run-999", (stale, stale))
    (markers / "run-998").touch()  # a record being written right now: its marker stays
    assert [r.run_id for r in SessionHistory(tmp_path / "history").open_records()] == ["run-001"]
    assert sorted(p.name for p in markers.iterdir()) == ["run-001", "run-998"]


def test_a_session_closed_while_another_process_writes_it_open_keeps_its_marker(tmp_path, monkeypatch):
    """Two processes finishing the same dead run: one closes it, the other's push failed (open)."""
    history = SessionHistory(tmp_path / "history")
    history.save(_record("run-001", "running", synced=True))
    real_replace = __import__("facepipeline.sessions", fromlist=["replace_file"]).replace_file

    def closed_then_reopened(path, data):
        real_replace(path, data)  # this process writes it closed ...
        monkeypatch.setattr("facepipeline.sessions.replace_file", real_replace)
        SessionHistory(tmp_path / "history").save(_record("run-001", "failed", synced=False))  # ... another, open

    monkeypatch.setattr("facepipeline.sessions.replace_file", closed_then_reopened)
    history.save(_record("run-001", "completed", synced=True))
    assert history.for_run("run-001").is_open
    assert [p.name for p in (tmp_path / "history" / "open").iterdir()] == ["run-001"]
    assert [r.status for r in history.open_records()] == ["failed"]


def test_a_retrain_looks_at_the_open_sessions_without_reading_the_whole_ledger(gallery_dsn, tmp_path, monkeypatch):
    from dagster import DagsterInstance

    from jobs.run_guard import close_orphaned_sessions

    gallery = PostgresGallery(gallery_dsn)
    history = SessionHistory(tmp_path / "history")
    for n in range(20):
        history.save(_record(f"run-{n:03d}", "completed", synced=True))
    sessions = TrainingSessions(history, gallery, gallery.description)
    record = sessions.start("run-killed", {"training_mode": "full", "faces_count": 3})
    monkeypatch.setattr(SessionHistory, "list", lambda self, limit=None: pytest.fail("the whole ledger was read"))
    assert sessions.sync_pending() == []  # the open one is in the gallery already
    with DagsterInstance.ephemeral() as instance:  # its run is unknown here: over, never closed
        assert close_orphaned_sessions(instance, sessions, current_run_id="run-now") == [record.id]
    assert history.for_run("run-killed").status == "failed" and history.open_records() == []
