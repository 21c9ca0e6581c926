"""Automation on a real gallery: the auto-retrain sensor, the quality gates, promotion and rollback,
and the sensors that close the sessions of retrains that end badly.

One real PostgreSQL + pgvector gallery per test (6 LFW people x 8 verified photos, served over real
HTTP on 127.0.0.1), real retrains through the console script on the persistent instance the CLI
uses, and the real sensors evaluated against that instance with ``build_sensor_context``.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRequest,
    SkipReason,
    build_sensor_context,
)

from tests.conftest import allow_photo_hosts, copy_people, fresh_gallery_database, people_with_most_photos
from tests.test_cli import facepipeline

PEOPLE = people_with_most_photos(6, skip=30)
TRAINED = 8
LFW_BOX = {"x": 68, "y": 68, "width": 115, "height": 115}


@dataclass
class Gallery:
    dsn: str
    root: Path
    home: Path
    url_for: object

    @property
    def source(self) -> str:
        return f"postgres:{self.dsn}"

    def cli(self, *args: str):
        return facepipeline(*args, home=self.home, cwd=self.root)

    def retrain(self) -> tuple[int, dict]:
        done = self.cli("retrain", "--source", self.source, "--json")
        return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {"stderr": done.stderr}

    def sql(self, query: str, params=()) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def set_config(self, key: str, value) -> None:
        self.sql("update face_recognition_config set value = %s where key = %s", [json.dumps(value), key])

    def add_verified_faces(self, per_person: int, *, start: int = 0) -> list[str]:
        """Held-out photos of the seeded people, each a new photo with a verified face (as the app writes them)."""
        people = dict(self.sql("select real_name, id::text from people"))
        added = []
        for person in PEOPLE:
            for photo in sorted(person.glob("*.jpg"))[TRAINED + start : TRAINED + start + per_person]:
                target = self.root / "new" / photo.name
                target.parent.mkdir(exist_ok=True)
                shutil.copy(photo, target)
                [(photo_id,)] = self.sql(
                    "insert into photos (storage_path, url, width, height) values (%s, %s, 250, 250) returning id::text",
                    [f"new/{photo.name}", self.url_for(f"new/{photo.name}")],
                )
                [(face_id,)] = self.sql(
                    "insert into photo_faces (photo_id, person_id, bbox, verified) values (%s, %s, %s, true) returning id::text",
                    [photo_id, people[person.name.replace("_", " ")], json.dumps(LFW_BOX)],
                )
                added.append(face_id)
        return added


@pytest.fixture()
def gallery(tmp_path, postgres_server, monkeypatch):
    from facepipeline.gallery import photo_server
    from facepipeline.gallery.seed import seed_from_folder

    root = tmp_path / "gallery"
    copy_people(root / "known", PEOPLE, TRAINED)
    with fresh_gallery_database(postgres_server) as dsn, photo_server.serve(root) as server:
        allow_photo_hosts(monkeypatch, server.base_url)  # the photo policy refuses 127.0.0.1 unless it is listed
        seed_from_folder(dsn, root / "known", lambda rel: server.url_for(f"known/{rel}"), unverified_share=0.0)
        g = Gallery(dsn, root, tmp_path / "home", server.url_for)
        code, first = g.retrain()
        assert code == 0, first
        assert first["promoted_index"] == "v1"
        yield g


def definitions_for(g: Gallery):
    from dataclasses import replace

    from definitions import build_definitions
    from facepipeline.settings import Settings
    from tests.conftest import MODEL_ROOT, PACK

    settings = replace(Settings.from_env({}), home=g.home.resolve(), model_root=MODEL_ROOT, model_pack=PACK, source="postgres")
    return build_definitions(settings)


@pytest.fixture()
def instance(gallery):
    with DagsterInstance.from_config(str(gallery.home / "dagster")) as instance:
        yield instance


def tick(g: Gallery, instance: DagsterInstance, cursor: str | None = None):
    """One evaluation of the real auto_retrain sensor: (run request or skip reason, new cursor)."""
    defs = definitions_for(g)
    sensor = defs.resolve_sensor_def("auto_retrain")
    with build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources, definitions=defs) as context:
        result = sensor.evaluate_tick(context)
    if result.run_requests:
        [request] = result.run_requests
        return request, result.cursor
    return SkipReason(result.skip_message), result.cursor or cursor


@pytest.fixture(autouse=True)
def database_url(gallery, monkeypatch):
    monkeypatch.setenv("SUPABASE_DB_URL", gallery.dsn)  # the source resource's EnvVar, as in a deployment


def test_the_sensor_requests_one_retrain_when_enough_new_faces_arrive_with_the_thresholds_of_the_moment(gallery, instance):
    g = gallery
    nothing, cursor = tick(g, instance)
    assert isinstance(nothing, SkipReason) and "no new verified faces (48 trained on)" in nothing.skip_message

    g.set_config("auto_retrain_threshold", 25)
    g.set_config("auto_retrain_percentage", 0)  # the share rule off: 25 it is
    added = g.add_verified_faces(1)  # 6 new faces
    few, cursor = tick(g, instance, cursor)
    assert isinstance(few, SkipReason)
    assert "6 new verified faces, fewer than auto_retrain_threshold 25" in few.skip_message

    g.set_config("auto_retrain_threshold", 6)  # read again on the next tick
    request, cursor = tick(g, instance, cursor)
    assert isinstance(request, RunRequest), request
    assert request.tags["facepipeline/new_faces_count"] == "6" and request.tags["facepipeline/trigger"] == "auto_retrain"
    assert request.run_config["resources"]["retrain_options"]["config"]["mode"] == "incremental"
    assert request.run_key.startswith("new-faces-") and request.run_key.endswith("-1")

    again, _ = tick(g, instance, cursor)  # the same faces: never a second request
    assert isinstance(again, SkipReason) and "already requested for these 6 new faces" in again.skip_message

    # The percentage rule: 10 % of the 54 faces the next index is trained on = 6 (threshold 25 is more).
    code, second = g.retrain()
    assert code == 0 and second["promoted_index"] == "v2", second
    assert g.sql("select count(*) from photo_faces where id = any(%s::uuid[]) and training_used", [added]) == [(6,)]
    trained, cursor = tick(g, instance, cursor)
    assert isinstance(trained, SkipReason) and "no new verified faces (54 trained on)" in trained.skip_message
    g.set_config("auto_retrain_threshold", 25)
    g.set_config("auto_retrain_percentage", 0.1)
    g.add_verified_faces(1, start=1)
    due, cursor = tick(g, instance, cursor)
    assert isinstance(due, RunRequest) and due.tags["facepipeline/new_faces_count"] == "6"


def test_the_sensor_waits_for_a_retrain_under_way_retries_a_failed_one_and_releases_a_dead_clis_run(gallery, instance):
    from jobs.run_guard import PROCESS_TAG, this_process
    from sensors.auto_retrain import FACES_TAG

    g = gallery
    g.set_config("auto_retrain_threshold", 6)
    g.add_verified_faces(1)
    request, cursor = tick(g, instance)
    fingerprint = request.tags[FACES_TAG]

    alive = _add_run(instance, DagsterRunStatus.STARTED, {PROCESS_TAG: this_process()})
    waiting, _ = tick(g, instance, cursor)
    assert isinstance(waiting, SkipReason) and f"retrain run {alive.run_id[:8]} is started: waiting" in waiting.skip_message
    instance.report_run_failed(alive, "test over")

    dead = _add_run(instance, DagsterRunStatus.STARTED, {PROCESS_TAG: f"{this_process().split(':')[0]}:999999999:1"})
    _add_run(instance, DagsterRunStatus.FAILURE, {FACES_TAG: fingerprint})  # the requested retrain failed
    retry, cursor = tick(g, instance, cursor)
    assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE  # its process is gone: released
    assert isinstance(retry, RunRequest) and retry.run_key.endswith("-2") and retry.tags["facepipeline/attempt"] == "2"

    for _ in range(2):
        _add_run(instance, DagsterRunStatus.FAILURE, {FACES_TAG: fingerprint})
        retry, cursor = tick(g, instance, cursor)
    assert isinstance(retry, SkipReason) and "failed 3 times" in retry.skip_message


def _add_run(instance: DagsterInstance, status: DagsterRunStatus, tags: dict) -> DagsterRun:
    return instance.add_run(DagsterRun(job_name="retrain", run_id=str(uuid.uuid4()), status=status, tags=tags))


def test_a_worse_retrain_is_kept_but_not_promoted_and_a_person_can_promote_and_roll_back(gallery, instance):
    g = gallery
    # Someone confirms half of one person's faces as another person: the labels are now wrong.
    first, second = (p.name.replace("_", " ") for p in PEOPLE[:2])
    moved = g.sql(
        "update photo_faces set person_id = (select id from people where real_name = %s) where id in ("
        " select f.id from photo_faces f join people p on p.id = f.person_id where p.real_name = %s order by f.id limit 4)"
        " returning id",
        [second, first],
    )
    assert len(moved) == 4

    code, worse = g.retrain()
    assert code == 1, worse
    assert worse["error"].startswith("check no_regression failed: regression: rank1_accuracy"), worse["error"]
    assert worse["training_session"]["status"] == "failed"
    [(status, metrics)] = g.sql("select status, metrics from face_training_sessions where id = %s", [worse["training_session"]["id"]])
    assert status == "failed" and metrics["error"].startswith("check no_regression failed")

    listed = json.loads(g.cli("versions", "--json").stdout)
    assert listed["promoted"] == "v1"
    v2 = next(v for v in listed["versions"] if v["version"] == "v2")  # kept for inspection
    assert v2["checks"] == {"index_consistent": True, "no_regression": False} and not v2["promoted"]
    assert Path(v2["path"], "dataset.parquet").is_file() and v2["training_session_id"] == worse["training_session"]["id"]

    refused = g.cli("promote", "v2")
    assert refused.returncode == 2 and "its check no_regression failed" in refused.stderr and "--force" in refused.stderr
    forced = g.cli("promote", "v2", "--force", "--reason", "checking by hand", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["promoted"] == "v2"
    back = g.cli("rollback", "--reason", "v2 mislabels people", "--json")
    assert back.returncode == 0, back.stderr
    assert (json.loads(back.stdout)["promoted"], json.loads(back.stdout)["previous"]) == ("v1", "v2")
    nothing = g.cli("rollback")
    assert nothing.returncode == 1 and "nothing to roll back to" in nothing.stderr

    # Every switch is in the instance's event log, with who and why.
    events = instance.fetch_materializations(AssetKey("promoted_index"), limit=10).records
    switches = [(e.asset_materialization.metadata["action"].value, e.asset_materialization.metadata["promoted_version"].value,
                 e.asset_materialization.metadata["reason"].value) for e in reversed(events)]
    assert switches[-2:] == [("promote", "v2", "checking by hand"), ("rollback", "v1", "v2 mislabels people")]
    assert all(e.asset_materialization.metadata["by"].value for e in events)
    assert [p["action"] for p in json.loads(g.cli("versions", "--json").stdout)["promotions"]] == ["promote", "promote", "rollback"]


def test_failed_and_canceled_runs_close_their_sessions_even_outside_asset_code(gallery, instance):
    from facepipeline.gallery.postgres import PostgresGallery
    from facepipeline.sessions import SessionHistory, TrainingSessions

    g = gallery
    defs = definitions_for(g)
    sessions = TrainingSessions(SessionHistory(g.home / "history"), PostgresGallery(g.dsn), "test")
    closed = {}
    for sensor_name, end in (("retrain_run_failed", instance.report_run_failed), ("retrain_run_canceled", instance.report_run_canceled)):
        sensor = defs.resolve_sensor_def(sensor_name)
        with build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as context:
            first = sensor.evaluate_tick(context)  # the first tick only notes where the event log is
        run = _add_run(instance, DagsterRunStatus.STARTED, {})
        session = sessions.start(run.run_id, {"training_mode": "incremental"})
        end(run, "the run worker was lost")
        with build_sensor_context(instance=instance, cursor=first.cursor, resources=defs.resources, definitions=defs) as later:
            sensor.evaluate_tick(later)
        [(status, metrics)] = g.sql("select status, metrics from face_training_sessions where id = %s", [session.id])
        closed[sensor_name] = (status, metrics)
        assert SessionHistory(g.home / "history").for_run(run.run_id).status == "failed"
    assert closed["retrain_run_failed"][0] == "failed" and "the run worker was lost" in closed["retrain_run_failed"][1]["error"]
    assert closed["retrain_run_canceled"] == ("failed", closed["retrain_run_canceled"][1])
    assert closed["retrain_run_canceled"][1]["run_status"] == "CANCELED"


def test_the_cli_refuses_a_second_retrain_beside_one_in_progress(gallery, instance):
    from filelock import FileLock

    from jobs.run_guard import PROCESS_TAG, this_process

    g = gallery
    with FileLock(g.home / "retrain.lock"):
        busy = g.cli("retrain", "--source", g.source)
    assert busy.returncode == 1 and "another facepipeline retrain is running with this home" in busy.stderr

    running = _add_run(instance, DagsterRunStatus.STARTED, {PROCESS_TAG: this_process(), "facepipeline/trigger": "auto_retrain"})
    beside = g.cli("retrain", "--source", g.source)
    assert beside.returncode == 1 and f"retrain run {running.run_id} (auto_retrain) is started" in beside.stderr
    assert len(instance.get_run_records()) == 2  # the first retrain and the one we added: none started beside it
