"""Pruning a home (facepipeline.retention, the prune_home job, `facepipeline prune`): what goes, what
stays, and that the pipeline goes on as before afterwards. Real index versions (hnswlib), a real
Dagster instance, real retrains."""

from __future__ import annotations

import itertools
import json
import os
import re
import sqlite3
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
from facepipeline.photos import PhotoCache, exclusive_use
from facepipeline.retention import (
    CACHED_PHOTOS,
    CLUSTERING_VERSION,
    DATASET_SNAPSHOT,
    INDEX_VERSION,
    LEFTOVER,
    RUN_OUTPUTS,
    apply_prune,
    plan_prune,
)
from facepipeline.tables import TableStore
from tests.conftest import FACES, copy_people, environment_without_settings, people_with_most_photos

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
    """Six index versions (v1, v2, v4 promoted in turn, v4 the current one; v6, the newest, made by a
    filtered retrain), three clusterings, five runs' outputs (the oldest is kept by the caller, as a
    run under way), dataset snapshots of v1..v6, folders that are not a run's and the leftover of
    an interrupted removal."""
    index, clusters = IndexStore(tmp_path / "index"), ClusterStore(tmp_path / "clusters")
    snapshots = TableStore(tmp_path / "datasets")
    for number in range(1, 7):
        fingerprint = f"{number:016x}"
        snapshots.write(fingerprint, pa.table({"face_id": [f"f{number}"]}))
        touch(snapshots.path(fingerprint), 600 - number * 60)
        index.publish(small_index(number), {"dataset_fingerprint": fingerprint, "partial": number == 6})
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
    (index.root / ".removing-v0-1-abcdef12" / "half").mkdir(parents=True)
    return {"index": index, "clusters": clusters, "snapshots": snapshots, "outputs": outputs, "runs": runs}


def plan(home: dict, keep: int, under_way=()):
    return plan_prune(index=home["index"], clusters=home["clusters"], snapshots=home["snapshots"], outputs=home["outputs"],
                      keep=keep, runs_kept=under_way)


def removed(plan_, kind: str) -> list[str]:
    return sorted(r.name for r in plan_.removals if r.kind == kind)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_the_plan_keeps_the_newest_the_promoted_and_what_rollback_and_the_sensor_need_and_touches_nothing(home, tmp_path):
    before = listing(tmp_path)
    made = plan(home, keep=1, under_way=[home["runs"][0]])
    assert listing(tmp_path) == before  # a plan removes nothing
    # The newest (v6), the promoted one (v4), the one rollback goes back to (v2), and the newest
    # built from every face (v5: v6 is filtered; the auto_retrain sensor counts new faces against v5).
    assert removed(made, INDEX_VERSION) == ["v1", "v3"]
    assert removed(made, CLUSTERING_VERSION) == ["v1", "v2"]
    # The newest run and the one kept by the caller (the oldest) keep their outputs; other folders are not runs.
    assert removed(made, RUN_OUTPUTS) == sorted(home["runs"][1:4])
    # Snapshots: those of the kept versions (v2, v4, v5, v6).
    assert removed(made, DATASET_SNAPSHOT) == [f"{1:016x}", f"{3:016x}"]
    assert removed(made, LEFTOVER) == [".removing-v0-1-abcdef12"]
    assert made.bytes == sum(r.bytes for r in made.removals) and made.bytes > 0
    assert "index versions 2" in made.line() and "keeping index versions 4" in made.line()
    # With a larger keep, more of the promotion stack stays: v1 is what a second rollback reaches.
    assert removed(plan(home, keep=2), INDEX_VERSION) == ["v3"]
    with pytest.raises(ValueError, match="at least 1"):
        plan(home, keep=0)


