"""The five retrain assets through Dagster's materialize() on a real instance, real model, real photos."""

import json

import pyarrow.parquet as pq
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from assets import retrain_assets, retrain_checks
from assets.metadata import one_line
from cli.runs import first_error
from definitions import build_definitions
from tests.conftest import FACES


def run(settings, instance, **options):
    resources = build_definitions(settings).resources
    run_config = {"resources": {"retrain_options": {"config": options}}}
    return materialize(
        [*retrain_assets, *retrain_checks], resources=resources, instance=instance, run_config=run_config, raise_on_error=False
    )


def metadata(result, asset: str) -> dict:
    [event] = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in event.metadata.items()}


@pytest.fixture()
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster"), overrides={"telemetry": {"enabled": False}}) as instance:
        yield instance


def test_retrain_end_to_end_then_nothing_to_redo_then_full(settings, instance, small_faces: Path):
    person = sorted(small_faces.iterdir())[0]
    (person / "broken.jpg").write_bytes((FACES / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()[:3000])
    (person / "not_an_image.jpg").write_bytes(b"GIF89a this is no image")
    (person / "empty.jpg").write_bytes(b"")

    first = run(settings, instance)
    assert first.success
    faces = metadata(first, "verified_faces")
    assert (faces["people"], faces["faces"]) == (6, 51)
    assert "| 5-9 | 5 |" in faces["people_by_face_count"] and "| 10-14 | 1 |" in faces["people_by_face_count"]
    photos = metadata(first, "cached_photos")
    assert photos["summary"] == "processed 49/51 photos (2 failed; 49 fetched, 0 from cache)"
    embeddings = metadata(first, "face_embeddings")
    assert (embeddings["faces_embedded"], embeddings["faces_failed"]) == (48, 3)
    assert embeddings["summary"] == "processed 48/51 faces (3 failed); embedded 48, reused 0"
    assert embeddings["model_pack"] == "buffalo_sc" and embeddings["dagster/row_count"] == 51
    assert embeddings["failure_reasons"].count("|") > 0 and "photo_unavailable" in embeddings["failure_reasons"]
    index = metadata(first, "face_index")
    assert index["index_version"] == "v1" and index["faces"] == 48 and index["people"] == 6
    metrics = metadata(first, "index_metrics")
    assert metrics["status"] == "ok" and metrics["rank1_accuracy"] >= 0.9
    written = json.loads((settings.home / "index" / "v1" / "metrics.json").read_text())
    assert written["rank1_accuracy"] == metrics["rank1_accuracy"] and written["index_version"] == "v1"
    # The per-person table, for the UI (the plot is drawn after the retrain: test_the_evaluation_plot_...).
    assert "evaluation_plot" not in metrics
    people = metrics["per_person"].records
    assert len(people) == written["probe_people"] and sum(r.data["probes"] for r in people) == written["probe_faces"]
    assert {r.data["person"] for r in people} <= {p.name.replace("_", " ") for p in small_faces.iterdir()} | {
        p.name for p in small_faces.iterdir()}
    # Lineage: the version keeps every row the retrain read, and what became of it.
    assert index["photos"] == 51 and index["partial"] is False  # the photos of the dataset, 3 of them unusable
    snapshot = pq.read_table(settings.home / "index" / "v1" / "dataset.parquet").to_pylist()
    assert len(snapshot) == 51 and sum(r["embedding"] == "indexed" for r in snapshot) == 48
    failed = [r for r in snapshot if r["embedding"] == "failed"]
    assert len(failed) == 3 and all(r["embedding_error"] and r["status"] == "kept" for r in failed)
    manifest = index["manifest"]
    assert manifest["code_versions"]["face_index"] == "3" and manifest["software"]["dagster"] == "1.13.27"
    assert manifest["model"]["model_sha256"] and manifest["dataset_fingerprint"] == faces["dataset_fingerprint"]
    [materialization] = first.asset_materializations_for_node("face_index")
    assert materialization.tags["dagster/data_version"] == manifest["content_fingerprint"]

    second = run(settings, instance)
    assert second.success
    assert metadata(second, "cached_photos")["fetched"] == 0
    again = metadata(second, "face_embeddings")
    assert (again["faces_embedded"], again["faces_reused"], again["faces_failed_before"]) == (0, 48, 1)
    assert metadata(second, "face_index")["index_version"] == "v2"
    assert (settings.home / "index" / "v1" / "index.bin").is_file()  # the old version is untouched

    full = run(settings, instance, mode="full")
    assert metadata(full, "face_embeddings")["faces_embedded"] == 48
    assert metadata(full, "face_index")["index_version"] == "v3"


def test_a_single_person_is_stopped_by_the_dataset_check_before_any_photo_is_fetched(settings, instance, small_faces: Path):
    for person in sorted(small_faces.iterdir())[1:]:
        for photo in person.iterdir():
            photo.unlink()
        person.rmdir()
    result = run(settings, instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "verified_faces"  # the dataset is materialized, its check (in the same step) blocks
    [check] = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == ("dataset_valid", False)
    assert check.description == "need at least 2 people with verified faces, found 1"
    assert first_error(result) == "check dataset_valid failed: need at least 2 people with verified faces, found 1"
    assert not (settings.home / "photos").exists()
    # materialize() runs the implicit asset job, which has no failure hook: it must open no session
    # that nothing would close.
    assert not (settings.home / "history").exists()


def test_an_unknown_mode_is_rejected_at_launch(settings, instance):
    from dagster import DagsterInvalidConfigError

    with pytest.raises(DagsterInvalidConfigError, match="sometimes"):
        run(settings, instance, mode="sometimes")
    assert not settings.home.exists()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"min_faces_per_person": 0}, "min_faces_per_person: must be at least 1"),
        ({"event_ids": ["not-a-uuid"]}, "event_ids[0]: 'not-a-uuid' is not a UUID"),
        ({"date_from": "2024-05-01", "date_to": "2024-01-01"}, "date_from: 2024-05-01 is after date_to"),
        ({"context_weight": 1.5}, "context_weight: must be between 0 and 1"),
        ({"target_far": 0}, "target_far: must be strictly between 0 and 1"),
    ],
)
def test_a_bad_option_fails_the_run_naming_the_field_before_any_work(settings, instance, options, field):
    result = run(settings, instance, **options)
    assert not result.success
    assert field in _errors(result)
    assert not (settings.home / "photos").exists() and not (settings.home / "history").exists()


