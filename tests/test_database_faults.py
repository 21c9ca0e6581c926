"""The database rows of the fault matrix (issue 6), each injected for real.

Every test has a PostgreSQL of its own (``own_postgres``), really stopped with ``pg_ctl -m
immediate`` (a crash: backends killed, no shutdown checkpoint), really slowed (another connection
holding a lock, as the gallery app can), or edited by the "gallery app" (SQL on its own connection)
while a retrain runs. Then rows are counted: what was written, skipped and why, what the next run
wrote, nothing twice, no session left ``running``.

The retrains are the real ``retrain`` job (Dagster, in process) with the real model, on real photos
served over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler

import numpy as np
import psycopg
import pytest
from dagster import DagsterInstance
from psycopg.types.json import Jsonb

from definitions import build_definitions
from facepipeline.gallery import photo_server
from facepipeline.gallery.base import (
    DescriptorUpdate,
    GalleryError,
    GalleryTimeout,
    WriteBackFailed,
    WriteBackInterrupted,
    finite_json,
    json_text,
)
from facepipeline.gallery.postgres import PostgresGallery
from facepipeline.gallery.seed import seed_from_folder
from facepipeline.geometry import BBox
from facepipeline.index import IndexStore
from facepipeline.sessions import SessionHistory, TrainingSessions
from facepipeline.sources.base import FaceFilters
from jobs import retrain_job
from tests.conftest import allow_photo_hosts, serve_http

SECRET = "db-pa55word-never-shown"


# -- a gallery of this test's own, its photos served over HTTP ---------------------------------------


class PhotoHost:
    """The photo folder over HTTP on 127.0.0.1; ``on_first_request`` runs once, before the first photo
    is served: the moment the retrain has read the verified faces and starts fetching photos."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.on_first_request = None
        self._lock = threading.Lock()

    def first_request(self) -> None:
        with self._lock:
            hook, self.on_first_request = self.on_first_request, None
        if hook is not None:
            hook()


@pytest.fixture()
def gallery(own_postgres, small_faces, settings, monkeypatch):
    """The 6 x 8 real photos seeded into this test's own Postgres; the retrain's settings point at it
    with a password in the DSN (trust auth ignores it) that must never show."""
    holder: list[PhotoHost] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            holder[0].first_request()
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    with serve_http(partial(Handler, directory=str(small_faces))) as base_url:
        host = PhotoHost(base_url)
        holder.append(host)
        allow_photo_hosts(monkeypatch, base_url)
        seeded = seed_from_folder(own_postgres.dsn, small_faces, partial(photo_server.url_for, base_url), unverified_share=0.1)
        monkeypatch.setenv("SUPABASE_DB_URL", own_postgres.dsn.replace("postgres@", f"postgres:{SECRET}@"))
        yield {
            "pg": own_postgres, "dsn": own_postgres.dsn, "seeded": seeded, "photos": host,
            "settings": replace(settings, source="postgres"),
        }


@pytest.fixture()
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster"), overrides={"telemetry": {"enabled": False}}) as instance:
        yield instance


def retrain(settings, instance, **face_source):
    job = build_definitions(settings).resolve_job_def(retrain_job.name)
    run_config = {"resources": {"retrain_options": {"config": {}}}}
    if face_source:  # a configured resource's fields are overridden whole: the secret stays an env var
        config = {"source": "postgres", "database_url": {"env": "SUPABASE_DB_URL"}, **face_source}
        run_config["resources"]["face_source"] = {"config": config}
    return job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)


