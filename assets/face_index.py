"""The face index: an immutable hnswlib version over the usable embeddings."""

import time

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from assets.errors import failures_explained
from facepipeline.dataset import dataset_fingerprint
from facepipeline.embedding_store import embedding_matrix, model_of, usable
from facepipeline.faces import table_to_faces
from facepipeline.index import FaceIndex, IndexVersion
from resources import ArtifactStoreResource


@asset(group_name="retrain", io_manager_key="index_io_manager", code_version="1", kinds={"python", "hnswlib"})
def face_index(
    context: AssetExecutionContext, verified_faces: pa.Table, face_embeddings: pa.Table, artifacts: ArtifactStoreResource
) -> Output[IndexVersion]:
    """Index every usable embedding (cosine) and publish it as the next version, index/vN."""
    rows = usable(face_embeddings)
    with failures_explained():
        model = model_of(face_embeddings)  # the model that made these vectors, not today's setting
    started = time.perf_counter()
    index = FaceIndex.build(embedding_matrix(rows), rows)
    build_seconds = time.perf_counter() - started
    version = artifacts.index_store().publish(
        index,
        {
            "model": model,
            "dataset_fingerprint": dataset_fingerprint(table_to_faces(verified_faces)),
            "faces": rows.num_rows,
            "people": len(set(rows.column("person_id").to_pylist())),
            "faces_failed": face_embeddings.num_rows - rows.num_rows,
            "run_id": context.run.run_id,
        },
    )
    context.log.info(f"published index {version.name} with {len(index)} faces at {version.path}")
    return Output(
        version,
        metadata={
            "index_version": version.name,
            "index_path": MetadataValue.path(str(version.path)),
            "faces": version.manifest["faces"],
            "people": version.manifest["people"],
            "faces_failed": version.manifest["faces_failed"],
            "index_bytes": (version.path / "index.bin").stat().st_size,
            "build_seconds": round(build_seconds, 3),
            "model_fingerprint": MetadataValue.text(model["model_fingerprint"] if model else "none"),
            "dataset_fingerprint": MetadataValue.text(version.manifest["dataset_fingerprint"]),
            "manifest": MetadataValue.json(version.manifest),
        },
    )
