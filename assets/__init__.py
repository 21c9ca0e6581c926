"""The pipeline as software-defined assets.

Retrain (group ``retrain``):
verified_faces -> cached_photos -> face_embeddings -> face_index -> index_metrics -> promoted_index
                                                   +-> face_descriptors (written back to the gallery)
all of them -> training_session (the run's record in face_training_sessions)
Blocking checks: dataset_valid, embeddings_sane, index_consistent, no_regression (assets/checks.py).

Reports (group ``reports``, drawn after a retrain, not part of it):
index_metrics -> evaluation_plot

Use the model (group ``recognize``):
promoted_index -> face_suggestions (one partition per event) -> unknown_face_clusters
"""

from assets.cached_photos import cached_photos
from assets.checks import dataset_valid, embeddings_sane, index_consistent, no_regression, retrain_checks
from assets.evaluation_plot import evaluation_plot
from assets.face_descriptors import face_descriptors
from assets.face_embeddings import face_embeddings
from assets.face_index import face_index
from assets.face_suggestions import face_suggestions
from assets.index_metrics import index_metrics
from assets.promoted_index import promoted_index
from assets.training_session import training_session
from assets.unknown_face_clusters import unknown_face_clusters
from assets.verified_faces import verified_faces

retrain_assets = [
    verified_faces, cached_photos, face_embeddings, face_index, index_metrics, promoted_index, face_descriptors,
    training_session,
]
recognize_assets = [face_suggestions, unknown_face_clusters]
report_assets = [evaluation_plot]

__all__ = [
    "cached_photos", "dataset_valid", "evaluation_plot", "embeddings_sane", "index_consistent", "no_regression", "retrain_checks", "face_descriptors", "face_embeddings", "face_index", "face_suggestions", "index_metrics",
    "promoted_index", "recognize_assets", "report_assets", "retrain_assets", "training_session", "unknown_face_clusters", "verified_faces",
]
