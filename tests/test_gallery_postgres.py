"""The Postgres transport against a real PostgreSQL 18 + pgvector with the SPEC schema."""

import time
import uuid
from dataclasses import replace

import numpy as np
import psycopg
import pytest

from facepipeline.gallery.base import DescriptorUpdate, GalleryUnavailable, WriteBackInterrupted
from facepipeline.gallery.postgres import PostgresGallery
from facepipeline.geometry import BBox
from facepipeline.sources.base import FaceFilters

BOX = {"x": 68, "y": 68, "width": 115, "height": 115}


class Gallery:
    """Rows inserted straight into the test database, as the gallery app would."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)

    def event(self, name: str, day: str) -> str:
        return self.conn.execute("insert into events (name, date) values (%s, %s) returning id::text", [name, day]).fetchone()[0]

    def person(self, name: str) -> str:
        return self.conn.execute("insert into people (real_name) values (%s) returning id::text", [name]).fetchone()[0]

    def photo(self, event_id: str | None, url: str = "http://127.0.0.1:9/p.jpg") -> str:
        return self.conn.execute(
            "insert into photos (event_id, storage_path, url, width, height) values (%s, 'p.jpg', %s, 250, 250) returning id::text",
            [event_id, url],
        ).fetchone()[0]

    def face(self, photo_id: str, person_id: str | None, *, verified: bool = True, bbox=None) -> str:
        return self.conn.execute(
            "insert into photo_faces (photo_id, person_id, bbox, verified) values (%s, %s, %s, %s) returning id::text",
            [photo_id, person_id, psycopg.types.json.Jsonb(BOX if bbox is None else bbox), verified],
        ).fetchone()[0]

    def rows(self) -> dict[str, tuple]:
        """Every photo_faces row as text, with its tuple version (xmin): any write shows."""
        return {
            r[0]: r[1:]
            for r in self.conn.execute("select id::text, xmin::text, photo_faces::text from photo_faces order by id")
        }


@pytest.fixture()
def gallery(gallery_dsn):
    g = Gallery(gallery_dsn)
    yield g
    g.conn.close()


def _three_people(g: Gallery) -> dict:
    """Ada (4 faces, spring event), Bob (3, summer), Cy (1, summer, shares a photo with Bob)."""
    spring, summer = g.event("Spring", "2024-04-01"), g.event("Summer", "2024-07-01")
    ada, bob, cy = g.person("Ada"), g.person("Bob"), g.person("Cy")
    ids = {"spring": spring, "summer": summer, "ada": ada, "bob": bob, "cy": cy, "faces": []}
    for _ in range(4):
        ids["faces"].append(g.face(g.photo(spring), ada))
    shared = g.photo(summer)
    ids["shared_photo"] = shared
    ids["faces"].append(g.face(shared, bob))
    ids["faces"].append(g.face(shared, cy, bbox={"x": 10, "y": 10, "width": 50, "height": 50}))
    for _ in range(2):
        ids["faces"].append(g.face(g.photo(summer), bob))
    ids["unverified"] = g.face(g.photo(summer), bob, verified=False)
    ids["nobody"] = g.face(g.photo(summer), None, verified=True)
    return ids


def test_read_joins_people_photos_events_and_applies_every_filter(gallery):
    ids = _three_people(gallery)
    source = PostgresGallery(gallery.dsn)
    everyone = source.read(FaceFilters())
    assert len(everyone.faces) == 8  # not the unverified face, not the face without a person
    assert {f.face_id for f in everyone.faces} == set(ids["faces"])
    ada_face = next(f for f in everyone.faces if f.person_id == ids["ada"])
    assert (ada_face.person_name, ada_face.event_name, ada_face.event_date) == ("Ada", "Spring", "2024-04-01")
    assert ada_face.bbox == BBox(68, 68, 115, 115) and ada_face.photo_id and ada_face.photo_ref.startswith("http://")

    assert {f.person_id for f in source.read(FaceFilters(event_ids=(ids["summer"],))).faces} == {ids["bob"], ids["cy"]}
    assert {f.person_id for f in source.read(FaceFilters(date_to=_day("2024-05-01"))).faces} == {ids["ada"]}
    assert {f.person_id for f in source.read(FaceFilters(date_from=_day("2024-05-01"))).faces} == {ids["bob"], ids["cy"]}
    assert {f.person_id for f in source.read(FaceFilters(person_ids=(ids["bob"],))).faces} == {ids["bob"]}
    with_company = source.read(FaceFilters(person_ids=(ids["bob"],), include_co_occurring=True))
    assert {f.person_id for f in with_company.faces} == {ids["bob"], ids["cy"]} and with_company.added_as_co_occurring == 1
    at_least_3 = source.read(FaceFilters(min_faces_per_person=3))
    assert {f.person_id for f in at_least_3.faces} == {ids["ada"], ids["bob"]} and at_least_3.dropped_by_min_faces == 1


def test_untrained_faces_are_verified_labelled_and_not_training_used(gallery):
    ids = _three_people(gallery)
    used, unset = ids["faces"][0], ids["faces"][1]
    gallery.conn.execute("update photo_faces set training_used = true where id = %s", [used])
    gallery.conn.execute("update photo_faces set training_used = null where id = %s", [unset])
    untrained = PostgresGallery(gallery.dsn).untrained_face_ids()
    # not the used face, not the suggestion, not the face of nobody; null counts as not used
    assert untrained == sorted(set(ids["faces"]) - {used})
    assert ids["unverified"] not in untrained and ids["nobody"] not in untrained


def test_a_malformed_box_is_rejected_with_its_reason_and_the_rest_is_read(gallery):
    ids = _three_people(gallery)
    bad = gallery.face(gallery.photo(ids["spring"]), ids["ada"], bbox={"x": "ten", "y": 0, "width": 5, "height": 5})
    zero = gallery.face(gallery.photo(ids["spring"]), ids["ada"], bbox={"x": 0, "y": 0, "width": 0, "height": 5})
    read = PostgresGallery(gallery.dsn).read(FaceFilters())
    assert len(read.faces) == 8
    reasons = {r.face_id: r.reason for r in read.rejected}
    assert set(reasons) == {bad, zero} and "number" in reasons[bad] and "positive size" in reasons[zero]


def _update(face, session="s1", seed=0) -> DescriptorUpdate:
    vector = np.random.default_rng(seed).normal(size=512).astype(np.float32)
    return DescriptorUpdate(
        face_id=face.face_id, person_id=face.person_id, bbox=face.bbox, descriptor=vector / np.linalg.norm(vector),
        confidence=0.87, detected_bbox=BBox(70.5, 66.25, 110, 118), context={"event_id": face.event_id,
        "co_occurring_people": [], "training_session_id": session},
    )


def test_write_back_writes_verified_rows_once_and_a_rerun_changes_nothing(gallery):
    ids = _three_people(gallery)
    source = PostgresGallery(gallery.dsn)
    faces = source.read(FaceFilters()).faces
    untouched = {k: v for k, v in gallery.rows().items() if k in (ids["unverified"], ids["nobody"])}

    updates = [_update(f, seed=i) for i, f in enumerate(faces)]
    first = source.write_descriptors(updates, batch_size=3)
    assert (first.written, first.unchanged, first.skipped, first.batches_committed) == (8, 0, 0, 3)

    stored = gallery.conn.execute(
        "select insightface_descriptor::text, vector_dims(insightface_descriptor), insightface_confidence, "
        "insightface_bbox, training_used, training_context from photo_faces where id = %s",
        [updates[0].face_id],
    ).fetchone()
    vector = np.array(eval(stored[0]), dtype=np.float32)  # pgvector's text form is a list literal
    assert stored[1] == 512 and np.array_equal(vector, updates[0].descriptor)
    assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    assert stored[2] == pytest.approx(0.87) and stored[3] == {"x": 70.5, "y": 66.25, "width": 110, "height": 118}
    assert stored[4] is True and stored[5]["training_session_id"] == "s1"

    before = gallery.rows()
    # A later session with the same results: nothing to change, not even training_context's session id.
    again = source.write_descriptors([_update(f, session="s2", seed=i) for i, f in enumerate(faces)])
    assert (again.written, again.unchanged, again.skipped) == (0, 8, 0)
    assert gallery.rows() == before  # same tuple versions: no row was rewritten
    assert {k: before[k] for k in untouched} == untouched  # unverified rows: byte for byte as they were


def test_a_context_with_nan_and_numpy_values_is_written_as_json_and_a_rerun_changes_nothing(gallery):
    """training_context is free-form: NaN is stored as null (jsonb refuses NaN), numpy numbers as numbers."""
    _three_people(gallery)
    source = PostgresGallery(gallery.dsn)
    faces = source.read(FaceFilters()).faces[:2]

    def odd(face, session):
        update = _update(face, session=session)
        return replace(update, context={**update.context, "margin": float("nan"), "votes": np.int64(3), "scores": np.array([0.5, np.inf])})

    report = source.write_descriptors([odd(f, "s1") for f in faces])
    assert (report.written, report.unchanged) == (2, 0)
    stored = gallery.conn.execute("select training_context from photo_faces where id = %s", [faces[0].face_id]).fetchone()[0]
    assert stored["margin"] is None and stored["votes"] == 3 and stored["scores"] == [0.5, None]
    before = gallery.rows()
    again = source.write_descriptors([odd(f, "s2") for f in faces])
    assert (again.written, again.unchanged) == (0, 2)
    assert gallery.rows() == before


def test_write_back_leaves_rows_the_gallery_changed_since_the_read(gallery):
    ids = _three_people(gallery)
    source = PostgresGallery(gallery.dsn)
    faces = source.read(FaceFilters()).faces
    relabelled, unverified, reboxed, deleted = faces[0], faces[1], faces[2], faces[3]
    someone_else = ids["ada"] if relabelled.person_id != ids["ada"] else ids["bob"]
    gallery.conn.execute("update photo_faces set person_id = %s where id = %s", [someone_else, relabelled.face_id])
    gallery.conn.execute("update photo_faces set verified = false where id = %s", [unverified.face_id])
    gallery.conn.execute("update photo_faces set bbox = '{\"x\": 1, \"y\": 1, \"width\": 9, \"height\": 9}' where id = %s", [reboxed.face_id])
    gallery.conn.execute("delete from photo_faces where id = %s", [deleted.face_id])
    changed = {f.face_id for f in (relabelled, unverified, reboxed, deleted)}
    before = {k: v for k, v in gallery.rows().items() if k in changed}

    report = source.write_descriptors([_update(f) for f in faces])
    assert (report.written, report.skipped) == (4, 4) and set(report.skipped_ids) == changed
    assert report.skip_reason_of == {
        relabelled.face_id: "relabelled", unverified.face_id: "unverified", reboxed.face_id: "reboxed", deleted.face_id: "deleted",
    }
    assert "4 skipped (changed by the gallery since the read: 1 deleted, 1 reboxed, 1 relabelled, 1 unverified)" in report.line()
    assert {k: v for k, v in gallery.rows().items() if k in changed} == before


def test_descriptors_with_nan_or_the_wrong_size_are_refused_before_anything_is_written(gallery):
    _three_people(gallery)
    face = PostgresGallery(gallery.dsn).read(FaceFilters()).faces[0]
    vector = np.ones(512, dtype=np.float32)
    vector[3] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        DescriptorUpdate(face.face_id, face.person_id, face.bbox, vector, 0.9, face.bbox, {})
    with pytest.raises(ValueError, match="512"):
        DescriptorUpdate(face.face_id, face.person_id, face.bbox, np.ones(128), 0.9, face.bbox, {})


def test_an_unreachable_database_fails_fast_naming_host_and_port_never_the_password():
    with socket_that_refuses() as port:
        source = PostgresGallery(f"postgresql://gallery_user:hunter2secret@127.0.0.1:{port}/gallery", connect_timeout_s=3)
        started = time.monotonic()
        with pytest.raises(GalleryUnavailable) as caught:
            source.read(FaceFilters())
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "hunter2secret" not in message
    assert "hunter2secret" not in repr(caught.value) and "hunter2secret" not in source.description


def test_losing_the_database_during_write_back_keeps_committed_batches_and_the_next_run_finishes(gallery, postgres_server):
    _three_people(gallery)
    source = PostgresGallery(gallery.dsn)
    faces = source.read(FaceFilters()).faces
    updates = [_update(f, seed=i) for i, f in enumerate(faces)]

    def kill_our_connection(report) -> None:
        if report.batches_committed == 1:  # after the first commit, the server drops us (a real backend kill)
            with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
                admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'facepipeline'")

    with pytest.raises(WriteBackInterrupted) as caught:
        source.write_descriptors(updates, batch_size=2, progress=kill_our_connection)
    assert caught.value.report.batches_committed == 1 and caught.value.report.written == 2
    assert "127.0.0.1" in str(caught.value) and "next run" in str(caught.value)
    written = gallery.conn.execute("select count(*) from photo_faces where training_used").fetchone()[0]
    assert written == 2  # the committed batch stayed, the interrupted one left nothing half-written

    rest = source.write_descriptors(updates, batch_size=2)
    assert (rest.written, rest.unchanged) == (6, 2)
    assert gallery.conn.execute("select count(*) from photo_faces").fetchone()[0] == 10  # no duplicates, nothing lost
    assert gallery.conn.execute("select count(*) from photo_faces where training_used").fetchone()[0] == 8


def test_sessions_and_config_round_trip(gallery):
    source = PostgresGallery(gallery.dsn)
    session = source.create_session({"status": "running", "training_mode": "full", "faces_count": 7, "context_weight": 0.1})
    source.update_session(session, {"status": "completed", "metrics": {"rank1_accuracy": 0.98, "processed": "processed 7/7 faces (0 failed)"}})
    row = gallery.conn.execute(
        "select status, training_mode, faces_count, metrics from face_training_sessions where id = %s", [session]
    ).fetchone()
    assert row == ("completed", "full", 7, {"rank1_accuracy": 0.98, "processed": "processed 7/7 faces (0 failed)"})
    assert uuid.UUID(session)

    assert source.read_config()["min_faces_per_person"] == 3
    source.write_config("context_weight", 0.25)
    assert source.read_config()["context_weight"] == 0.25
    assert gallery.conn.execute("select count(*) from face_recognition_config").fetchone()[0] == 7  # the initial rows, the one updated in place


def _day(text: str):
    from datetime import date

    return date.fromisoformat(text)


class socket_that_refuses:
    """A port on 127.0.0.1 that nothing listens on."""

    def __enter__(self) -> int:
        import socket

        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        return self.port

    def __exit__(self, *exc) -> None:
        pass


def test_a_row_unverified_by_the_gallery_while_the_write_waits_for_it_is_not_written(gallery):
    """Two real connections: the gallery's open transaction unverifies a row; our batch waits, then skips it."""
    import threading

    _three_people(gallery)
    source = PostgresGallery(gallery.dsn)
    faces = source.read(FaceFilters()).faces
    target = faces[0]
    app = psycopg.connect(gallery.dsn)  # the gallery app, in a transaction
    app.execute("update photo_faces set verified = false, person_id = null where id = %s", [target.face_id])
    reports = []
    writer = threading.Thread(target=lambda: reports.append(source.write_descriptors([_update(f) for f in faces])))
    writer.start()
    time.sleep(0.5)  # the write is now waiting for the row lock
    app.commit()
    writer.join(30)
    app.close()
    [report] = reports
    assert target.face_id in report.skipped_ids and report.written == len(faces) - 1
    # It was eligible when compared (the edit not yet committed): the reason is asked after the locked write.
    assert report.skip_reason_of == {target.face_id: "unverified"}
    row = gallery.conn.execute(
        "select verified, insightface_descriptor is null, training_used from photo_faces where id = %s", [target.face_id]
    ).fetchone()
    assert row == (False, True, False)


