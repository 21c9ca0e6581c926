"""The face index: an immutable hnswlib version over the usable embeddings, with its lineage."""

import hashlib
import time
from dataclasses import replace

from collections.abc import Iterator

import pyarrow as pa
from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, DataVersion, MetadataValue, Output, asset

from assets.claims import claim_run
from assets.errors import failures_explained
from assets.gates import check_result
from assets.lineage import code_versions, software
from facepipeline.dataset import dataset_fingerprint
from facepipeline.embedding_store import model_of, usable, usable_matrix
from facepipeline.faces import facts_of, table_to_faces
from facepipeline.index import DATASET_FILE, IndexParams, IndexStore, IndexVersion, build_index
from facepipeline.quality import index_gate
from facepipeline.snapshots import snapshot_counts, with_embedding_outcome
from resources import ArtifactStoreResource, RetrainOptionsResource

INDEX_CONSISTENT = AssetCheckSpec(
    "index_consistent",
    asset="face_index",
    blocking=True,
    description="The index holds exactly the usable embeddings, each face once with its label and vector; faces find themselves.",
)


@asset(
    group_name="retrain", io_manager_key="index_io_manager", code_version="3", kinds={"python", "hnswlib"},
    check_specs=[INDEX_CONSISTENT],
)
def face_index(
    context: AssetExecutionContext,
    verified_faces: pa.Table,
    face_embeddings: pa.Table,
    artifacts: ArtifactStoreResource,
    retrain_options: RetrainOptionsResource,
) -> Iterator[Output[IndexVersion] | AssetCheckResult]:
    """Index every usable embedding (cosine) and publish it as the next version, index/vN.

    In incremental mode the latest version is copied and the new faces added to it, when it holds
    only faces that are still there with the same vectors; otherwise (and in full mode) the index
    is built from scratch. Either way the version holds every usable embedding. It keeps what made
    it: the dataset snapshot (every row read, and what became of each), the model pack and its file
    hashes, how the index was made, the code versions, the run and the training session.

    Its blocking check ``index_consistent`` reads the published version back from disk and compares
    it with the embeddings (facepipeline.quality.index_gate).
    """
    claim_run(context)
    with failures_explained():
        mode = retrain_options.options().mode
    rows = usable(face_embeddings.drop_columns(["embedding"]))  # labels and locations; the vectors apart
    with failures_explained():
        model = model_of(face_embeddings)  # the model that made these vectors, not today's setting
    facts = {"partial": False, "min_faces_per_person": None, **facts_of(verified_faces)}
    if "dataset_fingerprint" not in facts:  # a table written before tables carried their facts
        facts["dataset_fingerprint"] = dataset_fingerprint(table_to_faces(verified_faces))
    vectors = usable_matrix(face_embeddings)
    store = artifacts.index_store()
    started = time.perf_counter()
    index, how = build_index(vectors, rows, IndexParams(), base=None if mode == "full" else _base(store))
    if mode == "full":
        how = replace(how, reason="mode full")
    build_seconds = time.perf_counter() - started
    snapshot = artifacts.dataset_snapshots().read(facts["dataset_fingerprint"])
    dataset = with_embedding_outcome(snapshot, face_embeddings) if snapshot is not None else None
    session = artifacts.history().for_run(context.run.run_id)
    content = _content_fingerprint(rows, vectors)
    version = store.publish(
        index,
        {
            "model": model,
            "dataset_fingerprint": facts["dataset_fingerprint"],
            "content_fingerprint": content,
            "partial": facts["partial"],
            "min_faces_per_person": facts["min_faces_per_person"],
            "faces": rows.num_rows,
            "people": len(set(rows.column("person_id").to_pylist())),
            "faces_failed": face_embeddings.num_rows - rows.num_rows,
            "build": how.as_dict(),
            "dataset": snapshot_counts(dataset) if dataset is not None else None,
            "run_id": context.run.run_id,
            "training_session_id": session.id if session else None,
            "code_versions": code_versions(context),
            "software": software(),
        },
        dataset=dataset,
    )
    context.log.info(f"published index {version.name} with {len(index)} faces at {version.path}: {how.line()} in {build_seconds:.2f}s")
    manifest = version.manifest
    del index, vectors  # the check reads the published version back from disk
    gate = index_gate(version.load(), face_embeddings)
    version.record_check(INDEX_CONSISTENT.name, {"passed": gate.passed, "summary": gate.summary, **gate.figures})
    yield Output(
        version,
        data_version=DataVersion(content),
        metadata={
            "index_version": version.name,
            "index_path": MetadataValue.path(str(version.path)),
            "faces": manifest["faces"],
            "people": manifest["people"],
            "faces_failed": manifest["faces_failed"],
            "photos": (manifest["dataset"] or {}).get("photos", 0),
            "index_bytes": (version.path / "index.bin").stat().st_size,
            "build_seconds": round(build_seconds, 3),
            "build": MetadataValue.text(how.line()),
            "model_pack": MetadataValue.text(model["model_pack"] if model else "none"),
            "model_files": MetadataValue.json(
                {"recognizer_sha256": model["model_sha256"], "detector_sha256": model["detector_sha256"]} if model else {}
            ),
            "dataset_fingerprint": MetadataValue.text(manifest["dataset_fingerprint"]),
            "dataset_snapshot": MetadataValue.path(str(version.path / DATASET_FILE)),
            "training_session_id": MetadataValue.text(manifest["training_session_id"] or "none"),
            "partial": manifest["partial"],
            "manifest": MetadataValue.json(manifest),
        },
    )
    yield check_result(gate, INDEX_CONSISTENT.name, candidate_version=version.name)


def _base(store: IndexStore) -> IndexVersion | None:
    """The version an incremental build may extend: the latest one, unless its index check failed."""
    latest = store.latest()
    if latest is None or latest.checks().get("index_consistent", {}).get("passed") is False:
        return None
    return latest


def _content_fingerprint(rows: pa.Table, vectors) -> str:
    """The same faces, labels and vectors, the same fingerprint, whatever their order: the index's
    Dagster data version."""
    digest = hashlib.sha256()
    face_ids, person_ids = rows.column("face_id").to_pylist(), rows.column("person_id").to_pylist()
    for row in sorted(range(len(face_ids)), key=face_ids.__getitem__):
        digest.update(f"{face_ids[row]}|{person_ids[row]}\n".encode())
        digest.update(vectors[row].tobytes())
    return digest.hexdigest()[:16]
