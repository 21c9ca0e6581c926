"""The retrain's quality gates as blocking asset checks: a failed one stops what depends on its asset.

dataset_valid (verified_faces) -> embeddings_sane (face_embeddings) -> index_consistent (face_index)
-> no_regression (index_metrics). When one fails, the new index version stays on disk for
inspection, but ``promoted_index`` does not run: recognition keeps the version it had.

The first two are checks of their own (a step each, after their asset). The last two are declared
on their assets (``check_specs``) and evaluated in the asset's own step, on the version it has just
published and the evaluation it has just made: the same gates, blocking the same way, without a
step that loads the index, the embeddings or the evaluation again (on an incremental retrain those
steps cost more than the checks themselves).
"""

import pyarrow as pa
from dagster import AssetCheckResult, asset_check

from assets.errors import failures_explained
from assets.face_embeddings import face_embeddings
from assets.face_index import INDEX_CONSISTENT as index_consistent
from assets.gates import check_result as _result
from assets.index_metrics import NO_REGRESSION as no_regression
from assets.verified_faces import verified_faces
from facepipeline.faces import facts_of, table_to_faces
from facepipeline.quality import dataset_gate, embeddings_gate
from resources import FaceModelResource


@asset_check(asset=verified_faces, blocking=True, description="At least two people, each with the minimum number of faces; no face twice.")
def dataset_valid(verified_faces: pa.Table) -> AssetCheckResult:
    minimum = facts_of(verified_faces).get("min_faces_per_person") or 1
    return _result(dataset_gate(table_to_faces(verified_faces), minimum))


@asset_check(
    asset=face_embeddings,
    blocking=True,
    description="The recognizer's dimension, finite, unit length, one row per face, at least one usable vector.",
)
def embeddings_sane(face_embeddings: pa.Table, face_model: FaceModelResource) -> AssetCheckResult:
    with failures_explained():
        dim = face_model.load().embedding_dim
    return _result(embeddings_gate(face_embeddings, dim))


retrain_checks = [dataset_valid, embeddings_sane]
"""The checks that are steps of their own; index_consistent and no_regression come with their assets."""

__all__ = ["dataset_valid", "embeddings_sane", "index_consistent", "no_regression", "retrain_checks"]
