"""Using the model on a real gallery: recognize new event photos, calibrate, search, cluster unknowns.

One real PostgreSQL + pgvector gallery for the module, seeded with 10 verified photos of each of 8
known LFW people and 4 of each of 100 more (served over real HTTP on 127.0.0.1), one real retrain
through the console script, and the thresholds it calibrates for a 1 % false-accept rate (the
480 faces can show that rate; the 0.1 % default needs 3,000). Each test then adds an event of new photos: collages of 250 x 250 LFW photos that the
retrain never saw (held-out photos of known people, and people from ``distractors/`` nobody knows),
the Friends still and the dogs photo from ``group_photos/``. Truth comes from where each photo was
put on the collage; every suggestion is the real model's.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from PIL import Image

from tests.conftest import FACES, GROUP_PHOTOS, SHARED, allow_photo_hosts, copy_people, fresh_gallery_database
from tests.test_cli import facepipeline

DISTRACTORS = SHARED / "data" / "distractors"
KNOWN = ("Jennifer_Aniston", "Bill_Gates", "Fidel_Castro", "Halle_Berry", "Igor_Ivanov", "Jiang_Zemin", "John_Howard", "Andy_Roddick")
TRAINED_PHOTOS = 10
BACKGROUND_PEOPLE = 100  # people with exactly 4 photos: the low_data level, and strangers to try
TILE = 250


@dataclass
class Gallery:
    dsn: str
    root: Path
    url_for: object
    home: Path
    calibration: dict = field(default_factory=dict)
    retrain: dict = field(default_factory=dict)
    strangers: list[str] = field(default_factory=list)

    def cli(self, *args: str):
        return facepipeline(*args, home=self.home, cwd=self.root)

    @property
    def source(self) -> str:
        return f"postgres:{self.dsn}"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, postgres_server):
    from facepipeline.gallery import photo_server
    from facepipeline.gallery.seed import seed_from_folder

    root = tmp_path_factory.mktemp("recognition")
    known = copy_people(root / "known", [FACES / name for name in KNOWN], TRAINED_PHOTOS)
    background = sorted(p for p in FACES.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) == 4)[:BACKGROUND_PEOPLE]
    copy_people(known, background, 4)
    with fresh_gallery_database(postgres_server) as dsn, photo_server.serve(root) as server, pytest.MonkeyPatch.context() as mp:
        allow_photo_hosts(mp, server.base_url)  # the photo policy refuses 127.0.0.1 unless it is listed
        seed_from_folder(dsn, known, lambda rel: server.url_for(f"known/{rel}"), unverified_share=0.0)
        g = Gallery(dsn, root, server.url_for, root / "home")
        g.strangers = sorted(p.name for p in DISTRACTORS.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) == 3)
        trained = g.cli("retrain", "--source", g.source, "--json")
        assert trained.returncode == 0, trained.stderr[-3000:]
        g.retrain = json.loads(trained.stdout)
        assert g.retrain["promoted_index"] == "v1"
        calibrated = g.cli("config", "calibrate", "--source", g.source, "--far", "0.01", "--apply", "--json")
        assert calibrated.returncode == 0, calibrated.stderr[-3000:]
        g.calibration = json.loads(calibrated.stdout)
        yield g


# -- building events of new photos -------------------------------------------------------------------


@dataclass
class Photo:
    name: str
    data: bytes
    tiles: list[str | None] = field(default_factory=list)
    """Who is on each 250 x 250 tile, row by row (None: a photo without a labelled face)."""

    def truth_at(self, box: dict) -> str | None:
        """The person of the tile whose centre the box is on (LFW's labelled face is the central one;
        a face near a tile's edge is someone in the background, whom nobody labelled)."""
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        tile = int(cy // TILE) * 3 + int(cx // TILE)
        central = abs(cx % TILE - TILE / 2) < 50 and abs(cy % TILE - TILE / 2) < 50
        return self.tiles[tile] if central and 0 <= tile < len(self.tiles) else None


def held_out(person: str, number: int) -> Path:
    """A photo of a known person that the retrain did not see."""
    return sorted((FACES / person).glob("*.jpg"))[TRAINED_PHOTOS + number]


def stranger(name: str, number: int) -> Path:
    return sorted((DISTRACTORS / name).glob("*.jpg"))[number]


def collage(name: str, tiles: list[tuple[str, Path]]) -> Photo:
    """Photos side by side, three per row."""
    rows = (len(tiles) + 2) // 3
    canvas = Image.new("RGB", (3 * TILE, rows * TILE), (128, 128, 128))
    for i, (_, path) in enumerate(tiles):
        canvas.paste(Image.open(path).convert("RGB"), ((i % 3) * TILE, (i // 3) * TILE))
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=92)
    return Photo(name, out.getvalue(), [who for who, _ in tiles])


def add_event(g: Gallery, photos: list[Photo], *, missing: list[str] = ()) -> str:
    """A new event with these photos (and URLs that answer 404 for ``missing``)."""
    event_id = str(uuid.uuid4())
    folder = g.root / "new" / event_id
    folder.mkdir(parents=True)
    with psycopg.connect(g.dsn) as conn:
        conn.execute("insert into events (id, name, date) values (%s, %s, current_date)", [event_id, f"event {event_id[:8]}"])
        for photo in photos:
            (folder / photo.name).write_bytes(photo.data)
            conn.execute(
                "insert into photos (event_id, storage_path, url) values (%s, %s, %s)",
                [event_id, photo.name, g.url_for(f"new/{event_id}/{photo.name}")],
            )
        for name in missing:
            conn.execute("insert into photos (event_id, storage_path, url) values (%s, %s, %s)",
                         [event_id, name, g.url_for(f"new/{event_id}/{name}")])
    return event_id


def recognize(g: Gallery, event_id: str) -> dict:
    done = g.cli("recognize", "--source", g.source, "--event-id", event_id, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    [event] = summary["events"]
    return {**summary, **event}


def face_rows(g: Gallery, event_id: str) -> list[dict]:
    with psycopg.connect(g.dsn) as conn:
        cursor = conn.execute(
            """select f.id::text, p.storage_path, f.bbox, replace(pe.real_name, ' ', '_'), f.verified, f.xmin::text,
                      f.confidence, f.insightface_descriptor is not null, f.training_context
               from photo_faces f join photos p on p.id = f.photo_id left join people pe on pe.id = f.person_id
               where p.event_id = %s order by f.id""",
            [event_id],
        )
        names = ("id", "photo", "bbox", "person", "verified", "xmin", "confidence", "has_descriptor", "context")
        return [dict(zip(names, row, strict=True)) for row in cursor]


def person_id(g: Gallery, name: str) -> str:
    with psycopg.connect(g.dsn) as conn:
        return conn.execute("select id::text from people where real_name = %s", [name.replace("_", " ")]).fetchone()[0]


# -- the tests ---------------------------------------------------------------------------------------


def test_calibrate_recommends_thresholds_per_data_level_and_apply_writes_them(gallery):
    report = gallery.calibration
    assert report["index_version"] == "v1" and report["target_far"] == 0.01
    # Levels by faces in the index, as recognition sees them: 8 people with 10 (high), 100 with 4 (low).
    levels = report["per_level"]
    assert (levels["low_data"]["people"], levels["medium_data"]["people"], levels["high_data"]["people"]) == (100, 0, 8)
    # Nobody at medium_data: it gets the stricter of the measured ones, not the SPEC's 0.65.
    assert levels["medium_data"]["recommended"] is None
    assert report["recommended"]["medium_data"] == max(report["recommended"]["low_data"], report["recommended"]["high_data"])
    for level in ("low_data", "high_data"):
        assert 0.25 < levels[level]["recommended"] < 0.6  # ArcFace's scale, far below the SPEC's 0.75 / 0.65
        assert levels[level]["at_recommended"]["accept_rate"] >= 0.9 and levels[level]["at_recommended"]["far"] <= 0.005
    assert report["at_recommended"]["far"] <= 0.01
    # The SPEC's defaults reject many genuine matches of this model: said so, and fixed by --apply.
    assert report["configured"] == {"low_data": 0.75, "medium_data": 0.65, "high_data": 0.55}
    assert report["configured_rejects"] > 0.1 and "reject" in report["warning"]
    assert report["applied"] == report["recommended"]
    # The retrain said so too, and which rate its 480 faces can back (3/480 = 0.00625): its default 0.001 needs 3,000.
    assert "reject" in gallery.retrain["thresholds_warning"] and "--far 0.007" in gallery.retrain["thresholds_warning"]
    refused = gallery.cli("config", "calibrate", "--source", gallery.source, "--far", "0.001", "--apply")
    assert refused.returncode == 2 and "nothing to apply" in refused.stderr and "3000 are needed" in refused.stderr
    with psycopg.connect(gallery.dsn) as conn:
        [(stored,)] = conn.execute("select value from face_recognition_config where key = 'confidence_thresholds'")
    assert stored == report["recommended"]


def test_recognize_names_known_faces_keeps_strangers_unknown_and_a_rerun_writes_nothing(gallery):
    s = gallery.strangers
    photos = [
        collage("known_and_strangers_1.jpg", [
            ("Bill_Gates", held_out("Bill_Gates", 0)), (None, stranger(s[0], 0)), ("Fidel_Castro", held_out("Fidel_Castro", 0)),
            (None, stranger(s[1], 0)), ("Halle_Berry", held_out("Halle_Berry", 0)), (None, stranger(s[2], 0)),
        ]),
        collage("known_and_strangers_2.jpg", [
            (None, stranger(s[3], 0)), ("Igor_Ivanov", held_out("Igor_Ivanov", 0)), (None, stranger(s[4], 0)),
            ("Jiang_Zemin", held_out("Jiang_Zemin", 0)), (None, stranger(s[5], 0)), ("John_Howard", held_out("John_Howard", 0)),
        ]),
        Photo("friends.jpg", (GROUP_PHOTOS / "insightface_t1.jpg").read_bytes()),
        Photo("dogs.jpg", (GROUP_PHOTOS / "dlib_dogs.jpg").read_bytes()),
    ]
    event = add_event(gallery, photos, missing=["gone.jpg"])

    first = recognize(gallery, event)
    assert (first["photos"], first["photos_without_faces"], first["photos_failed"]) == (5, 1, 1)
    rows = face_rows(gallery, event)
    by_photo = {p.name: p for p in photos}
    collage_rows = [r for r in rows if r["photo"].startswith("known_and")]
    truth = [(by_photo[r["photo"]].truth_at(r["bbox"]), r["person"]) for r in collage_rows]
    assert sorted(t for t, _ in truth if t) == sorted(["Bill_Gates", "Fidel_Castro", "Halle_Berry", "Igor_Ivanov", "Jiang_Zemin", "John_Howard"])
    assert all(person == expected for expected, person in truth), truth  # known: named; strangers: no one
    # The Friends still: Jennifer Aniston is known; the five others are not (Matthew Perry is not in this gallery).
    friends = [r for r in rows if r["photo"] == "friends.jpg"]
    assert len(friends) == 6 and sorted(filter(None, (r["person"] for r in friends))) == ["Jennifer_Aniston"]
    assert not [r for r in rows if r["photo"] in ("dogs.jpg", "gone.jpg")]  # kept apart, not as rows
    assert all(not r["verified"] and r["has_descriptor"] for r in rows)
    assert all((r["confidence"] is not None) == (r["person"] is not None) for r in rows)
    assert first["suggested"] == 7 and first["unknown"] == len(rows) - 7 and first["rows_inserted"] == len(rows)

    again = recognize(gallery, event)
    assert (again["rows_inserted"], again["rows_updated"], again["rows_unchanged"]) == (0, 0, len(rows))
    assert face_rows(gallery, event) == rows  # same rows, same values, not even rewritten (xmin)

    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.from_config(str(gallery.home / "dagster")) as instance:
        record = instance.get_latest_materialization_event(AssetKey("face_suggestions"))
        metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    assert record.asset_materialization.partition == event
    assert "dogs.jpg" not in metadata["photos_without_faces_list"]  # photo ids, not names
    assert metadata["photos_without_faces"] == 1 and metadata["annotated_photos"].count("data:image/jpeg;base64,") == 3
    drawn = sorted((gallery.home / "annotated" / event).glob("*.jpg"))
    assert len(drawn) == 3 and all(Image.open(path).format == "JPEG" for path in drawn)


def test_a_person_is_suggested_at_most_once_per_photo(gallery):
    twice = collage("aniston_twice.jpg", [
        ("Jennifer_Aniston", held_out("Jennifer_Aniston", 1)), ("Jennifer_Aniston", held_out("Jennifer_Aniston", 2)),
        ("Andy_Roddick", held_out("Andy_Roddick", 1)),
    ])
    event = add_event(gallery, [twice])
    recognize(gallery, event)
    named = [r["person"] for r in face_rows(gallery, event) if r["person"]]
    assert named.count("Jennifer_Aniston") == 1 and "Andy_Roddick" in named


def test_rows_people_edited_or_verified_are_never_touched_and_our_own_rows_follow_the_config(gallery):
    s = gallery.strangers
    first = collage("edit_me.jpg", [
        ("Bill_Gates", held_out("Bill_Gates", 1)), ("Fidel_Castro", held_out("Fidel_Castro", 1)),
        ("Halle_Berry", held_out("Halle_Berry", 1)), (None, stranger(s[6], 0)),
    ])
    second = collage("verify_me.jpg", [("Igor_Ivanov", held_out("Igor_Ivanov", 1)), (None, stranger(s[7], 0))])
    event = add_event(gallery, [first, second])
    recognize(gallery, event)
    rows = {r["id"]: r for r in face_rows(gallery, event)}
    gates = next(r for r in rows.values() if r["person"] == "Bill_Gates")
    castro = next(r for r in rows.values() if r["person"] == "Fidel_Castro")
    berry = next(r for r in rows.values() if r["person"] == "Halle_Berry")
    ivanov = next(r for r in rows.values() if r["person"] == "Igor_Ivanov")
    stranger_row = next(r for r in rows.values() if r["photo"] == "edit_me.jpg" and r["person"] is None)
    with psycopg.connect(gallery.dsn) as conn:
        conn.execute("delete from photo_faces where id = %s", [stranger_row["id"]])  # "not a face I care about"
        conn.execute("update photo_faces set person_id = %s where id = %s", [person_id(gallery, "Jiang_Zemin"), gates["id"]])
        conn.execute("update photo_faces set bbox = bbox || '{\"x\": 3}'::jsonb where id = %s", [castro["id"]])
        conn.execute("update photo_faces set verified = true where id = %s", [ivanov["id"]])
    edited = {r["id"]: r for r in face_rows(gallery, event)}

    # Thresholds no similarity reaches: our own unedited rows lose their suggestion on the rerun.
    thresholds = json.dumps(gallery.calibration["recommended"])
    assert gallery.cli("config", "set", "--source", gallery.source, "confidence_thresholds",
                       json.dumps({"low_data": 1.0, "medium_data": 1.0, "high_data": 1.0})).returncode == 0
    try:
        rerun = recognize(gallery, event)
    finally:
        assert gallery.cli("config", "set", "--source", gallery.source, "confidence_thresholds", thresholds).returncode == 0
    after = {r["id"]: r for r in face_rows(gallery, event)}
    assert set(after) == set(rows) - {stranger_row["id"]}  # no second row for any face; the deleted one stays deleted
    for untouched in (gates["id"], castro["id"]):
        assert after[untouched] == edited[untouched]  # edited by a person: same values, not even rewritten
    assert all(after[i] == edited[i] for i, r in rows.items() if r["photo"] == "verify_me.jpg")  # has a verified face now
    assert after[berry["id"]]["person"] is None and after[berry["id"]]["xmin"] != berry["xmin"]
    assert rerun["photos"] == 1 and rerun["rows_updated"] == 1


def test_a_person_on_a_row_someone_else_wrote_is_not_suggested_again_on_that_photo(gallery):
    photo = collage("app_labelled.jpg", [("Bill_Gates", held_out("Bill_Gates", 3)), ("Fidel_Castro", held_out("Fidel_Castro", 3))])
    event = add_event(gallery, [photo])
    with psycopg.connect(gallery.dsn) as conn:
        # The gallery app's own (wrong) unverified row on the first face: it says Fidel Castro.
        conn.execute(
            "insert into photo_faces (photo_id, person_id, bbox, verified) select id, %s, %s, false from photos where event_id = %s",
            [person_id(gallery, "Fidel_Castro"), json.dumps({"x": 68, "y": 68, "width": 115, "height": 115}), event],
        )
    result = recognize(gallery, event)
    rows = face_rows(gallery, event)
    assert [r["person"] for r in rows].count("Fidel_Castro") == 1  # the app's row; not suggested a second time
    assert len(rows) == 2 and result["kept_existing"] == 1 and result["rows_inserted"] == 1
    castro_face = next(r for r in rows if photo.truth_at(r["bbox"]) == "Fidel_Castro")
    assert castro_face["person"] is None and castro_face["context"]["best_similarity"] >= gallery.calibration["recommended"]["high_data"]


def test_search_finds_a_persons_faces_from_one_sample_and_within_one_event(gallery, tmp_path):
    sample = held_out("Bill_Gates", 2)
    done = gallery.cli("search", str(sample), "-k", "5", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    [face] = json.loads(done.stdout)["faces"]
    assert [m["person_name"] for m in face["matches"]] == ["Bill Gates"] * 5
    assert all(m["photo"].startswith("http://127.0.0.1:") and m["bbox"]["width"] > 50 for m in face["matches"])
    assert face["matches"][0]["similarity"] > 0.4

    event = face["matches"][0]["event_id"]
    within = json.loads(gallery.cli("search", str(sample), "--event", event, "-k", "1000", "--json").stdout)
    [face] = within["faces"]
    assert face["matches"] and {m["event_id"] for m in face["matches"]} == {event}
    with psycopg.connect(gallery.dsn) as conn:
        in_event = conn.execute(
            "select count(*) from photo_faces f join photos p on p.id = f.photo_id where p.event_id = %s and f.verified", [event]
        ).fetchone()[0]
    assert in_event - 2 <= len(face["matches"]) <= in_event  # every indexed face of the event (a few may have failed)
    similarities = [m["similarity"] for m in face["matches"]]
    assert similarities == sorted(similarities, reverse=True) and face["matches"][0]["person_name"] == "Bill Gates"

    bad = gallery.cli("search", str(sample), "--event", "not-a-uuid")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "UUID" in bad.stderr
    missing = gallery.cli("search", str(tmp_path / "nope.jpg"))
    assert missing.returncode == 2 and "no such photo" in missing.stderr


def test_unknown_faces_cluster_by_identity_never_two_from_one_photo_and_rejected_clusters_stay_out(gallery):
    people = gallery.strangers[20:28]  # 8 people nobody knows, 3 photos each, never two on one collage
    tiles = [(person, stranger(person, number)) for number in range(3) for person in people]
    photos = [collage(f"strangers_{i}.jpg", tiles[i * 6 : (i + 1) * 6]) for i in range(4)]
    event = add_event(gallery, photos)
    assert recognize(gallery, event)["suggested"] == 0
    truth = {r["id"]: {p.name: p for p in photos}[r["photo"]].truth_at(r["bbox"]) for r in face_rows(gallery, event)}
    assert sorted(t for t in truth.values() if t) == sorted(p for p, _ in tiles)

    done = gallery.cli("clusters", "--source", gallery.source, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    cluster_of = {face: c["cluster_id"] for c in report["clusters"] for face in c["face_ids"]}
    from facepipeline.clustering import pairwise_scores

    faces = [face for face, who in truth.items() if who]
    precision, recall, f1 = pairwise_scores([truth[f] for f in faces], [cluster_of.get(f) for f in faces])
    assert f1 >= 0.9, (precision, recall, f1)
    photo_of = {r["id"]: r["photo"] for r in face_rows(gallery, event)}
    for cluster in report["clusters"]:
        on_photos = [photo_of[f] for f in cluster["face_ids"] if f in photo_of]
        assert len(on_photos) == len(set(on_photos))  # a person is on a photo once

    rejected = cluster_of[next(f for f in faces if truth[f] == people[0])]
    members = next(c["face_ids"] for c in report["clusters"] if c["cluster_id"] == rejected)
    assert gallery.cli("clusters", "reject", rejected, "--reason", "not one person").returncode == 0
    again = json.loads(gallery.cli("clusters", "--source", gallery.source, "--json").stdout)
    assert again["version"] != report["version"]
    assert not set(members) & {f for c in again["clusters"] for f in c["face_ids"]}
    assert again["excluded"] >= len(members)
    unknown = gallery.cli("clusters", "reject", "c-no-such")
    assert unknown.returncode == 1 and "c-no-such" in unknown.stderr


def test_the_event_sensor_adds_partitions_and_requests_each_new_set_of_photos_once(gallery, tmp_path, monkeypatch):
    from dataclasses import replace

    from dagster import DagsterInstance, SkipReason, build_sensor_context

    from definitions import build_definitions
    from facepipeline.settings import Settings
    from tests.conftest import MODEL_ROOT, PACK

    monkeypatch.setenv("SUPABASE_DB_URL", gallery.dsn)
    settings = replace(Settings.from_env({"FACEPIPELINE_HOME": str(gallery.home)}), source="postgres", model_root=MODEL_ROOT, model_pack=PACK)
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("new_event_photos")
    resources = {name: defs.resources[name] for name in ("face_source", "artifacts")}
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster"), overrides={"telemetry": {"enabled": False}}) as instance:
        def tick(cursor):
            """One evaluation; what the daemon would do with its result: add partitions, keep the cursor."""
            with build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs) as context:
                result = sensor(context)
            if isinstance(result, SkipReason):
                return [], cursor, result.skip_message
            for request in result.dynamic_partitions_requests:
                instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
            return result.run_requests, result.cursor, None

        add_event(gallery, [collage("early.jpg", [("Andy_Roddick", held_out("Andy_Roddick", 3))])])
        first, cursor, _ = tick(None)
        with psycopg.connect(gallery.dsn) as conn:
            pending = {r[0] for r in conn.execute(
                "select distinct p.event_id::text from photos p where not exists "
                "(select 1 from photo_faces v where v.photo_id = p.id and v.verified)")}
        assert {r.partition_key for r in first} == pending and pending
        assert set(instance.get_dynamic_partitions("events")) == pending
        assert len({r.run_key for r in first}) == len(pending)

        second, cursor, skipped = tick(cursor)
        assert not second and "none new" in skipped

        event = add_event(gallery, [collage("late.jpg", [("Andy_Roddick", held_out("Andy_Roddick", 2))])])
        third, cursor, _ = tick(cursor)
        assert [r.partition_key for r in third] == [event]
        assert set(instance.get_dynamic_partitions("events")) == pending | {event}

        # A photo committed late, stamped before the event's newest one: still new photos.
        with psycopg.connect(gallery.dsn) as conn:
            conn.execute("insert into photos (event_id, storage_path, url, created_at) values (%s, 'old.jpg', %s, now() - interval '1 day')",
                         [event, gallery.url_for(f"new/{event}/late.jpg")])
        fourth, cursor, _ = tick(cursor)
        assert [r.partition_key for r in fourth] == [event] and fourth[0].run_key != third[0].run_key
        # The SQL's md5 is the one the REST transport computes in Python, over the same photo ids.
        from facepipeline.gallery.base import photos_fingerprint
        from facepipeline.gallery.postgres import PostgresGallery

        with psycopg.connect(gallery.dsn) as conn:
            ids = [r[0] for r in conn.execute("select id::text from photos where event_id = %s", [event])]
        [pending] = [e for e in PostgresGallery(gallery.dsn).pending_events() if e.event_id == event]
        assert (pending.photos, pending.photos_fingerprint) == (2, photos_fingerprint(ids))

        # A run of that request failed (the gallery was unreachable): requested again, up to 3 attempts.
        def failed_run():
            with monkeypatch.context() as unreachable:
                unreachable.setenv("SUPABASE_DB_URL", "postgresql://postgres@127.0.0.1:1/gallery")
                job = build_definitions(settings).resolve_job_def("recognize")
                assert not job.execute_in_process(partition_key=event, instance=instance, raise_on_error=False).success

        for attempt in (2, 3):
            failed_run()
            retried, cursor, _ = tick(cursor)
            assert [(r.partition_key, r.tags["facepipeline/attempt"]) for r in retried] == [(event, str(attempt))]
        failed_run()
        given_up, cursor, skipped = tick(cursor)
        assert not given_up and "failed 3 times" in skipped


def test_recognize_without_a_promoted_index_or_with_a_bad_event_id_is_one_clear_line(gallery, tmp_path):
    empty_home = facepipeline("recognize", "--source", gallery.source, home=tmp_path / "home", cwd=tmp_path)
    assert empty_home.returncode == 1 and "no promoted index version" in empty_home.stderr
    assert empty_home.stderr.strip().count("\n") == 0
    bad = gallery.cli("recognize", "--source", gallery.source, "--event", "42")
    assert bad.returncode == 2 and "expected an event's UUID or 'none', got '42'" in bad.stderr and "Traceback" not in bad.stderr


def test_thresholds_out_of_range_in_the_config_table_stop_recognition_with_the_key_named(gallery):
    event = add_event(gallery, [collage("bad_config.jpg", [("Bill_Gates", held_out("Bill_Gates", 4))])])
    with psycopg.connect(gallery.dsn, autocommit=True) as conn:
        [(good,)] = conn.execute("select value from face_recognition_config where key = 'confidence_thresholds'")
        conn.execute("update face_recognition_config set value = %s where key = 'confidence_thresholds'",
                     [json.dumps({**good, "low_data": 1.5})])
        try:
            done = gallery.cli("recognize", "--source", gallery.source, "--event-id", event, "--json")
        finally:
            conn.execute("update face_recognition_config set value = %s where key = 'confidence_thresholds'", [json.dumps(good)])
    assert done.returncode == 1
    [failed] = json.loads(done.stdout)["events"]
    assert "confidence_thresholds.low_data must be between 0 and 1, got 1.5" in failed["error"]
    assert face_rows(gallery, event) == []  # nothing written
