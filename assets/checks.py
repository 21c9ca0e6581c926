"""The retrain's quality gates as blocking asset checks: a failed one stops what depends on its asset.

dataset_valid (verified_faces) -> embeddings_sane (face_embeddings) -> index_consistent (face_index)
-> no_regression (index_metrics). When one fails, the new index version stays on disk for
inspection, but ``promoted_index`` does not run: recognition keeps the version it had.

``embeddings_sane`` is a check of its own (a step after the graph asset ``face_embeddings``, whose
table is written by its last op). The other three are declared on their assets (``check_specs``)
and evaluated in the asset's own step, on the set it has just read, the version it has just
published and the evaluation it has just made: the same gates, blocking the same way, without a
step that loads the dataset, the index or the evaluation again (on an incremental retrain such
steps cost more than the checks themselves).
"""

import pyarrow as pa
from dagster import AssetCheckResult, asset_check

from assets.errors import failures_explained
from assets.face_embeddings import face_embeddings
from assets.face_index import INDEX_CONSISTENT as index_consistent
from assets.gates import check_result as _result
from assets.index_metrics import NO_REGRESSION as no_regression
from assets.verified_faces import DATASET_VALID as dataset_valid
from facepipeline.quality import embeddings_gate
from resources import FaceModelResource


@asset_check(
    asset=face_embeddings,
    blocking=True,
    description="The recognizer's dimension, finite, unit length, one row per face, at least one usable vector.",
)
def embeddings_sane(face_embeddings: pa.Table, face_model: FaceModelResource) -> AssetCheckResult:
    with failures_explained():
        dim = face_model.load().embedding_dim
    return _result(embeddings_gate(face_embeddings, dim))


retrain_checks = [embeddings_sane]
"""The checks that are steps of their own; the other three come with their assets."""

__all__ = ["dataset_valid", "embeddings_sane", "index_consistent", "no_regression", "retrain_checks"]