def test_a_missing_session_id_is_filled_in_by_the_next_write(gallery):
    _three_people(gallery)
    source = PostgresGallery(gallery.dsn)
    faces = source.read(FaceFilters()).faces
    source.write_descriptors([_update(f, session=None, seed=i) for i, f in enumerate(faces)])
    again = source.write_descriptors([_update(f, session="s9", seed=i) for i, f in enumerate(faces)])
    assert again.written == len(faces)
    ids = {r[0] for r in gallery.conn.execute("select training_context->>'training_session_id' from photo_faces where training_used")}
    assert ids == {"s9"}


def test_repairing_one_bad_config_value_is_possible_while_another_is_bad(gallery, tmp_path):
    from facepipeline.gallery.config import ConfigError, ConfigStore

    gallery.conn.execute("update face_recognition_config set value = '5' where key = 'context_weight'")
    source = PostgresGallery(gallery.dsn)
    store = ConfigStore(tmp_path, source.description, source)
    with pytest.raises(ConfigError, match="context_weight"):
        store.load()
    store.set("min_faces_per_person", "2")
    store.set("context_weight", "0.2")
    config, _ = store.load()
    assert (config.min_faces_per_person, config.context_weight) == (2, 0.2)


def test_the_descriptor_digest_is_the_one_postgres_computes_from_the_stored_vector(gallery):
    from facepipeline.gallery.postgres import descriptor_digest

    _three_people(gallery)
    source = PostgresGallery(gallery.dsn)
    updates = [_update(f, seed=i) for i, f in enumerate(source.read(FaceFilters()).faces)]
    source.write_descriptors(updates)
    stored = dict(gallery.conn.execute(
        "select id::text, md5(vector_send(insightface_descriptor)) from photo_faces where insightface_descriptor is not null"
    ).fetchall())
    assert stored == {u.face_id: descriptor_digest(u.descriptor) for u in updates}


