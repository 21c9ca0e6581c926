"""The `facepipeline` console script, run as a user runs it: a subprocess, a persistent instance."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from tests.conftest import MODEL_ROOT, PACK, REPO, copy_people, environment_without_settings, people_with_most_photos

SCRIPT = Path(sys.executable).with_name("facepipeline")


def facepipeline(*args: str, home: Path, cwd: Path, model_from_env: bool = True) -> subprocess.CompletedProcess:
    # FACEPIPELINE_PHOTO_HOSTS passes: a test allows its own photo server on 127.0.0.1 with it.
    env = environment_without_settings("FACEPIPELINE_PHOTO_HOSTS", FACEPIPELINE_HOME=str(home))
    if model_from_env:
        env.update(FACEPIPELINE_MODEL_ROOT=str(MODEL_ROOT), FACEPIPELINE_MODEL=PACK)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def unseen_people(tmp_path_factory) -> Path:
    """25 people the other tests do not use, up to 8 photos each."""
    return copy_people(tmp_path_factory.mktemp("unseen") / "faces", people_with_most_photos(25, skip=10), 8)


def test_retrain_json_reports_the_run_and_the_run_is_on_the_persistent_instance(tmp_path, unseen_people):
    home = tmp_path / "home"
    done = facepipeline("retrain", "--source", f"folder:{unseen_people}", "--json", home=home, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # stdout holds the JSON object and nothing else
    assert summary["status"] == "success"
    assert summary["faces_total"] == 200 and summary["faces_embedded"] == summary["faces_total"] - summary["faces_failed"]
    assert summary["faces_failed"] <= 2 and summary["people"] == 25
    assert summary["index_version"] == "v1" and Path(summary["index_path"]).is_dir()
    metrics = summary["metrics"]
    assert metrics["rank1_accuracy"] >= 0.99, metrics
    assert 0.0 < metrics["recommended_threshold"] < 1.0 and metrics["precision"] >= 0.99 and metrics["recall"] > 0.9
    assert "embedded" in done.stderr and "faces/s" in done.stderr  # progress on stderr

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        [run] = instance.get_runs(RunsFilter(job_name="retrain"))
        assert run.run_id == summary["run_id"] and run.status == DagsterRunStatus.SUCCESS
        assert instance.get_latest_materialization_event(_key("face_index")).run_id == run.run_id

    again = facepipeline("retrain", "--source", f"folder:{unseen_people}", "--json", home=home, cwd=tmp_path)
    second = json.loads(again.stdout)
    assert (second["faces_embedded"], second["photos_fetched"], second["index_version"]) == (0, 0, "v2")


def _key(name: str):
    from dagster import AssetKey

    return AssetKey(name)


def test_errors_are_one_clear_line_and_a_non_zero_exit(tmp_path):
    missing = facepipeline("retrain", "--source", f"folder:{tmp_path / 'nope'}", home=tmp_path / "home", cwd=tmp_path)
    # Refused before a run starts (tests/test_cli_errors.py has the whole matrix): bad input, status 2.
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr == f"facepipeline: error: --source 'folder:{tmp_path / 'nope'}': folder not found: {tmp_path / 'nope'}\n"
    assert not (tmp_path / "home" / "dagster" / "history").exists()  # no run in the instance

    bad_kind = facepipeline("retrain", "--source", "s3:bucket", "--json", home=tmp_path / "home", cwd=tmp_path)
    assert bad_kind.returncode == 2 and bad_kind.stdout == "" and "unknown source 's3:bucket'" in bad_kind.stderr

    for args, message in (
        (["retrain", "--mode", "sometimes"], "mode: must be one of incremental, full"),
        (["retrain", "--min-faces-per-person", "0"], "must be at least 1"),
        (["retrain", "--target-far", "2"], "target_far: must be strictly between 0 and 1"),
        (["retrain", "--no-such-flag"], "unrecognized arguments"),
    ):
        done = facepipeline(*args, home=tmp_path / "home", cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_run_from_another_folder_it_uses_the_checkouts_env_defaults(tmp_path):
    faces = copy_people(tmp_path / "faces", people_with_most_photos(3, skip=40), 4)
    (tmp_path / "facepipeline.env").write_text("SOMETHING_ELSE=1\nDAGSTER_HOME=\n")  # an unrelated file here hides nothing
    done = facepipeline("retrain", "--source", f"folder:{faces}", home=tmp_path / "home", cwd=tmp_path, model_from_env=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "embeddings:" in done.stdout and f"{tmp_path / 'home'}" in done.stdout
    manifest = json.loads((tmp_path / "home" / "index" / "v1" / "manifest.json").read_text())
    assert manifest["model"]["model_pack"] == PACK


def test_the_checkouts_env_file_points_at_the_shared_test_pack():
    env = dict(line.split("=", 1) for line in (REPO / "facepipeline.env").read_text().splitlines() if line and not line.startswith("#"))
    assert env["FACEPIPELINE_MODEL"] == PACK
    assert (REPO / env["FACEPIPELINE_MODEL_ROOT"]).resolve() == MODEL_ROOT
