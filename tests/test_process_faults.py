"""Process faults, for real: a retrain SIGKILLed while it embeds, two retrains at once, and an ad-hoc
run of the retrain assets beside a retrain in progress.

Every retrain here is the ``facepipeline`` console script in a subprocess of its own (its own
process group, so a kill takes all of it), on a persistent Dagster instance in a temporary home.
Where a retrain must be caught in the middle, the test waits on something the run itself produces
(a journal part on disk, a photo request reaching the test's HTTP server), never on a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from tests.conftest import (
    MODEL_ROOT,
    PACK,
    copy_people,
    environment_without_settings,
    fresh_gallery_database,
    people_with_most_photos,
    serve_http,
)

SCRIPT = Path(sys.executable).with_name("facepipeline")
PASSED_ON = ("FACEPIPELINE_PHOTO_HOSTS",)  # the photo policy's allow-list, as an operator would set it


@dataclass
class Retrain:
    """A ``facepipeline retrain --json`` running in its own process group."""

    process: subprocess.Popen
    stdout: Path
    stderr: Path

    def finish(self, timeout: float = 600) -> tuple[int, dict | None, str]:
        code = self.process.wait(timeout=timeout)
        out = self.stdout.read_text()
        return code, json.loads(out) if out.strip() else None, self.stderr.read_text()

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)


def start_retrain(source: str, home: Path, cwd: Path, *, dagster_home: Path | None = None, name: str = "retrain") -> Retrain:
    env = environment_without_settings(
        *PASSED_ON, FACEPIPELINE_HOME=str(home), FACEPIPELINE_MODEL_ROOT=str(MODEL_ROOT), FACEPIPELINE_MODEL=PACK
    )
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    stdout, stderr = cwd / f"{name}.out", cwd / f"{name}.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            [str(SCRIPT), "retrain", "--source", source, "--json"], stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
        )
    return Retrain(process, stdout, stderr)


def wait_until(condition: Callable[[], bool], retrain: Retrain, what: str, limit_s: float = 300) -> None:
    """Poll ``condition`` while the retrain runs; fail if it ends first (the limit only bounds a hang)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if retrain.process.poll() is not None:
            pytest.fail(f"the retrain ended ({retrain.process.returncode}) before {what}: {retrain.stderr.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            retrain.kill()
            pytest.fail(f"no {what} after {limit_s} s")
        time.sleep(0.01)


def journal_parts(home: Path) -> list[Path]:
    return sorted((home / "embedding_journal").glob("part-*.parquet"))


def sessions_of(home: Path) -> dict[str, str]:
    from facepipeline.sessions import SessionHistory

    return {record.run_id: record.status for record in SessionHistory(home / "history").list()}


# --- SIGKILL in the middle of embedding, then a rerun --------------------------------------------------------------


def test_a_retrain_killed_while_embedding_resumes_from_its_journal_and_ends_as_an_uninterrupted_one(tmp_path):
    faces = copy_people(tmp_path / "faces", people_with_most_photos(16, skip=70), 8)
    source, home, reference = f"folder:{faces}", tmp_path / "home", tmp_path / "reference"

    killed = start_retrain(source, home, tmp_path, name="killed")
    wait_until(lambda: bool(journal_parts(home)), killed, "journal part")
    killed.kill()  # SIGKILL to the whole process group: no handler, no finally, nothing flushed
    assert killed.process.returncode == -signal.SIGKILL
    journalled = pq.read_table(journal_parts(home))
    keys = set(journalled.column("embed_key").to_pylist())
    assert 0 < journalled.num_rows < 128 and len(keys) == journalled.num_rows
    assert not (home / "tables" / "face_embeddings.parquet").exists()  # nothing published: all it made is in the journal
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        [dead] = instance.get_runs(RunsFilter(job_name="retrain"))
        assert dead.status == DagsterRunStatus.STARTED  # as a killed process leaves it
    assert sessions_of(home) == {dead.run_id: "running"}

    code, rerun, stderr = start_retrain(source, home, tmp_path, name="rerun").finish()
    assert code == 0, stderr[-3000:]
    assert rerun["faces_total"] == 128 and rerun["faces_reused"] == 0
    assert rerun["faces_resumed"] == journalled.num_rows
    ok_in_journal = sum(status == "ok" for status in journalled.column("status").to_pylist())
    assert rerun["faces_embedded"] == 128 - rerun["faces_failed"] - ok_in_journal  # exactly the faces not journalled
    table = pq.read_table(home / "tables" / "face_embeddings.parquet")
    stamps = dict(zip(table.column("embed_key").to_pylist(), table.column("embedded_at").to_pylist(), strict=True))
    killed_stamps = dict(zip(journalled.column("embed_key").to_pylist(), journalled.column("embedded_at").to_pylist(), strict=True))
    assert {key: stamps[key] for key in keys} == killed_stamps  # the journalled rows were taken as they were, not redone
    assert journal_parts(home) == []  # published: pruned

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE  # released by the rerun
        failure = instance.all_logs(dead.run_id, of_type=DagsterEventType.RUN_FAILURE)[-1].message
        assert "is gone: it was killed or crashed" in failure
    assert sessions_of(home) == {dead.run_id: "failed", rerun["run_id"]: "completed"}

    code, clean, stderr = start_retrain(source, reference, tmp_path, name="reference").finish()
    assert code == 0, stderr[-3000:]
    assert (clean["faces_embedded"], clean["faces_resumed"], clean["faces_failed"]) == (
        rerun["faces_embedded"] + ok_in_journal, 0, rerun["faces_failed"])
    expected = pq.read_table(reference / "tables" / "face_embeddings.parquet")
    assert table.column("face_id").to_pylist() == expected.column("face_id").to_pylist()
    assert table.column("status").to_pylist() == expected.column("status").to_pylist()
    from facepipeline.embedding_store import embedding_matrix, usable

    assert np.array_equal(embedding_matrix(usable(table)), embedding_matrix(usable(expected)))  # bit-identical
    assert rerun["index_version"] == clean["index_version"] == "v1"
    index, expected_index = (pq.read_table(h / "index" / "v1" / "entries.parquet") for h in (home, reference))
    assert index.equals(expected_index)  # the same faces under the same labels, the same vector digests


# --- Two retrains at once -----------------------------------------------------------------------------------------

PEOPLE = people_with_most_photos(6, skip=90)


class HeldPhotos:
    """A real HTTP server for the gallery's photos that can hold one photo's answer until released."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.held: str | None = None
        self.reached = threading.Event()
        self.release = threading.Event()

    @contextmanager
    def serve(self) -> Iterator[str]:
        photos = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                relative = unquote(self.path.lstrip("/"))
                if relative == photos.held:
                    photos.reached.set()
                    photos.release.wait(120)
                data = (photos.root / relative).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        with serve_http(Handler) as base_url:
            try:
                yield base_url
            finally:
                self.release.set()  # before the server closes: it waits for a held answer


@dataclass
class Gallery:
    dsn: str
    photos: HeldPhotos
    faces: int

    @property
    def source(self) -> str:
        return f"postgres:{self.dsn}"

    def sql(self, query: str, params=()) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture()
def gallery(tmp_path, postgres_server, monkeypatch) -> Iterator[Gallery]:
    from facepipeline.gallery.seed import seed_from_folder

    root = copy_people(tmp_path / "photos", PEOPLE, 8)
    photos = HeldPhotos(root)
    with fresh_gallery_database(postgres_server) as dsn, photos.serve() as base_url:
        try:
            from tests.conftest import allow_photo_hosts
        except ImportError:
            pass
        else:
            allow_photo_hosts(monkeypatch, base_url)
        seed_from_folder(dsn, root, lambda rel: f"{base_url}/{rel}", unverified_share=0.0)
        monkeypatch.setenv("SUPABASE_DB_URL", dsn)  # for the in-process definitions of the ad-hoc run
        yield Gallery(dsn, photos, len(PEOPLE) * 8)


def assert_written_once(g: Gallery, winner: dict) -> None:
    """One training session, completed; every descriptor written by it, once."""
    [(session_id, status)] = g.sql("select id::text, status from face_training_sessions")
    assert (session_id, status) == (winner["training_session"]["id"], "completed")
    written = winner["write_back"]["written"]
    assert written == g.faces - winner["faces_failed"]
    rows = g.sql("select training_context ->> 'training_session_id', count(*) from photo_faces "
                 "where insightface_descriptor is not null group by 1")
    assert rows == [(session_id, written)]


def one_completed_one_refused(results: list[tuple[int, dict | None, str]]) -> dict:
    """Of two retrains' (exit code, JSON summary, stderr): one exited 0, the other 1 with a one-line refusal. The winner's summary."""
    assert sorted(code for code, _, _ in results) == [0, 1], [stderr[-2000:] for _, _, stderr in results]
    [(_, winner, _)] = [r for r in results if r[0] == 0]
    [(_, loser, loser_err)] = [r for r in results if r[0] == 1]
    message = (loser or {}).get("error") or loser_err.strip().splitlines()[-1]
    assert "another retrain is in progress" in message and "Traceback" not in loser_err, loser_err[-2000:]
    return winner


def test_two_retrains_started_together_on_one_home_one_writes_the_other_is_refused(gallery, tmp_path):
    home = tmp_path / "home"
    retrains = [start_retrain(gallery.source, home, tmp_path, name=f"r{i}") for i in range(2)]
    results = [retrain.finish() for retrain in retrains]
    winner = one_completed_one_refused(results)
    assert winner["index_version"] == "v1" and sorted(p.name for p in (home / "index").iterdir() if p.name.startswith("v")) == ["v1"]
    assert_written_once(gallery, winner)
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs()
        assert [r.run_id for r in runs if r.status == DagsterRunStatus.SUCCESS] == [winner["run_id"]]
        for run in runs:  # a refused run (if the loser got as far as making one) wrote nothing
            if run.run_id != winner["run_id"]:
                assert run.status == DagsterRunStatus.FAILURE
                assert instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION) == []
    assert list(sessions_of(home).values()) == ["completed"]


def test_two_retrains_of_two_homes_on_one_instance_one_writes_the_other_is_refused(gallery, tmp_path):
    """Two homes, so no home lock stands between them: the instance-wide claim decides."""
    instance_home = tmp_path / "instance"
    retrains = [
        start_retrain(gallery.source, tmp_path / f"home{i}", tmp_path, dagster_home=instance_home, name=f"r{i}") for i in range(2)
    ]
    results = [retrain.finish() for retrain in retrains]
    winner = one_completed_one_refused(results)
    assert_written_once(gallery, winner)
    loser_home = next(tmp_path / f"home{i}" for i in range(2) if results[i][0] == 1)
    assert not (loser_home / "index").exists() and not (loser_home / "tables").exists()  # nothing written
    assert all(status != "running" for status in sessions_of(loser_home).values())


def test_an_ad_hoc_run_of_the_retrain_assets_beside_a_retrain_in_progress_is_refused_before_writing(gallery, tmp_path):
    from dagster import materialize

    from assets import retrain_assets
    from definitions import build_definitions
    from facepipeline.options import RetrainOptions
    from facepipeline.settings import Settings
    from jobs.run_guard import CLAIM_TAG
    from resources import options_run_config

    home = tmp_path / "home"
    gallery.photos.held = f"{PEOPLE[0].name}/{sorted(p.name for p in (gallery.photos.root / PEOPLE[0].name).iterdir())[0]}"
    retrain = start_retrain(gallery.source, home, tmp_path)
    wait_until(gallery.photos.reached.is_set, retrain, "photo request")  # the retrain is caching photos, held there
    try:
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            [running] = instance.get_runs(RunsFilter(job_name="retrain"))
            assert running.status == DagsterRunStatus.STARTED and running.tags[CLAIM_TAG] == running.run_id
            settings = Settings(home=home.resolve(), model_root=MODEL_ROOT, model_pack=PACK, source="postgres",
                                providers=("CPUExecutionProvider",))
            defs = build_definitions(settings)
            result = materialize(retrain_assets, instance=instance, resources=defs.resources,
                                 run_config=options_run_config(RetrainOptions()), raise_on_error=False)
            assert instance.get_run_by_id(running.run_id).status == DagsterRunStatus.STARTED  # still held: truly beside it
    finally:
        gallery.photos.release.set()
    code, summary, stderr = retrain.finish()
    assert code == 0, stderr[-3000:]

    assert not result.success
    [failure] = result.get_step_failure_events()
    assert failure.step_key == "verified_faces"
    assert "another retrain is in progress" in failure.step_failure_data.error.message
    assert running.run_id in failure.step_failure_data.error.message
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        started = [e.step_key for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_START)]
        assert started == ["verified_faces"]
        assert instance.all_logs(result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION) == []
        assert CLAIM_TAG not in instance.get_run_by_id(result.run_id).tags
    assert sessions_of(home) == {summary["run_id"]: "completed"}  # the refused run opened none
    assert len(list((home / "datasets").glob("*.parquet"))) == 1  # one dataset snapshot: the retrain's
    assert summary["index_version"] == "v1" and (summary["faces_embedded"], summary["faces_total"]) == (gallery.faces - summary["faces_failed"], gallery.faces)
    assert_written_once(gallery, summary)


# --- The claim itself, on a real instance -------------------------------------------------------------------------


def test_the_claim_admits_one_run_at_a_time_and_is_freed_when_that_run_ends_or_its_process_dies(tmp_path):
    import uuid

    from dagster import DagsterRun

    from facepipeline.sessions import SessionHistory, TrainingSessions
    from jobs.run_guard import CLAIM_TAG, PROCESS_TAG, RetrainBusy, claim_retrain, close_orphaned_sessions, this_process

    (tmp_path / "dagster").mkdir()
    with DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        def run(job: str, tags: dict) -> DagsterRun:
            return instance.add_run(DagsterRun(job_name=job, run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED, tags=tags))

        first = run("retrain", {PROCESS_TAG: this_process()})
        ad_hoc = run("__ASSET_JOB", {})
        claim_retrain(instance, first.run_id)
        claim_retrain(instance, first.run_id)  # a later step of the same run passes
        with pytest.raises(RetrainBusy, match=f"another retrain is in progress: run {first.run_id} \\(retrain, the UI or a CLI\\)"):
            claim_retrain(instance, ad_hoc.run_id)
        assert CLAIM_TAG not in instance.get_run_by_id(ad_hoc.run_id).tags
        instance.report_run_failed(instance.get_run_by_id(first.run_id), "test over")
        claim_retrain(instance, ad_hoc.run_id)  # the claimant is over: the claim is free
        instance.report_run_failed(instance.get_run_by_id(ad_hoc.run_id), "test over")

        dead = run("__ASSET_JOB", {PROCESS_TAG: f"{this_process().split(':')[0]}:999999999:1"})
        instance.add_run_tags(dead.run_id, {CLAIM_TAG: dead.run_id})  # it claimed, then its process was killed
        later = run("retrain", {})
        sessions = TrainingSessions(SessionHistory(tmp_path / "history"), None, "folder:x")
        left_running = sessions.start(dead.run_id, {"training_mode": "incremental"})
        claim_retrain(instance, later.run_id)  # the dead claimant is released, then the claim is free
        assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE
        assert close_orphaned_sessions(instance, sessions, later.run_id) == [left_running.id]
        record = sessions.history.for_run(dead.run_id)
        assert record.status == "failed" and "is gone: it was killed or crashed" in record.error
        assert close_orphaned_sessions(instance, sessions, later.run_id) == []  # closed once


def test_a_run_this_process_saw_holding_the_claim_passes_without_reading_the_run_storage_again(tmp_path):
    import uuid

    from dagster import DagsterRun

    from facepipeline.errors import FacePipelineError
    from jobs.run_guard import CLAIM_TAG, claim_retrain

    (tmp_path / "dagster").mkdir()
    with DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        def run(tags: dict) -> DagsterRun:
            return instance.add_run(DagsterRun(job_name="retrain", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED, tags=tags))

        claimed_here = run({})
        claim_retrain(instance, claimed_here.run_id)  # tags it
        claimed_elsewhere, never_seen = run({}), run({})
        instance.add_run_tags(claimed_elsewhere.run_id, {CLAIM_TAG: claimed_elsewhere.run_id})
        claim_retrain(instance, claimed_elsewhere.run_id)  # reads the tag
        for held in (claimed_here, claimed_elsewhere, never_seen):
            instance.delete_run(held.run_id)  # the storage can no longer tell
        claim_retrain(instance, claimed_here.run_id)
        claim_retrain(instance, claimed_elsewhere.run_id)
        with pytest.raises(FacePipelineError, match="is not in the instance's run storage"):
            claim_retrain(instance, never_seen.run_id)


def test_a_re_execution_inherits_its_parents_tags_but_neither_its_claim_nor_its_process(tmp_path):
    """The UI's "Re-execute" and Dagster's run retries copy the parent's tags (``use_parent_run_tags``):
    a copied claim does not let the re-execution write beside another retrain, and a copied process
    tag (its parent was a CLI retrain, since killed) does not get the running re-execution failed."""
    import uuid

    from dagster import DagsterRun
    from dagster._core.storage.tags import PARENT_RUN_ID_TAG, ROOT_RUN_ID_TAG

    from jobs.run_guard import CLAIM_TAG, PROCESS_TAG, RetrainBusy, claim_retrain, release_stale_runs, this_process

    (tmp_path / "dagster").mkdir()
    with DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        def run(tags: dict, parent: DagsterRun | None = None) -> DagsterRun:
            lineage = {} if parent is None else {
                "parent_run_id": parent.run_id, "root_run_id": parent.run_id,
                "tags": {**parent.tags, PARENT_RUN_ID_TAG: parent.run_id, ROOT_RUN_ID_TAG: parent.run_id},
            }
            return instance.add_run(DagsterRun(job_name="retrain", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                               **{"tags": tags, **lineage}))

        killed_cli = run({PROCESS_TAG: f"{this_process().split(':')[0]}:999999999:1", "facepipeline/trigger": "cli"})
        instance.add_run_tags(killed_cli.run_id, {CLAIM_TAG: killed_cli.run_id})  # it claimed, then its process was killed
        instance.report_run_failed(instance.get_run_by_id(killed_cli.run_id), "its process is gone")
        reexecution = run({}, parent=instance.get_run_by_id(killed_cli.run_id))
        assert reexecution.tags[CLAIM_TAG] == killed_cli.run_id and PROCESS_TAG in reexecution.tags  # as Dagster copies them

        assert release_stale_runs(instance) == []  # its parent's process is gone; its own (the run launcher's) is not known
        holder = run({})
        claim_retrain(instance, holder.run_id)  # the copied claim does not count: the claim is free
        with pytest.raises(RetrainBusy, match=f"another retrain is in progress: run {holder.run_id} \\(retrain, the UI or a CLI\\)"):
            claim_retrain(instance, reexecution.run_id)
        assert instance.get_run_by_id(reexecution.run_id).tags[CLAIM_TAG] == killed_cli.run_id  # refused: not tagged
        assert instance.get_run_by_id(reexecution.run_id).status == DagsterRunStatus.STARTED

        instance.report_run_failed(instance.get_run_by_id(holder.run_id), "test over")
        claim_retrain(instance, reexecution.run_id)
        assert instance.get_run_by_id(reexecution.run_id).tags[CLAIM_TAG] == reexecution.run_id
        later = run({})
        with pytest.raises(RetrainBusy, match=f"run {reexecution.run_id} \\(retrain, a re-execution of run {killed_cli.run_id}\\)"):
            claim_retrain(instance, later.run_id)
        instance.report_run_failed(instance.get_run_by_id(reexecution.run_id), "test over")

        # A run claimed by the code before the tag held the run's id ("true") keeps its claim; its re-execution does not inherit it.
        claimed_before = run({CLAIM_TAG: "true"})
        with pytest.raises(RetrainBusy, match=f"run {claimed_before.run_id} "):
            claim_retrain(instance, later.run_id)
        claim_retrain(instance, claimed_before.run_id)  # passes: it holds the claim
        assert instance.get_run_by_id(claimed_before.run_id).tags[CLAIM_TAG] == "true"  # nothing rewritten
        instance.report_run_failed(instance.get_run_by_id(claimed_before.run_id), "test over")
        its_reexecution = run({}, parent=instance.get_run_by_id(claimed_before.run_id))
        claim_retrain(instance, its_reexecution.run_id)
        assert instance.get_run_by_id(its_reexecution.run_id).tags[CLAIM_TAG] == its_reexecution.run_id
