"""The embedding stage split by event: the plan, the reassembly, and a real multiprocess run.

The last test runs ``face_embeddings`` on Dagster's multiprocess executor against the real gallery
(Postgres seeded with real photos over HTTP, the real model) and compares it with the in-process
run, face by face.
"""

import numpy as np
import pyarrow as pa
import pytest
from dagster import AssetKey, DagsterEventType, execute_job, reconstructable

from facepipeline.embedding_shards import combine, plan_shards, shard_key, total_report
from facepipeline.embedding_store import EmbeddingReport
from facepipeline.faces import VerifiedFace


def faces_by_event(counts: dict[str | None, int]) -> list[VerifiedFace]:
    return [
        VerifiedFace(f"{event}-{i}", "p", "P", f"http://x/{event}/{i}.jpg", None, event_id=event)
        for event, count in counts.items() for i in range(count)
    ]


def test_one_shard_per_event_with_work_and_none_for_events_fully_reused():
    faces = faces_by_event({"e1": 5, "e2": 3, None: 2, "e4": 4})
    pending = [f.face_id for f in faces if f.event_id != "e4"]  # e4's faces are all reused
    shards = plan_shards(faces, pending, max_shards=8)
    assert [(s.event_ids, len(s.face_ids)) for s in shards] == [(("e1",), 5), (("e2",), 3), ((None,), 2)]
    assert {s.key for s in shards} == {"event_e1", "event_e2", "event_no_event"}
    assert sorted(i for s in shards for i in s.face_ids) == sorted(pending)


def test_more_events_than_shards_are_packed_largest_first_into_the_least_loaded():
    faces = faces_by_event({"a": 9, "b": 7, "c": 4, "d": 3, "e": 2, "f": 1})
    shards = plan_shards(faces, [f.face_id for f in faces], max_shards=2)
    assert len(shards) == 2
    loads = sorted(len(s.face_ids) for s in shards)
    assert loads == [13, 13]  # a+d+f / b+c+e: the LPT rule balances this case exactly
    assert sorted(e for s in shards for e in s.event_ids) == list("abcdef")
    assert all(s.key.startswith("events_") for s in shards)
    with pytest.raises(ValueError, match="at least 1"):
        plan_shards(faces, [], max_shards=0)


def test_a_little_work_is_not_spread_over_steps_that_cost_more_than_it():
    faces = faces_by_event({"a": 9, "b": 7, "c": 4, "d": 3, "e": 2, "f": 1})
    everything = [f.face_id for f in faces]
    assert len(plan_shards(faces, everything, max_shards=16, min_faces=100)) == 1  # 26 faces: one step
    shards = plan_shards(faces, everything, max_shards=16, min_faces=10)  # two steps of ~13
    assert sorted(len(s.face_ids) for s in shards) == [13, 13]
    assert len(plan_shards(faces, everything, max_shards=16, min_faces=1)) == 6
    with pytest.raises(ValueError, match="at least 1"):
        plan_shards(faces, everything, max_shards=2, min_faces=0)


def test_shard_keys_are_step_key_safe():
    assert shard_key(["0b9c1e7a-4a5e-4c1d-9d35-2f6c1e0b9a77"]) == "event_0b9c1e7a_4a5e_4c1d_9d35_2f6c1e0b9a77"
    assert shard_key([None, "x-y"]) == "events_no_event_and_1_more"


def test_combine_restores_the_faces_order_and_refuses_gaps_and_doubles():
    faces = faces_by_event({"e1": 2, "e2": 2})
    part = lambda ids: pa.table({"face_id": ids, "value": [f"v{i}" for i in ids]})  # noqa: E731
    table = combine([part(["e2-1", "e1-0"]), part(["e2-0", "e1-1"])], faces)
    assert table.column("face_id").to_pylist() == ["e1-0", "e1-1", "e2-0", "e2-1"]
    assert table.column("value").to_pylist() == ["ve1-0", "ve1-1", "ve2-0", "ve2-1"]
    with pytest.raises(ValueError, match="1 missing"):
        combine([part(["e1-0", "e1-1", "e2-0"])], faces)
    with pytest.raises(ValueError, match="two shards"):
        combine([part(["e1-0", "e1-1"]), part(["e1-1", "e2-0", "e2-1"])], faces)