def test_only_rows_whose_values_differ_are_sent_and_written(gallery):
    """After a first write-back, the gallery changes three rows (a descriptor cleared, training_used reset, the
    context edited) and one face gets a new vector: exactly those four rows are written, no other tuple changes."""
    _three_people(gallery)
    source = PostgresGallery(gallery.dsn)
    faces = source.read(FaceFilters()).faces
    updates = [_update(f, seed=i) for i, f in enumerate(faces)]
    source.write_descriptors(updates)
    gallery.conn.execute("update photo_faces set insightface_descriptor = null where id = %s", [faces[0].face_id])
    gallery.conn.execute("update photo_faces set training_used = false where id = %s", [faces[1].face_id])
    gallery.conn.execute(
        "update photo_faces set training_context = training_context || '{\"event_id\": null}' where id = %s", [faces[2].face_id]
    )
    updates[3] = _update(faces[3], seed=99)  # re-embedded: another vector
    before = gallery.rows()

    report = source.write_descriptors(updates)
    assert (report.written, report.unchanged, report.skipped, report.batches_committed) == (4, len(faces) - 4, 0, 1)
    after = gallery.rows()
    changed = {face_id for face_id in after if after[face_id] != before[face_id]}
    assert changed == {f.face_id for f in faces[:4]}
    stored = gallery.conn.execute(
        "select insightface_descriptor::text from photo_faces where id = %s", [faces[3].face_id]
    ).fetchone()[0]
    assert np.array_equal(np.array(eval(stored), dtype=np.float32), updates[3].descriptor)


