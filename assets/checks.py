"""The retrain's quality gates as blocking asset checks: a failed one stops what depends on its asset.

dataset_valid (verified_faces) -> embeddings_sane (face_embeddings) -> index_consistent (face_index)
-> no_regression (index_metrics). When one fails, the new index version stays on disk for
inspection, but ``promoted_index`` does not run: recognition keeps the version it had.
"""

import pyarrow as pa
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetIn, MetadataValue, asset_check

from assets.errors import failures_explained
from assets.face_embeddings import face_embeddings
from assets.face_index import face_index
from assets.index_metrics import index_metrics
from assets.verified_faces import verified_faces
from facepipeline.faces import facts_of, table_to_faces
from facepipeline.index import IndexVersion
from facepipeline.quality import (
    GateResult,
    baseline_evaluation,
    dataset_gate,
    embeddings_gate,
    index_gate,
    regression_gate,
)
from resources import ArtifactStoreResource, FaceModelResource, FaceSourceResource


def _result(gate: GateResult, **metadata) -> AssetCheckResult:
    return AssetCheckResult(
        passed=gate.passed,
        description=gate.summary,
        metadata={"summary": MetadataValue.text(gate.summary), **gate.figures, **metadata},
    )


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


@asset_check(
    asset=face_index,
    blocking=True,
    additional_ins={"face_embeddings": AssetIn("face_embeddings")},
    description="The index holds exactly the usable embeddings, each face once with its label and vector; faces find themselves.",
)
def index_consistent(face_index: IndexVersion, face_embeddings: pa.Table) -> AssetCheckResult:
    gate = index_gate(face_index.load(), face_embeddings)
    face_index.record_check("index_consistent", {"passed": gate.passed, "summary": gate.summary, **gate.figures})
    return _result(gate, candidate_version=face_index.name)


@asset_check(
    asset=index_metrics,
    blocking=True,
    additional_ins={"face_index": AssetIn("face_index")},
    description="Rank-1 accuracy (micro and macro) no more than regression_tolerance below the promoted index's, "
    "both evaluated on the same held-out split.",
)
def no_regression(
    context: AssetCheckExecutionContext,
    index_metrics: dict,
    face_index: IndexVersion,
    face_source: FaceSourceResource,
    artifacts: ArtifactStoreResource,
) -> AssetCheckResult:
    with failures_explained():
        config, _ = artifacts.config_store(face_source.open().description, face_source.gallery()).load()
    promoted = artifacts.index_store().promoted()
    if promoted is not None and promoted.version == face_index.version:
        gate = GateResult(True, f"{face_index.name} is the promoted version", {"tolerance": config.regression_tolerance})
    else:
        baseline = baseline_evaluation(promoted, index_metrics["config"]) if promoted is not None else None
        gate = regression_gate(
            index_metrics, baseline, baseline_name=promoted.name if promoted else None, tolerance=config.regression_tolerance
        )
    (context.log.info if gate.passed else context.log.error)(f"{face_index.name}: {gate.summary}")
    face_index.record_check("no_regression", {"passed": gate.passed, "summary": gate.summary, **gate.figures})
    return _result(gate, candidate_version=face_index.name)


retrain_checks = [dataset_valid, embeddings_sane, index_consistent, no_regression]
