"""Pruning a home (facepipeline.retention, the prune_home job, `facepipeline prune`): what goes, what
stays, and that the pipeline goes on as before afterwards. Real index versions (hnswlib), a real
Dagster instance, real retrains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, materialize

from assets import retrain_assets, retrain_checks
from definitions import build_definitions
from facepipeline.clustering import Clustering, ClusterStore
from facepipeline.errors import FacePipelineError
from facepipeline.index import FaceIndex, IndexStore
from facepipeline.retention import (
    CLUSTERING_VERSION,
    DATASET_SNAPSHOT,
    INDEX_VERSION,
    RUN_OUTPUTS,
    apply_prune,
    plan_prune,
)
from facepipeline.tables import TableStore
from tests.conftest import copy_people, environment_without_settings, people_with_most_photos

SCRIPT = Path(sys.executable).with_name("facepipeline")


def small_index(seed: int) -> FaceIndex:
    vectors = np.random.default_rng(seed).standard_normal((6, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    entries = pa.table({"face_id": [f"f{i}" for i in range(6)], "person_id": [f"p{i % 2}" for i in range(6)],
                        "person_name": [f"P{i % 2}" for i in range(6)]})
    return FaceIndex.build(vectors, entries)


def touch(path: Path, age_s: float) -> None:
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


@pytest.fixture()
def home(tmp_path: Path) -> dict:
    """Six index versions (v1, v2, v4 promoted in turn, v4 the current one), three clusterings, five
    runs' outputs (one of a run still under way, the oldest), dataset snapshots of v1..v6 and beside
    them folders that are not a run's."""
    index, clusters = IndexStore(tmp_path / "index"), ClusterStore(tmp_path / "clusters")
    snapshots = TableStore(tmp_path / "datasets")
    for number in range(1, 7):
        fingerprint = f"{number:016x}"
        snapshots.write(fingerprint, pa.table({"face_id": [f"f{number}"]}))
        touch(snapshots.path(fingerprint), 600 - number * 60)
        index.publish(small_index(number), {"dataset_fingerprint": fingerprint})
    for number in (1, 2, 4):
        index.promote(number, reason="test", by="t")
    for _ in range(3):
        clusters.publish(Clustering([], [], []), [], {})
    outputs = tmp_path / "outputs"
    runs = [str(uuid.uuid4()) for _ in range(5)]
    for age, run_id in zip((500, 400, 300, 200, 100), runs, strict=True):
        (outputs / run_id / "step" / "result").mkdir(parents=True)
        (outputs / run_id / "step" / "result" / "x").write_bytes(b"0" * 1000)
        touch(outputs / run_id, age)
    for name in ("face_descriptors", "not-a-run"):
        (outputs / name).mkdir()
        touch(outputs / name, 10_000)
    return {"index": index, "clusters": clusters, "snapshots": snapshots, "outputs": outputs, "runs": runs}


def plan(home: dict, keep: int, under_way=()):
    return plan_prune(index=home["index"], clusters=home["clusters"], snapshots=home["snapshots"], outputs=home["outputs"],
                      keep=keep, runs_under_way=under_way)


def removed(plan_, kind: str) -> list[str]:
    return sorted(r.name for r in plan_.removals if r.kind == kind)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_the_plan_keeps_the_newest_the_promoted_and_what_rollback_needs_and_touches_nothing(home, tmp_path):
    before = listing(tmp_path)
    made = plan(home, keep=2, under_way=[home["runs"][0]])
    assert listing(tmp_path) == before  # a plan removes nothing
    # Newest two (v5, v6), the promoted one (v4) and the last two of the promotion stack (v2, v4).
    assert removed(made, INDEX_VERSION) == ["v1", "v3"]
    assert removed(made, CLUSTERING_VERSION) == ["v1"]
    # The two newest runs and the one under way (the oldest) keep their outputs; other folders are not runs.
    assert removed(made, RUN_OUTPUTS) == sorted(home["runs"][1:3])
    # Snapshots: those of the kept versions (v2, v4, v5, v6); the newest two are v5's and v6's.
    assert removed(made, DATASET_SNAPSHOT) == [f"{1:016x}", f"{3:016x}"]
    assert made.bytes == sum(r.bytes for r in made.removals) and made.bytes > 0
    assert "index versions 2" in made.line() and "keeping index versions 4" in made.line()
    with pytest.raises(ValueError, match="at least 1"):
        plan(home, keep=0)