def test_with_a_ledger_a_rerun_compares_no_row_and_a_row_edited_since_is_compared_again(gallery, tmp_path):
    """The ledger vouches for rows left as the last write-back found or wrote them (same update, same
    row version); a row the gallery touched since, or a face with a new update, is compared again."""
    from facepipeline.gallery.ledger import WriteBackLedger

    ids = _three_people(gallery)
    source = PostgresGallery(gallery.dsn)
    ledger = WriteBackLedger(tmp_path, source.description)
    faces = source.read(FaceFilters()).faces
    updates = [_update(f, seed=i) for i, f in enumerate(faces)]
    first = source.write_descriptors(updates, batch_size=3, ledger=ledger)
    assert (first.written, first.compared) == (8, 8) and set(ledger.load()) == {f.face_id for f in faces}

    before = gallery.rows()
    again = source.write_descriptors([_update(f, session="s2", seed=i) for i, f in enumerate(faces)], ledger=ledger)
    assert (again.written, again.unchanged, again.compared) == (0, 8, 0)
    assert gallery.rows() == before

    # The gallery clears one descriptor and relabels another face; a third face is re-embedded.
    gallery.conn.execute("update photo_faces set insightface_descriptor = null where id = %s", [faces[0].face_id])
    someone_else = ids["ada"] if faces[1].person_id != ids["ada"] else ids["bob"]
    gallery.conn.execute("update photo_faces set person_id = %s where id = %s", [someone_else, faces[1].face_id])
    updates[2] = _update(faces[2], seed=99)
    before = gallery.rows()
    third = source.write_descriptors(updates, ledger=ledger)
    assert (third.written, third.unchanged, third.skipped, third.compared) == (2, 5, 1, 3)
    assert third.skip_reason_of == {faces[1].face_id: "relabelled"}
    after = gallery.rows()
    assert {face_id for face_id in after if after[face_id] != before[face_id]} == {faces[0].face_id, faces[2].face_id}
    assert set(ledger.load()) == {f.face_id for f in faces} - {faces[1].face_id}  # a skipped row is not vouched for

    fourth = source.write_descriptors(updates, ledger=ledger)
    assert (fourth.written, fourth.unchanged, fourth.skipped, fourth.compared) == (0, 7, 1, 1)


