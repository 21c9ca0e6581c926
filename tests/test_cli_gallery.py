"""The console script against a real gallery database: retrain, prepare, config, history, bad input."""

import json

import psycopg
from dagster import DagsterInstance, RunsFilter

from tests.test_cli import facepipeline

PASSWORD = "cli-s3cret-pw"


def _dsn_with_password(dsn: str) -> str:
    return dsn.replace("postgres@", f"postgres:{PASSWORD}@")


def test_retrain_from_postgres_dsn_writes_back_and_keeps_the_password_out_of_output_and_run_config(seeded_gallery, tmp_path):
    dsn, seeded = seeded_gallery
    home = tmp_path / "home"
    source = f"postgres:{_dsn_with_password(dsn)}"
    done = facepipeline("retrain", "--source", source, "--json", home=home, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["status"] == "success" and summary["source"].startswith("postgres://postgres@127.0.0.1:")
    assert summary["write_back"]["written"] == summary["faces_embedded"] > 0
    assert summary["training_session"]["status"] == "completed" and summary["training_session"]["synced_to_gallery"]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select count(*) from photo_faces where insightface_descriptor is not null").fetchone()[0] == summary["faces_embedded"]
        assert conn.execute("select status from face_training_sessions").fetchall() == [("completed",)]
    assert PASSWORD not in done.stdout + done.stderr
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        [run] = instance.get_runs(RunsFilter(job_name="retrain"))
        assert PASSWORD not in json.dumps(run.run_config) and dsn not in json.dumps(run.run_config)

    history = facepipeline("history", "--json", home=home, cwd=tmp_path)
    [session] = json.loads(history.stdout)["sessions"]
    assert session["id"] == summary["training_session"]["id"] and session["status"] == "completed"
    assert PASSWORD not in history.stdout


def test_prepare_shows_the_dataset_with_the_same_filters_and_opens_no_session(seeded_gallery, tmp_path):
    dsn, seeded = seeded_gallery
    done = facepipeline("prepare", "--source", f"postgres:{dsn}", "--min-faces-per-person", "8", "--json", home=tmp_path / "h", cwd=tmp_path)
    report = json.loads(done.stdout)
    with psycopg.connect(dsn) as conn:
        expected_people = conn.execute(
            "select count(*) from (select person_id from photo_faces where verified group by 1 having count(*) >= 8) t"
        ).fetchone()[0]
        assert conn.execute("select count(*) from face_training_sessions").fetchone()[0] == 0
    assert report["stats"]["people"] == expected_people and report["options"]["min_faces_per_person"] == 8
    assert report["faces_dropped_by_min_faces"] == seeded.verified - report["stats"]["faces"]
    assert done.returncode == (0 if expected_people >= 2 else 1)
    assert not (tmp_path / "h" / "history").exists()


def test_config_set_validates_writes_the_table_and_get_reads_it_back(seeded_gallery, tmp_path):
    dsn, _ = seeded_gallery
    args = {"home": tmp_path / "h", "cwd": tmp_path}
    bad = facepipeline("config", "set", "context_weight", "2", "--source", f"postgres:{dsn}", **args)
    assert bad.returncode == 2 and bad.stderr.strip() == "facepipeline: error: context_weight must be between 0 and 1, got 2"
    good = facepipeline("config", "set", "confidence_thresholds.low_data", "0.8", "--source", f"postgres:{dsn}", **args)
    assert good.returncode == 0, good.stderr
    with psycopg.connect(dsn) as conn:
        [(value,)] = conn.execute("select value from face_recognition_config where key = 'confidence_thresholds'").fetchall()
    assert value == {"low_data": 0.8, "medium_data": 0.65, "high_data": 0.55}
    shown = json.loads(facepipeline("config", "get", "--json", "--source", f"postgres:{dsn}", **args).stdout)
    assert shown["config"]["confidence_thresholds"]["low_data"] == 0.8


def test_bad_input_is_one_line_and_exit_status_2_with_no_run(tmp_path):
    for args, message in [
        (("retrain", "--event-id", "not-a-uuid"), "facepipeline: error: event_ids[0]: 'not-a-uuid' is not a UUID"),
        (("prepare", "--date-from", "2024-02-01", "--date-to", "2024-01-01"), "facepipeline: error: date_from: 2024-02-01 is after date_to 2024-01-01"),
        (("retrain", "--mode", "sometimes"), "facepipeline: error: mode: must be one of incremental, full, got 'sometimes'"),
        (("config", "set", "colour", "1", "--source", f"folder:{tmp_path}"), "facepipeline: error: unknown config key 'colour'"),
    ]:
        done = facepipeline(*args, home=tmp_path / "h", cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.strip().startswith(message), done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "h" / "dagster" / "history").exists() and not (tmp_path / "h" / "history").exists()


def test_an_unreachable_database_is_a_clear_error_naming_host_and_port(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = facepipeline("prepare", "--source", f"postgres:postgresql://u:{PASSWORD}@127.0.0.1:{port}/g", home=tmp_path / "h", cwd=tmp_path)
    assert done.returncode == 1 and f"127.0.0.1:{port}" in done.stderr and PASSWORD not in done.stderr
    assert "Traceback" not in done.stderr
