"""The retrain against a real gallery: Postgres + pgvector seeded from real photos served over HTTP.

Each test materializes the whole retrain job through Dagster on a real instance, with the real
model, and then counts rows in the database.
"""

import json
from pathlib import Path

import numpy as np
import psycopg
import pytest
from dagster import DagsterInstance

from definitions import build_definitions
from jobs import retrain_job

SECRET = "s3cr3t-gallery-password"


@pytest.fixture()
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster"), overrides={"telemetry": {"enabled": False}}) as instance:
        yield instance


@pytest.fixture()
def gallery(seeded_gallery, settings, monkeypatch):
    """The seeded gallery; settings point the retrain at it (the password in the environment only)."""
    from dataclasses import replace

    gallery_dsn, seeded = seeded_gallery
    with psycopg.connect(gallery_dsn, autocommit=True) as conn:
        conn.execute(f"alter user postgres password '{SECRET}'")  # trust auth ignores it; the DSN carries it anyway
    dsn = gallery_dsn.replace("postgres@", f"postgres:{SECRET}@")
    monkeypatch.setenv("SUPABASE_DB_URL", dsn)
    return {"dsn": gallery_dsn, "seeded": seeded, "settings": replace(settings, source="postgres")}


def retrain(settings, instance, **options):
    job = build_definitions(settings).resolve_job_def(retrain_job.name)
    run_config = {"resources": {"retrain_options": {"config": options}}}
    return job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)


def rows(dsn: str, where: str = "true") -> dict[str, tuple]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: r[1:] for r in conn.execute(f"select id::text, xmin::text, photo_faces::text from photo_faces where {where}")}


def sessions(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select id::text, status, training_mode, faces_count, people_count, metrics from face_training_sessions order by created_at"
        ).fetchall()


def test_retrain_writes_descriptors_for_verified_faces_only_records_a_session_and_a_rerun_changes_nothing(gallery, instance):
    dsn, settings = gallery["dsn"], gallery["settings"]
    unverified_before = rows(dsn, "not verified")
    assert len(unverified_before) == gallery["seeded"].unverified > 0

    first = retrain(settings, instance)
    assert first.success
    embedded = first.output_for_node("face_embeddings")
    embedded_ok = {r["face_id"] for r in embedded.to_pylist() if r["status"] == "ok"}
    with psycopg.connect(dsn) as conn:
        written = conn.execute(
            "select id::text, vector_dims(insightface_descriptor), insightface_descriptor::text, insightface_confidence, "
            "insightface_bbox, training_used, training_context from photo_faces where insightface_descriptor is not null"
        ).fetchall()
    assert {r[0] for r in written} == embedded_ok and len(embedded_ok) >= 40
    for _, dims, text, confidence, box, used, context in written:
        vector = np.array(json.loads(text), dtype=np.float32)
        assert dims == 512 and abs(float(np.linalg.norm(vector)) - 1) < 1e-3
        assert 0.5 < confidence <= 1 and set(box) == {"x", "y", "width", "height"} and used is True
        assert context["event_id"] and context["co_occurring_people"] == [] and context["training_session_id"]
    assert rows(dsn, "not verified") == unverified_before  # byte for byte, same tuple versions

    [session] = sessions(dsn)
    session_id, status, mode, faces_count, people_count, metrics = session
    assert (status, mode, people_count) == ("completed", "incremental", 6)
    assert faces_count == len(embedded_ok)
    assert metrics["processed"] == f"processed {len(embedded_ok)}/{embedded.num_rows} faces ({embedded.num_rows - len(embedded_ok)} failed)"
    assert metrics["rank1_accuracy"] >= 0.9 and metrics["index_version"] == "v1"
    assert {c[6]["training_session_id"] for c in written} == {session_id}

    after_first = rows(dsn)
    second = retrain(settings, instance)
    assert second.success
    assert second.output_for_node("face_descriptors")["written"] == 0
    assert rows(dsn) == after_first  # not one row rewritten
    assert [s[1] for s in sessions(dsn)] == ["completed", "completed"]

    local = sorted((settings.home / "history").glob("*.json"))
    assert len(local) == 2 and all(json.loads(p.read_text())["synced"] for p in local)
    for text in [p.read_text() for p in local] + [json.dumps(s[5]) for s in sessions(dsn)]:
        assert SECRET not in text