def test_pruning_removes_the_plan_records_the_versions_and_never_reuses_their_numbers(home, tmp_path):
    index: IndexStore = home["index"]
    made = plan(home, keep=2, under_way=[home["runs"][0]])
    report = apply_prune(made, index=index, clusters=home["clusters"], reason="test prune", by="tester")
    assert not report.failed and len(report.removed) == len(made.removals) and report.bytes == made.bytes
    assert [v.name for v in index.versions()] == ["v2", "v4", "v5", "v6"]
    assert [v.name for v in home["clusters"].versions()] == ["v2", "v3"]
    assert sorted(p.name for p in home["outputs"].iterdir()) == sorted(
        [home["runs"][0], *home["runs"][3:], "face_descriptors", "not-a-run"])
    assert not list(tmp_path.rglob(".removing-*"))  # nothing left half-removed
    ledger = index.retired()
    assert [r["version"] for r in ledger] == [1, 3] and {r["by"] for r in ledger} == {"tester"}
    assert all(r["bytes"] > 0 and r["reason"] == "test prune" for r in ledger)
    with pytest.raises(FacePipelineError, match="v3 was pruned on .* by tester \\(test prune\\)"):
        index.get(3)
    assert index.rollback_target().name == "v2"  # what rollback needs is still there
    assert index.promoted().name == "v4" and index.promoted().load().search(small_index(4).vectors()[:1])[0][0][0] == 0
    # Numbers are never given again, even the newest one's once it is gone.
    index.retire(index.get(6), reason="test", by="tester")
    assert index.publish(small_index(7), {}).name == "v7"
    # Pruned once, the same keep finds no version more to remove (v2, v4, v5, v7 are all needed).
    assert removed(plan(home, keep=2), INDEX_VERSION) == [] and removed(plan(home, keep=2), CLUSTERING_VERSION) == []


def test_a_version_being_removed_is_not_listed_half_there(tmp_path):
    index = IndexStore(tmp_path / "index")
    for seed in range(3):
        index.publish(small_index(seed), {})
    (index.root / "v2" / "manifest.json").unlink()  # what a reader could meet while v2 is removed
    (index.root / "v9").write_text("not a folder")
    assert [v.name for v in index.versions()] == ["v1", "v3"]
    assert index.publish(small_index(4), {}).name == "v10"  # v2 and v9 stay taken


# --- the job and the command on a real instance, after real retrains ---------------------------------

def retrain(settings, instance):
    resources = build_definitions(settings).resources
    result = materialize([*retrain_assets, *retrain_checks], resources=resources, instance=instance, raise_on_error=False)
    assert result.success
    return result


def test_the_prune_job_and_command_bound_a_home_and_the_next_retrain_goes_on_from_what_is_kept(settings, small_faces, tmp_path):
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    newcomers = people_with_most_photos(4, skip=6)
    with DagsterInstance.local_temp(str(dagster_home), overrides={"telemetry": {"enabled": False}}) as instance:
        runs = []
        for newcomer in newcomers[:3]:  # each retrain embeds a new person's photos: its steps leave outputs
            copy_people(small_faces, [newcomer], 4)
            runs.append(retrain(settings, instance).run_id)
        outputs = settings.home / "outputs"
        assert {p.name for p in outputs.iterdir()} >= set(runs)  # each retrain left its embedding steps' outputs
        index = IndexStore(settings.home / "index")
        assert [v.name for v in index.versions()] == ["v1", "v2", "v3"] and index.promoted().name == "v3"
        under_way = instance.add_run(DagsterRun(job_name="retrain", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED))
        (outputs / under_way.run_id / "step").mkdir(parents=True)
        touch(outputs / under_way.run_id, 3600)

        env = environment_without_settings(FACEPIPELINE_HOME=str(settings.home), DAGSTER_HOME=str(dagster_home))
        dry = subprocess.run([str(SCRIPT), "prune", "--keep", "1", "--dry-run", "--json"], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=300)
        assert dry.returncode == 0, dry.stderr[-2000:]
        told = json.loads(dry.stdout)
        assert told["dry_run"] and sorted(r["name"] for r in told["removals"] if r["kind"] == INDEX_VERSION) == ["v1", "v2"]
        assert sorted(r["name"] for r in told["removals"] if r["kind"] == RUN_OUTPUTS) == sorted(runs[:2])
        assert [v.name for v in index.versions()] == ["v1", "v2", "v3"]  # a dry run removes nothing

        job = build_definitions(settings).resolve_job_def("prune_home")
        pruned = job.execute_in_process(instance=instance, run_config={"ops": {"prune": {"config": {"keep": 1}}}})
        assert pruned.success
        [output] = [e for e in pruned.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = {key: value.value for key, value in output.step_output_data.metadata.items()}
        assert metadata["removed"] == len(told["removals"]) and metadata["bytes_freed"] == told["bytes"] > 0
        assert [v.name for v in index.versions()] == ["v3"]
        assert {p.name for p in outputs.iterdir() if p.name in runs or p.name == under_way.run_id} == {runs[2], under_way.run_id}
        with pytest.raises(FacePipelineError, match="v2 was pruned"):
            index.rollback_target()

        again = subprocess.run([str(SCRIPT), "prune", "--keep", "1"], capture_output=True, text=True, env=env, cwd=tmp_path,
                               timeout=300)
        assert again.returncode == 0 and again.stdout.startswith("pruning: nothing"), again.stdout + again.stderr[-2000:]

        copy_people(small_faces, newcomers[3:], 4)
        after = retrain(settings, instance)
        [materialization] = after.asset_materializations_for_node("face_index")
        assert materialization.metadata["index_version"].value == "v4"  # v1 and v2 stay taken
        assert "extended v3" in materialization.metadata["build"].value