def test_reports_add_up():
    a = EmbeddingReport(faces_total=3, embedded=2, failed=1, seconds=1.5, failure_reasons={"no_face_in_box": 1})
    b = EmbeddingReport(faces_total=4, embedded=3, reused=1, failed=1, failed_before=1, seconds=2.0,
                        failure_reasons={"no_face_in_box": 1, "photo_unreadable": 1})
    total = total_report([a, b])
    assert (total.faces_total, total.embedded, total.reused, total.failed, total.failed_before) == (7, 5, 1, 2, 1)
    assert total.seconds == pytest.approx(3.5)
    assert total.failure_reasons == {"no_face_in_box": 2, "photo_unreadable": 1}


def retrain_job():
    """The code location's retrain job, rebuilt from the environment in each step's own process."""
    import definitions

    return definitions.defs.resolve_job_def("retrain")


def test_events_embed_in_parallel_processes_and_match_the_in_process_run(seeded_gallery, settings, tmp_path, monkeypatch):
    from dagster import DagsterInstance

    from definitions import build_definitions
    from facepipeline.settings import Settings
    from resources import ArtifactStoreResource, table_name

    dsn, _ = seeded_gallery
    home = tmp_path / "home"
    for name, value in {"FACEPIPELINE_HOME": str(home), "FACEPIPELINE_SOURCE": "postgres", "SUPABASE_DB_URL": dsn,
                        "FACEPIPELINE_MODEL_ROOT": str(settings.model_root), "FACEPIPELINE_MODEL": settings.model_pack,
                        "FACEPIPELINE_EMBED_WORKERS": "1"}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "dagster").mkdir()
    tables = ArtifactStoreResource(home=str(home)).tables()
    with DagsterInstance.local_temp(str(tmp_path / "dagster"), overrides={"telemetry": {"enabled": False}}) as instance:
        job = build_definitions(Settings.from_env()).resolve_job_def("retrain")
        upstream = [AssetKey(name) for name in ("verified_faces", "cached_photos", "face_embeddings")]
        assert job.execute_in_process(instance=instance, asset_selection=upstream).success  # every step in this process
        in_process = tables.read(table_name(AssetKey("face_embeddings")))

        run_config = {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}},
                      "resources": {"retrain_options": {"config": {"mode": "full"}}},
                      "ops": {"face_embeddings": {"ops": {"split_by_event": {"config": {"min_faces_per_shard": 1}}}}}}
        with execute_job(reconstructable(retrain_job), instance, run_config=run_config,
                         asset_selection=[AssetKey("face_embeddings")]) as result:
            assert result.success
            run_id = result.run_id
        starts = instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
        multiprocess = tables.read(table_name(AssetKey("face_embeddings")))

    embed_steps = sorted(e.step_key for e in starts if ".embed_event[" in (e.step_key or ""))
    events = {row["event_id"] for row in in_process.to_pylist() if row["status"] == "ok"}
    assert len(embed_steps) == len(events) >= 2, embed_steps  # one step per event: all of them had work (mode=full)
    assert len({e.dagster_event.pid for e in starts}) == len(starts)  # every step in a process of its own
    assert multiprocess.column("face_id").to_pylist() == in_process.column("face_id").to_pylist()
    assert multiprocess.column("status").to_pylist() == in_process.column("status").to_pylist()
    ok = np.array([s == "ok" for s in in_process.column("status").to_pylist()])
    assert ok.sum() >= 30  # of the 43 verified faces of 6 x 8 photos
    a = np.array(multiprocess.column("embedding").to_pylist(), dtype=object)[ok]
    b = np.array(in_process.column("embedding").to_pylist(), dtype=object)[ok]
    cosines = [float(np.dot(x, y)) for x, y in zip(a, b, strict=True)]
    assert min(cosines) > 0.9999  # the same faces, the same vectors, whichever process embedded them