def test_pruning_removes_the_plan_records_the_versions_and_never_reuses_their_numbers(home, tmp_path):
    index: IndexStore = home["index"]
    made = plan(home, keep=1, under_way=[home["runs"][0]])
    report = apply_prune(made, index=index, clusters=home["clusters"], reason="test prune", by="tester")
    assert not report.failed and not report.kept and len(report.removed) == len(made.removals) and report.bytes == made.bytes
    assert [v.name for v in index.versions()] == ["v2", "v4", "v5", "v6"]
    assert [v.name for v in home["clusters"].versions()] == ["v3"]
    assert sorted(p.name for p in home["outputs"].iterdir()) == sorted(
        [home["runs"][0], home["runs"][4], "face_descriptors", "not-a-run"])
    assert not list(tmp_path.rglob(".removing-*"))  # nothing left half-removed, the old leftover gone too
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
    # v7, the newest, is built from every face: v5 is no longer what the sensor counts against.
    assert removed(plan(home, keep=1), INDEX_VERSION) == ["v5"] and removed(plan(home, keep=1), CLUSTERING_VERSION) == []


def test_what_changed_since_the_plan_is_kept(home):
    index: IndexStore = home["index"]
    made = plan(home, keep=1, under_way=[home["runs"][0]])
    index.promote(3, reason="promoted while the prune was planned", by="someone")
    snapshot = home["snapshots"].path(f"{1:016x}")
    home["snapshots"].write(f"{1:016x}", pa.table({"face_id": ["again"]}))  # a retrain read that dataset again
    (home["outputs"] / home["runs"][1] / "another_step").mkdir()  # that run's folder written since the plan
    report = apply_prune(made, index=index, clusters=home["clusters"], reason="test", by="t")
    assert set(report.kept) == {str(index.root / "v3"), str(snapshot), str(home["outputs"] / home["runs"][1])}
    assert [v.name for v in index.versions()] == ["v2", "v3", "v4", "v5", "v6"] and index.promoted().name == "v3"
    assert snapshot.is_file() and not (home["outputs"] / home["runs"][2]).exists()


def test_a_version_being_removed_is_not_listed_half_there(tmp_path):
    index = IndexStore(tmp_path / "index")
    for seed in range(3):
        index.publish(small_index(seed), {})
    (index.root / "v2" / "manifest.json").unlink()  # what a reader could meet while v2 is removed
    (index.root / "v9").write_text("not a folder")
    assert [v.name for v in index.versions()] == ["v1", "v3"]
    assert index.publish(small_index(4), {}).name == "v10"  # v2 and v9 stay taken