def query(dsn: str, sql: str, params=()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def row_versions(dsn: str) -> dict[str, tuple]:
    """Every photo_faces row with its tuple version (xmin): any rewrite of a row shows."""
    return {r[0]: r[1:] for r in query(dsn, "select id::text, xmin::text, photo_faces::text from photo_faces")}


def described(dsn: str) -> set[str]:
    return {r[0] for r in query(dsn, "select id::text from photo_faces where insightface_descriptor is not null")}


def sessions(dsn: str) -> list[tuple]:
    return query(dsn, "select id::text, status, metrics from face_training_sessions order by created_at")


def embedded_ok(result) -> set[str]:
    return {r["face_id"] for r in result.output_for_node("face_embeddings").to_pylist() if r["status"] == "ok"}


def step_failure(result):
    [failure] = [e for e in result.all_events if e.is_step_failure]
    return failure.step_key, failure.step_failure_data.user_failure_data


def no_secret_in(*texts: str) -> bool:
    return not any(SECRET in text for text in texts)


# -- 1. down at start ----------------------------------------------------------------------------------


def test_a_database_down_at_start_fails_the_first_step_naming_it_writes_nothing_and_the_next_run_does_everything(gallery, instance):
    pg, dsn, settings = gallery["pg"], gallery["dsn"], gallery["settings"]
    port = dsn.split("@127.0.0.1:")[1].split("/")[0]
    pg.crash()

    failed = retrain(settings, instance)
    assert not failed.success
    step, failure = step_failure(failed)
    assert step == "verified_faces"
    assert f"cannot reach the gallery database at 127.0.0.1:{port}/gallery" in failure.description
    assert no_secret_in(failure.description, json.dumps([str(e) for e in failed.all_events]))
    # Nothing half-written anywhere: no photo fetched, no index version, no session (local or remote).
    assert not (settings.home / "photos").exists() and not (settings.home / "history").exists()
    assert IndexStore(settings.home / "index").versions() == []

    pg.start()
    assert sessions(dsn) == [] and described(dsn) == set()  # the gallery saw nothing of the failed run
    before = row_versions(dsn)

    done = retrain(settings, instance)
    assert done.success
    ok = embedded_ok(done)
    assert described(dsn) == ok and len(ok) >= 40
    assert done.output_for_node("face_descriptors")["written"] == len(ok)
    [(session_id, status, metrics)] = sessions(dsn)
    assert status == "completed" and metrics["faces_embedded"] == len(ok)
    assert [v.name for v in IndexStore(settings.home / "index").versions()] == ["v1"]
    after = row_versions(dsn)
    assert len(after) == len(before) == gallery["seeded"].faces  # no row added or lost
    assert {face_id for face_id in after if after[face_id] != before[face_id]} == ok  # only the written rows changed
    [record] = SessionHistory(settings.home / "history").list()
    assert (record.id, record.status, record.synced) == (session_id, "completed", True)


# -- 2. lost in the middle of write-back ---------------------------------------------------------------

# The second write-back batch sleeps in a trigger once the first batch's rows are committed (rows
# with training_used written by another transaction exist), so the test can crash the server while
# that batch is running: after exactly one committed batch, whatever the machine's speed.
_SLOW_SECOND_BATCH = """
create function fault_slow_second_batch() returns trigger language plpgsql as $$
begin
    if exists (select 1 from photo_faces f where f.training_used and f.xmin::text <> pg_current_xact_id()::text) then
        perform pg_sleep(300);
    end if;
    return new;
end $$;
create trigger fault_slow_second_batch before update on photo_faces for each row execute function fault_slow_second_batch();
"""


def crash_when_a_batch_sleeps(pg, stop: threading.Event) -> threading.Thread:
    """Crash the server (``pg_ctl -m immediate``) as soon as a backend waits in pg_sleep."""

    def watch() -> None:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            while not stop.is_set():
                if conn.execute("select count(*) from pg_stat_activity where wait_event = 'PgSleep'").fetchone()[0]:
                    break
                stop.wait(0.05)
            else:
                return
        pg.crash()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_losing_the_database_in_the_middle_of_write_back_keeps_committed_batches_fails_with_counts_and_the_next_run_writes_only_the_rest(
    gallery, instance
):
    pg, dsn, settings = gallery["pg"], gallery["dsn"], gallery["settings"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_SLOW_SECOND_BATCH)
    stop = threading.Event()
    watcher = crash_when_a_batch_sleeps(pg, stop)
    try:
        failed = retrain(settings, instance, write_batch_size=10)
    finally:
        stop.set()
        watcher.join(60)
    assert not failed.success and pg.server.running() is None  # really down
    step, failure = step_failure(failed)
    ok = embedded_ok(failed)
    assert step == "face_descriptors"
    counts = {key: failure.metadata[key].value for key in ("faces", "written", "unchanged", "skipped", "batches_committed", "left")}
    assert counts == {"faces": len(ok), "written": 10, "unchanged": 0, "skipped": 0, "batches_committed": 1, "left": len(ok) - 10}
    assert f"10 of {len(ok)} rows were committed before" in failure.description
    assert "lost the gallery database at 127.0.0.1:" in failure.description and no_secret_in(failure.description)
    # The session is failed in the local ledger; the gallery could not be told yet.
    [record] = SessionHistory(settings.home / "history").list()
    assert (record.status, record.synced) == ("failed", False) and "10 of" in record.error

    pg.start()  # crash recovery: only committed transactions
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop trigger fault_slow_second_batch on photo_faces")
    committed = described(dsn)
    assert len(committed) == 10 and committed <= ok  # the first batch, intact
    assert query(dsn, "select count(*) from photo_faces where training_used")[0][0] == 10
    assert [s[1] for s in sessions(dsn)] == ["running"]  # until the next run tells it
    before = row_versions(dsn)

    done = retrain(settings, instance, write_batch_size=10)
    assert done.success
    report = done.output_for_node("face_descriptors")
    assert (report["written"], report["unchanged"], report["skipped"]) == (len(ok) - 10, 10, 0)
    after = row_versions(dsn)
    assert {face_id for face_id in after if after[face_id] != before[face_id]} == ok - committed  # only the rest
    assert len(after) == len(before) == gallery["seeded"].faces and described(dsn) == ok
    # Exactly one session row per run: the first one closed failed by the second run, with its error.
    (first_id, first_status, first_metrics), (_, second_status, _) = sessions(dsn)
    assert (first_id, first_status, second_status) == (record.id, "failed", "completed")
    assert f"10 of {len(ok)} rows were committed before" in first_metrics["error"]
    assert all(r.synced for r in SessionHistory(settings.home / "history").list())


# -- 3. slow: the statement timeout ---------------------------------------------------------------------

BOX = {"x": 68, "y": 68, "width": 115, "height": 115}


def _faces(dsn: str, count: int) -> list[str]:
    """``count`` verified faces of two people, each on its own photo."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        people = [conn.execute("insert into people (real_name) values (%s) returning id", [n]).fetchone()[0] for n in ("Ada", "Bob")]
        for n in range(count):
            photo = conn.execute(
                "insert into photos (storage_path, url, width, height) values ('p.jpg', %s, 250, 250) returning id",
                [f"http://127.0.0.1:9/{n}.jpg"],
            ).fetchone()[0]
            conn.execute(
                "insert into photo_faces (photo_id, person_id, bbox, verified) values (%s, %s, %s, true)",
                [photo, people[n % 2], Jsonb(BOX)],
            )
    return people


def _updates(source: PostgresGallery) -> list[DescriptorUpdate]:
    updates = []
    for n, face in enumerate(source.read(FaceFilters()).faces):
        vector = np.random.default_rng(n).normal(size=512).astype(np.float32)
        updates.append(DescriptorUpdate(face.face_id, face.person_id, face.bbox, vector / np.linalg.norm(vector), 0.9,
                                        BBox(70, 66, 110, 118), {"event_id": None, "training_session_id": "s1"}))
    return updates


def test_a_statement_timeout_during_write_back_reports_what_was_committed_and_the_next_run_writes_the_rest(own_postgres):
    dsn = own_postgres.dsn
    _faces(dsn, 8)
    source = PostgresGallery(dsn, statement_timeout_s=1)
    updates = _updates(source)
    app = psycopg.connect(dsn)  # the gallery app holds a row of the second batch locked, in an open transaction
    app.execute("select 1 from photo_faces where id = %s for update", [updates[2].face_id])
    try:
        with pytest.raises(WriteBackFailed) as caught:
            source.write_descriptors(updates, batch_size=2)
    finally:
        app.rollback()
        app.close()
    failure = caught.value
    assert isinstance(failure, GalleryError) and not isinstance(failure, WriteBackInterrupted)  # the server is there
    assert failure.report.as_dict() == {"faces": 8, "written": 2, "unchanged": 0, "skipped": 0, "batches_committed": 1}
    message = str(failure)
    assert "cancelled a statement after the statement timeout of 1 s" in message
    assert "2 of 8 rows were committed before" in message and f"{own_postgres.dsn.split('@')[1]}" in message
    committed = described(dsn)
    assert committed == {u.face_id for u in updates[:2]}  # the first batch, and nothing of the second
    before = row_versions(dsn)

    rest = source.write_descriptors(updates, batch_size=2)
    assert (rest.written, rest.unchanged, rest.skipped, rest.batches_committed) == (6, 2, 0, 3)
    after = row_versions(dsn)
    assert {k for k in after if after[k] != before[k]} == {u.face_id for u in updates[2:]}
    assert len(after) == 8 and len(described(dsn)) == 8


def test_a_read_slower_than_the_statement_timeout_fails_naming_the_timeout(own_postgres):
    dsn = own_postgres.dsn
    _faces(dsn, 2)
    source = PostgresGallery(dsn, statement_timeout_s=1)
    app = psycopg.connect(dsn)
    app.execute("lock table photo_faces in access exclusive mode")  # e.g. a migration running in the gallery
    try:
        with pytest.raises(GalleryTimeout, match="cancelled a statement after the statement timeout of 1 s"):
            source.read(FaceFilters())
    finally:
        app.rollback()
        app.close()
    assert len(source.read(FaceFilters()).faces) == 2  # once the lock is gone


@pytest.mark.parametrize("seconds", [0, 0.5, -1, 3601, float("nan"), float("inf"), True, "30"])
def test_a_statement_timeout_out_of_bounds_is_refused(seconds):
    with pytest.raises(GalleryError, match="statement timeout must be a number of seconds from 1 to 3600"):
        PostgresGallery("postgresql://postgres@127.0.0.1:9/gallery", statement_timeout_s=seconds)


def test_the_face_source_resource_validates_and_applies_the_statement_timeout(own_postgres):
    from pydantic import ValidationError

    from resources import FaceSourceResource

    for bad in ({"statement_timeout_s": 0}, {"statement_timeout_s": 7200}, {"write_batch_size": 0}):
        with pytest.raises(ValidationError):
            FaceSourceResource(source="postgres", database_url=own_postgres.dsn, **bad)
    resource = FaceSourceResource(source="postgres", database_url=own_postgres.dsn, statement_timeout_s=7.5)
    assert resource.gallery().statement_timeout_s == 7.5
    with resource.gallery()._connection() as conn:  # what a connection of the gallery really runs with
        assert conn.execute("show statement_timeout").fetchone()[0] == "7500ms"


# -- 4. rows changed by the gallery while a retrain runs -----------------------------------------------


def test_rows_the_gallery_deletes_or_changes_during_a_retrain_are_skipped_by_reason_and_the_next_run_takes_them(gallery, instance):
    dsn, settings = gallery["dsn"], gallery["settings"]
    faces = query(
        dsn,
        "select f.id::text, f.person_id::text, f.bbox from photo_faces f where f.verified order by f.id limit 4",
    )
    (deleted, _, _), (relabelled, old_person, _), (unverified, _, _), (reboxed, _, box) = faces
    [(new_person,)] = query(dsn, "select id::text from people where id <> %s order by id limit 1", [old_person])
    edited: list[str] = []

    def the_gallery_app_edits() -> None:  # after the retrain read the faces, before it writes back
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("delete from photo_faces where id = %s", [deleted])
            conn.execute("update photo_faces set person_id = %s where id = %s", [new_person, relabelled])
            conn.execute("update photo_faces set verified = false where id = %s", [unverified])
            moved = {**box, "x": box["x"] + 2, "y": box["y"] + 2}
            conn.execute("update photo_faces set bbox = %s where id = %s", [Jsonb(moved), reboxed])
        edited.append("done")

    gallery["photos"].on_first_request = the_gallery_app_edits
    first = retrain(settings, instance)
    assert first.success and edited == ["done"]
    ok = embedded_ok(first)
    assert {deleted, relabelled, unverified, reboxed} <= ok  # all four were read and embedded
    report = first.output_for_node("face_descriptors")
    assert (report["written"], report["skipped"]) == (len(ok) - 4, 4)
    assert report["skipped_by_reason"] == {"deleted": 1, "relabelled": 1, "reboxed": 1, "unverified": 1}
    said = [entry.user_message for entry in instance.all_logs(first.run_id) if "changed in the gallery" in entry.user_message]
    assert len(said) == 1 and said[0].startswith("4 face(s) changed in the gallery during the run, not written: ")  # one line
    assert all(f"{face} ({reason})" in said[0] for face, reason in
               ((deleted, "deleted"), (relabelled, "relabelled"), (unverified, "unverified"), (reboxed, "reboxed")))
    assert query(dsn, "select count(*) from photo_faces where id = %s", [deleted]) == [(0,)]  # not resurrected
    changed = query(
        dsn, "select id::text, insightface_descriptor is null, training_used from photo_faces where id = any(%s::uuid[]) order by id",
        [[relabelled, unverified, reboxed]],
    )
    assert all(row[1:] == (True, False) for row in changed) and len(changed) == 3  # nothing written onto them
    assert described(dsn) == ok - {deleted, relabelled, unverified, reboxed}
    before = row_versions(dsn)

    second = retrain(settings, instance)
    assert second.success
    again = second.output_for_node("face_descriptors")
    assert (again["written"], again["skipped"]) == (2, 0)  # the relabelled and the reboxed face, as they are now
    after = row_versions(dsn)
    assert {k for k in after if after[k] != before[k]} == {relabelled, reboxed}
    assert unverified not in described(dsn) and len(after) == gallery["seeded"].faces - 1
    [(person, context)] = query(dsn, "select person_id::text, training_context from photo_faces where id = %s", [relabelled])
    assert person == new_person and context["training_session_id"] == sessions(dsn)[1][0]
    assert [s[1] for s in sessions(dsn)] == ["completed", "completed"]


# -- NaN and infinity never reach the database ---------------------------------------------------------


def test_finite_json_turns_nan_and_infinity_into_null_everywhere_in_the_structure():
    value = {"a": float("nan"), "b": [1.5, float("inf"), np.float32("-inf")], "c": {"d": np.float64(2.0), "e": np.int64(3)},
             "f": (True, None, "x"), "g": np.array([np.nan, 1.0])}
    assert finite_json(value) == {"a": None, "b": [1.5, None, None], "c": {"d": 2.0, "e": 3}, "f": [True, None, "x"], "g": [None, 1.0]}
    text = json_text(value)
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))


def test_finite_json_names_keys_the_same_whether_or_not_a_value_is_nan():
    """Plain data takes the C encoder's path, data with a NaN the walk: the keys must not depend on it."""
    import enum

    class Colour(str, enum.Enum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 2

    keys = [Colour.RED, Level.HIGH, True, None, 1.5, 7, "x"]
    plain = finite_json({key: 1 for key in keys})
    with_nan = finite_json({key: float("nan") for key in keys})
    assert list(plain) == list(with_nan) == ["red", "2", "true", "null", "1.5", "7", "x"]
    assert set(with_nan.values()) == {None} and set(plain.values()) == {1}


def test_nan_metrics_are_stored_as_null_in_the_gallery_and_in_the_local_history(own_postgres, tmp_path):
    gallery = PostgresGallery(own_postgres.dsn)
    sessions_ = TrainingSessions(SessionHistory(tmp_path / "history"), gallery, gallery.description)
    record = sessions_.start("run-1", {"training_mode": "full", "context_weight": float("nan")})
    ended, warning = sessions_.finish(
        "run-1", "completed", {"metrics": {"rank1_accuracy": float("nan"), "far": [float("inf"), 0.01], "faces_total": 7}}
    )
    assert warning is None and ended.synced
    [(status, context_weight, metrics)] = query(
        own_postgres.dsn, "select status, context_weight, metrics from face_training_sessions where id = %s", [record.id]
    )
    assert (status, context_weight) == ("completed", None)
    assert metrics == {"rank1_accuracy": None, "far": [None, 0.01], "faces_total": 7}
    text = (tmp_path / "history" / "run-1.json").read_text()
    stored = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the history file"))
    assert stored["fields"]["metrics"] == metrics and stored["fields"]["context_weight"] is None


def test_a_nan_config_value_or_descriptor_is_refused_before_anything_is_written(own_postgres):
    source = PostgresGallery(own_postgres.dsn)
    before = source.read_config()
    with pytest.raises(ValueError, match="context_weight: nan is not a finite JSON value"):
        source.write_config("context_weight", float("nan"))
    assert source.read_config() == before
    with pytest.raises(ValueError, match="not finite"):
        DescriptorUpdate("f1", "p1", BBox(1, 1, 5, 5), np.full(512, np.inf, dtype=np.float32), 0.9, BBox(1, 1, 5, 5), {})
    with pytest.raises(ValueError, match="confidence is not finite"):
        DescriptorUpdate("f1", "p1", BBox(1, 1, 5, 5), np.ones(512, dtype=np.float32), math.nan, BBox(1, 1, 5, 5), {})


# -- SQL: names are identifiers, values are parameters -------------------------------------------------


def test_session_columns_are_whitelisted_and_values_never_become_sql(own_postgres):
    source = PostgresGallery(own_postgres.dsn)
    with pytest.raises(ValueError, match="not columns of face_training_sessions"):
        source.create_session({"status) values ('completed'); drop table photos; --": 1})
    hostile = "x'); drop table photo_faces; --"
    session = source.create_session({"status": "running", "training_mode": hostile, "model_version": "v1"})
    source.update_session(session, {"model_version": hostile, "metrics": {"note": hostile}})
    [row] = query(own_postgres.dsn, "select training_mode, model_version, metrics from face_training_sessions where id = %s", [session])
    assert row == (hostile, hostile, {"note": hostile})
    assert query(own_postgres.dsn, "select count(*) from photo_faces") == [(0,)]  # the table is still there
