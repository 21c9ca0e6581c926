"""End to end with a real Dagster daemon: new verified faces in the gallery become a promoted index
version, with no one launching a run.

A real ``dagster dev`` (webserver, daemon, code server) runs on the CLI's instance with the sensors
ticking every 5 s, against a real PostgreSQL + pgvector gallery whose photos are served over real
HTTP. The test only writes rows into the gallery, as the gallery app does when people confirm faces.
"""

from __future__ import annotations

import json
import os
import time

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from facepipeline.index import IndexStore
from tests.conftest import MODEL_ROOT, PACK
from tests.dagster_dev import running_dagster_dev
from tests.test_automation import gallery  # noqa: F401 (the fixture: a seeded gallery, v1 promoted)

WAIT_S = 300


def test_new_verified_faces_become_a_promoted_index_version_through_the_daemon(gallery):  # noqa: F811
    g = gallery
    g.set_config("auto_retrain_percentage", 0)  # the threshold rule alone: 25 new faces
    store = IndexStore(g.home / "index")
    assert store.promoted().name == "v1"
    trained = store.promoted().manifest["faces"]
    env = {
        "DAGSTER_HOME": str((g.home / "dagster").resolve()),
        "FACEPIPELINE_HOME": str(g.home.resolve()),
        "FACEPIPELINE_SOURCE": "postgres",
        "SUPABASE_DB_URL": g.dsn,
        "FACEPIPELINE_MODEL_ROOT": str(MODEL_ROOT),
        "FACEPIPELINE_MODEL": PACK,
        "FACEPIPELINE_SENSOR_INTERVAL_S": "5",
        "FACEPIPELINE_PHOTO_HOSTS": os.environ["FACEPIPELINE_PHOTO_HOSTS"],  # the gallery fixture's photo server
    }
    with running_dagster_dev(env) as dev:
        added = g.add_verified_faces(5)  # 6 people x 5 = 30 faces, confirmed in the gallery
        assert len(added) >= 25
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            promoted = store.promoted()
            if promoted is not None and promoted.name != "v1":
                break
            time.sleep(3)
        else:
            raise AssertionError(f"no new promoted version after {WAIT_S} s; dagster dev log:\n{dev.log_tail(120)}")

        with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            [run] = instance.get_runs(RunsFilter(job_name="retrain", tags={"dagster/sensor_name": "auto_retrain"}))
            deadline = time.monotonic() + 60  # the training session is the run's last step
            while instance.get_run_by_id(run.run_id).status != DagsterRunStatus.SUCCESS and time.monotonic() < deadline:
                time.sleep(1)
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.SUCCESS, dev.log_tail(120)
            assert run.tags["facepipeline/new_faces_count"] == str(len(added))
            checks = {
                entry.asset_check_evaluation.check_name: entry.asset_check_evaluation.passed
                for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
            }
            assert checks == {"dataset_valid": True, "embeddings_sane": True, "index_consistent": True, "no_regression": True}

    assert promoted.manifest["run_id"] == run.run_id and promoted.manifest["faces"] == trained + len(added)
    [(status, mode, faces, metrics)] = g.sql(
        "select status, training_mode, faces_count, metrics from face_training_sessions where id = %s",
        [promoted.manifest["training_session_id"]],
    )
    assert (status, mode, faces) == ("completed", "incremental", trained + len(added))
    assert metrics["promoted_version"] == promoted.name and metrics["run_id"] == run.run_id
    assert g.sql("select count(*) from photo_faces where id = any(%s::uuid[]) and training_used", [added]) == [(len(added),)]
    assert json.loads(g.cli("versions", "--json").stdout)["promoted"] == promoted.name