def test_the_latest_version_is_found_without_reading_every_manifest(tmp_path):
    from facepipeline.auto_retrain import latest_complete

    index = IndexStore(tmp_path / "index")
    for seed in range(4):
        index.publish(small_index(seed), {"partial": seed == 3})
    (index.root / "v1" / "manifest.json").write_text("{ damaged")  # never read: v4 and v3 answer first
    assert index.latest().name == "v4" and latest_complete(index).name == "v3"
    assert [v.name for v in itertools.islice(index.newest_first(), 2)] == ["v4", "v3"]


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
        # A re-execution of the first run, under way: it reloads the first run's outputs, which stay.
        under_way = instance.add_run(DagsterRun(job_name="retrain", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                                parent_run_id=runs[0], root_run_id=runs[0]))
        (outputs / under_way.run_id / "step").mkdir(parents=True)
        touch(outputs / under_way.run_id, 3600)

        env = environment_without_settings(FACEPIPELINE_HOME=str(settings.home), DAGSTER_HOME=str(dagster_home))
        dry = subprocess.run([str(SCRIPT), "prune", "--keep", "1", "--dry-run", "--json"], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=300)
        assert dry.returncode == 0, dry.stderr[-2000:]
        told = json.loads(dry.stdout)
        assert told["dry_run"] and [r["name"] for r in told["removals"] if r["kind"] == INDEX_VERSION] == ["v1"]
        assert [r["name"] for r in told["removals"] if r["kind"] == RUN_OUTPUTS] == [runs[1]]
        assert [v.name for v in index.versions()] == ["v1", "v2", "v3"]  # a dry run removes nothing

        job = build_definitions(settings).resolve_job_def("prune_home")
        pruned = job.execute_in_process(instance=instance, run_config={"ops": {"prune": {"config": {"keep": 1}}}})
        assert pruned.success
        [output] = [e for e in pruned.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = {key: value.value for key, value in output.step_output_data.metadata.items()}
        assert metadata["removed"] == len(told["removals"]) and metadata["bytes_freed"] == told["bytes"] > 0
        assert [v.name for v in index.versions()] == ["v2", "v3"] and index.rollback_target().name == "v2"
        assert {p.name for p in outputs.iterdir() if p.name in runs or p.name == under_way.run_id} == {
            runs[0], runs[2], under_way.run_id}
        with pytest.raises(FacePipelineError, match=r"v1 was pruned on .* \(the prune_home job, keep 1, run "):
            index.get(1)

        # An old photo file nothing leads to (a run killed between storing and recording it): with
        # --photo-grace-days 0 it goes, and every photo the kept datasets use stays.
        objects = settings.home / "photos" / "objects"
        photos_before = {p.name for p in objects.rglob("*") if p.is_file()}
        orphan = objects / "ab" / ("ab" + "0" * 62)
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_bytes(b"\xff\xd8 not needed")
        touch(orphan, 3600)
        assert "references in use" in told["kept"]["cached photos"][0]
        again = subprocess.run([str(SCRIPT), "prune", "--keep", "1", "--photo-grace-days", "0"], capture_output=True,
                               text=True, env=env, cwd=tmp_path, timeout=300)
        assert again.returncode == 0 and again.stdout.startswith("pruning: cached photos 1 "), again.stdout + again.stderr[-2000:]
        assert "removed 0 item(s) and 1 cached photos" in again.stdout
        assert {p.name for p in objects.rglob("*") if p.is_file()} == photos_before and len(photos_before) >= 12
        listed = subprocess.run([str(SCRIPT), "versions"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        rows = [line for line in listed.stdout.splitlines() if line[2:4] in ("v1", "v2", "v3")]
        assert [row[2:4] for row in rows] == ["v3", "v2"], listed.stdout
        # The session column ("-": these retrains ran as plain materializations) stands apart from the
        # checks, however long they are.
        assert all(re.search(r"no_regression ok\s+(-|[0-9a-f-]{36})$", row) for row in rows), rows

        copy_people(small_faces, newcomers[3:], 4)
        after = retrain(settings, instance)
        [materialization] = after.asset_materializations_for_node("face_index")
        assert materialization.metadata["index_version"].value == "v4"  # v1 and v2 stay taken
        assert "extended v3" in materialization.metadata["build"].value


def test_one_prune_at_a_time_per_home(tmp_path):
    from filelock import FileLock

    from jobs.prune import PRUNE_LOCK, prune_home
    from resources import ArtifactStoreResource

    artifacts = ArtifactStoreResource(home=str(tmp_path / "home"))
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster"), overrides={"telemetry": {"enabled": False}}) as instance:
        plan_, report = prune_home(instance, artifacts, keep=1, dry_run=False, reason="test", by="t")
        assert plan_.removals == () and report.removed == []  # an empty home: nothing to do, no error
        with FileLock(artifacts.root / PRUNE_LOCK):
            with pytest.raises(FacePipelineError, match="another prune of .* is in progress"):
                prune_home(instance, artifacts, keep=1, dry_run=True, reason="test", by="t")


def test_a_re_execution_under_way_keeps_every_ancestor_it_may_reload_from(tmp_path):
    from jobs.prune import runs_to_keep

    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster"), overrides={"telemetry": {"enabled": False}}) as instance:
        chain, parent = [], None
        for status in (DagsterRunStatus.FAILURE, DagsterRunStatus.FAILURE, DagsterRunStatus.FAILURE, DagsterRunStatus.STARTED):
            run = instance.add_run(DagsterRun(job_name="retrain", run_id=str(uuid.uuid4()), status=status,
                                              parent_run_id=parent, root_run_id=chain[0] if chain else None))
            chain.append(run.run_id)
            parent = run.run_id
        unrelated = instance.add_run(DagsterRun(job_name="retrain", run_id=str(uuid.uuid4()), status=DagsterRunStatus.SUCCESS))
        kept = runs_to_keep(instance)
        assert kept == set(chain) and unrelated.run_id not in kept  # the grandparent too, not only parent and root


# -- cached photos ---------------------------------------------------------------------------------


@pytest.fixture()
def photo_home(tmp_path: Path, photo_server) -> dict:
    """A photo cache filled over real HTTP: ``current`` (in the current dataset), ``snapshot`` (in a
    kept dataset snapshot), ``old`` and ``recent`` (in no dataset; fetched a month ago and now),
    ``twin`` (the bytes of ``current`` under another URL, in no dataset) and ``gone`` (a 404, a
    month ago). Nothing else in the home: no index version, no clustering, no run outputs."""
    photos = sorted((FACES / "Colin_Powell").glob("*.jpg"))[:4]
    urls = {name: photo_server.add(f"{name}.jpg", path.read_bytes())
            for name, path in zip(("current", "snapshot", "old", "recent"), photos, strict=True)}
    urls["twin"] = photo_server.add("twin.jpg", photos[0].read_bytes())
    urls["gone"] = photo_server.url("gone.jpg")
    root = tmp_path / "photos"
    with PhotoCache(root, retries=0) as cache:
        records = {r.ref: r for r in cache.fetch_all(urls.values())}
    month_ago = time.time() - 30 * 86400
    with sqlite3.connect(root / "manifest.sqlite3") as db:
        db.execute("update photos set fetched_at = ? where reference != ?", [month_ago, urls["recent"]])
    db.close()
    for record in records.values():
        if record.ok and record.ref != urls["recent"]:
            os.utime(root / "objects" / record.sha256[:2] / record.sha256, (month_ago, month_ago))
    tables, snapshots = TableStore(tmp_path / "tables"), TableStore(tmp_path / "datasets")
    tables.write("verified_faces", pa.table({"face_id": ["f1"], "photo_ref": [urls["current"]]}))
    snapshots.write(f"{1:016x}", pa.table({"face_id": ["f2"], "photo_ref": [urls["snapshot"]]}))
    return {"root": root, "urls": urls, "sha": {name: records[url].sha256 for name, url in urls.items()},
            "tables": tables, "snapshots": snapshots, "index": IndexStore(tmp_path / "index"),
            "clusters": ClusterStore(tmp_path / "clusters"), "outputs": tmp_path / "outputs"}


def photo_plan(home: dict):
    return plan_prune(index=home["index"], clusters=home["clusters"], snapshots=home["snapshots"], outputs=home["outputs"],
                      keep=1, runs_kept=(), photos=home["root"], tables=home["tables"], photo_grace_s=7 * 86400)


def photo_apply(home: dict, plan_):
    return apply_prune(plan_, index=home["index"], clusters=home["clusters"], reason="test", by="t",
                       snapshots=home["snapshots"], tables=home["tables"])


def manifest_refs(root: Path) -> set[str]:
    with sqlite3.connect(root / "manifest.sqlite3") as db:
        refs = {ref for (ref,) in db.execute("select reference from photos")}
    db.close()
    return refs


def test_cached_photos_nothing_kept_uses_go_and_one_needed_again_is_fetched_again(photo_home, photo_server, tmp_path):
    home, urls, sha = photo_home, photo_home["urls"], photo_home["sha"]
    before = listing(tmp_path)
    made = photo_plan(home)
    assert listing(tmp_path) == before  # the plan touches nothing
    [photos] = [r for r in made.removals if r.kind == CACHED_PHOTOS]
    assert photos.photos.sha256s == {sha["old"]}  # the twin's bytes are the current photo's: they stay
    assert photos.photos.references == {urls["old"], urls["twin"], urls["gone"]}
    assert photos.bytes == (home["root"] / "objects" / sha["old"][:2] / sha["old"]).stat().st_size
    assert made.counts()[CACHED_PHOTOS] == 1

    report = photo_apply(home, made)
    assert not report.failed and not report.kept
    assert [r.kind for r in report.removed] == [CACHED_PHOTOS]
    assert report.line().startswith("removed 0 item(s) and 1 cached photos, ")
    objects = {p.name for p in (home["root"] / "objects").rglob("*") if p.is_file()}
    assert objects == {sha["current"], sha["snapshot"], sha["recent"]}
    assert manifest_refs(home["root"]) == {urls["current"], urls["snapshot"], urls["recent"]}

    with PhotoCache(home["root"], retries=0) as cache:  # a later run that needs it fetches it again
        again = {r.ref: r for r in cache.fetch_all([urls["old"], urls["current"]])}
        assert cache.read(again[urls["old"]].sha256) == (sorted((FACES / "Colin_Powell").glob("*.jpg"))[2]).read_bytes()
    assert photo_server.hits["/old.jpg"] == 2 and photo_server.hits["/current.jpg"] == 1
    assert not [r for r in photo_plan(home).removals if r.kind == CACHED_PHOTOS and r.photos.sha256s]


def test_cached_photos_stay_while_a_cache_is_open_and_when_in_use_again_since_the_plan(photo_home):
    home, urls, sha = photo_home, photo_home["urls"], photo_home["sha"]
    made = photo_plan(home)
    old_object = home["root"] / "objects" / sha["old"][:2] / sha["old"]

    with PhotoCache(home["root"], retries=0):  # a run's step is reading photos
        report = photo_apply(home, made)
    assert report.kept == {str(home["root"]): "a run is using the photo cache: every photo stays this time"}
    assert not report.removed and old_object.is_file() and urls["old"] in manifest_refs(home["root"])

    # A retrain read the gallery since the plan: the old photo is in the current dataset again.
    home["tables"].write("verified_faces", pa.table({"face_id": ["f1", "f3"], "photo_ref": [urls["current"], urls["old"]]}))
    report = photo_apply(home, made)
    assert report.kept == {str(home["root"]): "1 of the planned photos are in use again since the plan"}
    assert old_object.is_file() and urls["old"] in manifest_refs(home["root"]) and not report.removed
    assert urls["twin"] not in manifest_refs(home["root"]) and urls["gone"] not in manifest_refs(home["root"])

    # Or a retrain's cached_photos step recorded since the plan that its run reads these bytes.
    home["tables"].write("verified_faces", pa.table({"face_id": ["f1"], "photo_ref": [urls["current"]]}))
    home["tables"].write("cached_photos", pa.table({"photo_ref": [urls["current"]], "sha256": [sha["old"]]}))
    report = photo_apply(home, made)
    assert report.kept == {str(home["root"]): "1 of the planned photos are in use again since the plan"}
    assert old_object.is_file() and not report.removed


def test_a_photo_cache_that_cannot_open_holds_no_lock_and_a_plan_names_why_it_keeps_every_photo(photo_home):
    """A manifest that is not a database: opening the cache fails with sqlite's error and leaves
    the lock free; a plan keeps every photo, says why, and still plans the rest."""
    home = photo_home
    (home["root"] / "manifest.sqlite3").write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (home["root"] / f"manifest.sqlite3{suffix}").unlink(missing_ok=True)
    with pytest.raises(sqlite3.DatabaseError):
        PhotoCache(home["root"], retries=0)
    with exclusive_use(home["root"]) as alone:
        assert alone
    made = photo_plan(home)
    assert not [r for r in made.removals if r.kind == CACHED_PHOTOS]
    assert made.kept[CACHED_PHOTOS] == ["every photo: DatabaseError: file is not a database"]