def test_a_ledger_of_another_gallery_or_one_that_cannot_be_read_vouches_for_nothing(gallery, tmp_path):
    from facepipeline.gallery.ledger import WriteBackLedger

    _three_people(gallery)
    source = PostgresGallery(gallery.dsn)
    updates = [_update(f, seed=i) for i, f in enumerate(source.read(FaceFilters()).faces)]
    source.write_descriptors(updates, ledger=WriteBackLedger(tmp_path, "postgres://someone@elsewhere:5432/gallery"))
    assert WriteBackLedger(tmp_path, source.description).load() == {}
    report = source.write_descriptors(updates, ledger=WriteBackLedger(tmp_path, source.description))
    assert (report.unchanged, report.compared) == (8, 8)  # compared, found up to date, and now vouched for

    (tmp_path / "writeback_ledger.parquet").write_bytes(b"not a table")
    ledger = WriteBackLedger(tmp_path, source.description)
    assert ledger.load() == {}
    report = source.write_descriptors(updates, ledger=ledger)
    assert (report.unchanged, report.compared) == (8, 8) and len(ledger.load()) == 8


def test_an_update_digest_changes_with_everything_compared_but_the_session_id_itself():
    from facepipeline.gallery.ledger import update_digest

    face = type("Face", (), {"face_id": "f1", "person_id": "p1", "bbox": BBox(68, 68, 115, 115), "event_id": "e1"})
    base = _update(face, session="s1")
    assert update_digest(base) == update_digest(_update(face, session="s2"))  # a later session, the same row
    variants = [
        _update(face, session=None),  # no session: a row without one gets it written
        replace(base, person_id="p2"),
        replace(base, bbox=BBox(68, 68, 115, 116)),
        replace(base, descriptor=np.roll(base.descriptor, 1)),
        replace(base, confidence=0.88),
        replace(base, detected_bbox=BBox(70.5, 66.25, 110, 119)),
        replace(base, context={**base.context, "co_occurring_people": ["p3"]}),
    ]
    assert len({update_digest(base), *(update_digest(v) for v in variants)}) == len(variants) + 1