def test_photo_failures_are_counted_with_their_reasons_and_the_run_goes_on(gallery, instance, small_faces):
    dsn, settings = gallery["dsn"], gallery["settings"]
    with psycopg.connect(dsn) as conn:
        [(missing_url,), (corrupt_url,)] = conn.execute(
            "select p.url from photos p join photo_faces f on f.photo_id = p.id where f.verified order by p.url limit 2"
        ).fetchall()
    relative = [Path(u.split("/", 3)[3].replace("%20", " ")) for u in (missing_url, corrupt_url)]
    (small_faces / relative[0]).unlink()
    (small_faces / relative[1]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    result = retrain(settings, instance)
    assert result.success
    [(status, metrics)] = [(s[1], s[5]) for s in sessions(dsn)]
    assert status == "completed" and metrics["faces_failed"] == 2
    assert metrics["photos_failed"] == 2 and metrics["photo_failure_reasons"] == {"HTTP 404": 1, "corrupt image": 1}
    assert metrics["failure_reasons"] == {"photo_unavailable": 2}
    assert metrics["processed"] == f"processed {metrics['faces_total'] - 2}/{metrics['faces_total']} faces (2 failed)"
    assert metrics["faces_embedded"] == metrics["faces_total"] - 2


def test_update_existing_false_writes_no_descriptor(gallery, instance):
    result = retrain(gallery["settings"], instance, update_existing=False)
    assert result.success and result.output_for_node("face_descriptors")["status"] == "skipped"
    assert not rows(gallery["dsn"], "insightface_descriptor is not null or training_used")
    assert [s[1] for s in sessions(gallery["dsn"])] == ["completed"]


def test_an_unreachable_database_fails_the_run_at_its_first_step_naming_host_and_port(gallery, instance, monkeypatch):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("SUPABASE_DB_URL", f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/gallery")
    result = retrain(gallery["settings"], instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "verified_faces"
    message = failure.step_failure_data.user_failure_data.description
    assert f"127.0.0.1:{port}" in message and SECRET not in message
    settings = gallery["settings"]
    assert not (settings.home / "photos").exists() and not (settings.home / "history").exists()
    assert sessions(gallery["dsn"]) == []  # nothing written to the (real, running) gallery either


def test_a_failed_step_ends_the_session_failed_with_the_error(gallery, instance):
    settings = gallery["settings"]
    from dataclasses import replace

    broken = replace(settings, model_pack="no_such_pack")
    result = retrain(broken, instance)
    assert not result.success
    [(status, metrics)] = [(s[1], s[5]) for s in sessions(gallery["dsn"])]
    assert status == "failed" and "no_such_pack" in metrics["error"] and metrics["failed_step"] == "face_embeddings"
    assert not rows(gallery["dsn"], "insightface_descriptor is not null")


def test_an_incremental_retrain_does_only_the_new_faces_work_and_its_index_is_the_full_rebuilds(gallery, instance):
    """The unverified faces of the seed are confirmed in the gallery (SQL, as the app does) after a first retrain:
    the next retrain fetches, embeds and writes back only them, extends the version before, and evaluates
    from cached scores to the numbers a fresh evaluation gives. A full retrain then builds the same index anew."""
    from facepipeline.index import IndexStore
    from facepipeline.metrics import EvaluationConfig, evaluate

    dsn, settings = gallery["dsn"], gallery["settings"]
    assert retrain(settings, instance).success
    with psycopg.connect(dsn, autocommit=True) as conn:
        new = {r[0] for r in conn.execute("update photo_faces set verified = true where not verified returning id::text")}
    assert len(new) == gallery["seeded"].unverified
    before = rows(dsn)

    second = retrain(settings, instance)
    assert second.success

    def metadata(asset: str) -> dict:
        [event] = second.asset_materializations_for_node(asset)
        return {key: value.value for key, value in event.metadata.items()}

    assert metadata("cached_photos")["fetched"] == len(new)
    assert metadata("face_embeddings")["faces_embedded"] == len(new)
    assert second.output_for_node("face_descriptors")["written"] == len(new)
    after = rows(dsn)
    assert {face_id for face_id in after if after[face_id] != before[face_id]} == new  # no other row touched
    index = metadata("face_index")
    assert index["build"] == f"extended v1 with {len(new)} faces" and index["manifest"]["build"]["base_version"] == 1
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in second.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks == {"dataset_valid": True, "embeddings_sane": True, "index_consistent": True, "no_regression": True}

    store = IndexStore(settings.home / "index")
    extended = store.get(2).load()
    embedded = second.output_for_node("face_embeddings")
    usable = {r["face_id"] for r in embedded.to_pylist() if r["status"] == "ok"}
    assert set(extended.entries.column("face_id").to_pylist()) == usable and new <= usable
    metrics = metadata("index_metrics")
    assert metrics["person_scores_reused"] > 0 and metrics["person_scores_computed"] > 0  # the cache answered in part
    stored = json.loads((store.get(2).path / "metrics.json").read_text())
    fresh = evaluate(extended.vectors(), extended.entries.column("person_id").to_pylist(), EvaluationConfig(),
                     extended.entries.column("face_id").to_pylist()).as_dict()
    assert {k: stored[k] for k in fresh} == fresh

    full = retrain(settings, instance, mode="full")
    assert full.success
    [event] = full.asset_materializations_for_node("face_index")
    assert event.metadata["build"].value.startswith("built from scratch") and "(mode full)" in event.metadata["build"].value
    rebuilt = store.get(3).load()
    by_face = dict(zip(rebuilt.entries.column("face_id").to_pylist(), rebuilt.vectors(), strict=True))
    for face_id, vector in zip(extended.entries.column("face_id").to_pylist(), extended.vectors(), strict=True):
        assert np.allclose(by_face.pop(face_id), vector, atol=1e-4)
    assert not by_face