def _errors(result) -> str:
    """Every error message of the run's failure events, causes included."""
    texts = []
    for event in result.all_events:
        if event.is_failure or event.event_type_value in ("RUN_FAILURE", "ENGINE_EVENT"):
            data = event.event_specific_data
            error = getattr(data, "error", None)
            while error is not None:
                texts.append(error.message)
                error = error.cause
    return "\n".join(texts)


def test_the_evaluation_plot_is_drawn_once_after_each_new_evaluation_outside_the_retrain(settings, instance):
    """The retrain does not wait for the picture: the automation sensor's condition asks for it once
    after an evaluation (not again), and the plot lands beside that evaluation."""
    from dagster import AssetKey, evaluate_automation_conditions

    from assets import evaluation_plot, report_assets

    defs = build_definitions(settings)
    assert "evaluation_plot" not in {key.to_user_string() for key in defs.resolve_job_def("retrain").asset_layer.asset_graph.get_all_asset_keys()}
    before = evaluate_automation_conditions(defs=defs, instance=instance)  # the sensor's tick before any retrain
    assert before.total_requested == 0  # nothing evaluated yet, nothing to draw
    first = run(settings, instance)
    assert first.success and not first.asset_materializations_for_node("evaluation_plot")
    asked = evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    assert asked.get_requested_partitions(AssetKey("evaluation_plot")) == {None}
    plotted = materialize([*retrain_assets, *report_assets], resources=defs.resources, instance=instance, selection=[evaluation_plot])
    assert plotted.success
    plot = metadata(plotted, "evaluation_plot")
    assert plot["index_version"] == "v1" and plot["plotted"] is True
    assert plot["evaluation_plot"].startswith("![v1: threshold sweep and ROC](data:image/png;base64,")
    assert Path(plot["evaluation_plot_path"]) == settings.home / "index" / "v1" / "evaluations" / f"{first.run_id}.png"
    assert Path(plot["evaluation_plot_path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = evaluate_automation_conditions(defs=defs, instance=instance, cursor=asked.cursor)
    assert again.total_requested == 0  # drawn once for this evaluation


def test_index_metrics_can_be_evaluated_again_alone_and_each_evaluation_is_kept(settings, instance):
    from assets import index_metrics

    first = run(settings, instance)
    assert first.success
    version = settings.home / "index" / "v1"
    manifest = json.loads((version / "manifest.json").read_text())
    embeddings_model = {k: v.value for k, v in first.asset_materializations_for_node("face_embeddings")[0].metadata.items()}
    assert manifest["model"]["model_fingerprint"] == embeddings_model["model_fingerprint"]
    assert manifest["model"]["model_pack"] == "buffalo_sc"

    again = materialize(
        retrain_assets,
        resources=build_definitions(settings).resources,
        instance=instance,
        run_config={"resources": {"retrain_options": {"config": {"target_far": 0.05}}}},
        selection=[index_metrics],
    )
    assert again.success  # upstream outputs are loaded from disk: the index version by its number
    assert metadata(again, "index_metrics")["index_version"] == "v1"
    evaluations = sorted(p.stem for p in (version / "evaluations").glob("*.json"))
    assert evaluations == sorted([first.run_id, again.run_id])
    assert json.loads((version / "metrics.json").read_text())["target_far"] == 0.05
    assert not (settings.home / "index" / "v2").exists()


def test_a_filtered_retrain_is_kept_for_inspection_but_not_promoted(settings, instance):
    import pyarrow.parquet as pq

    from facepipeline.index import IndexStore

    assert run(settings, instance).success
    store = IndexStore(settings.home / "index")
    assert store.promoted().name == "v1"
    people = sorted(set(pq.read_table(settings.home / "tables" / "verified_faces.parquet").column("person_id").to_pylist()))
    filtered = run(settings, instance, person_ids=people[:3])
    assert filtered.success
    promoted = metadata(filtered, "promoted_index")
    assert (promoted["candidate_version"], promoted["promoted_version"], promoted["switched"]) == ("v2", "v1", False)
    assert "filtered" in promoted["reason"]
    assert store.promoted().name == "v1" and store.get(2).manifest["people"] == 3

    full = run(settings, instance)
    assert metadata(full, "promoted_index")["switched"] and store.promoted().name == "v3"
    assert [p["version"] for p in store.promotions()] == [1, 3]


def test_each_writing_asset_alone_is_refused_beside_a_retrain_that_holds_the_claim(settings, instance):
    """A run that selects only a downstream asset starts with that step: each writing step claims
    the run, so none writes beside another retrain in progress (here a live run holding the claim)."""
    import uuid

    from dagster import DagsterRun, DagsterRunStatus

    from assets import cached_photos, face_descriptors, face_index, index_metrics, promoted_index, training_session
    from jobs.run_guard import CLAIM_TAG, PROCESS_TAG, this_process

    assert run(settings, instance).success
    resources = build_definitions(settings).resources
    holder_id = str(uuid.uuid4())
    holder = instance.add_run(DagsterRun(
        job_name="retrain", run_id=holder_id, status=DagsterRunStatus.STARTED,
        tags={PROCESS_TAG: this_process(), CLAIM_TAG: holder_id},  # this process is alive: the claim is held
    ))
    for asset in (cached_photos, face_index, index_metrics, promoted_index, face_descriptors, training_session):
        refused = materialize(retrain_assets, resources=resources, instance=instance, selection=[asset], raise_on_error=False)
        assert not refused.success, asset.key
        [failure] = refused.get_step_failure_events()
        assert failure.step_key == asset.key.to_user_string()
        assert f"another retrain is in progress: run {holder.run_id}" in failure.step_failure_data.error.message
        assert refused.get_asset_materialization_events() == []
    assert sorted(p.name for p in (settings.home / "index").glob("v*")) == ["v1"]  # no version published
    instance.report_run_failed(instance.get_run_by_id(holder.run_id), "test over")
    assert materialize(retrain_assets, resources=resources, instance=instance, selection=[face_index]).success
    assert sorted(p.name for p in (settings.home / "index").glob("v*")) == ["v1", "v2"]


def test_many_warnings_are_one_log_line_that_says_how_many_it_leaves_out():
    faces = [f"face-{n} (relabelled)" for n in range(23)]
    line = one_line("23 faces changed in the gallery during the run, not written", faces)
    assert line.startswith("23 faces changed in the gallery during the run, not written: face-0 (relabelled); face-1")
    assert line.endswith("face-19 (relabelled); and 3 more") and "face-20" not in line
    assert one_line("2 people", ["a", "b"]) == "2 people: a; b"  # nothing left out, nothing said about it
