"""The retrain, as software-defined assets:

verified_faces -> cached_photos -> face_embeddings -> face_index -> index_metrics
                                                   +-> face_descriptors (written back to the gallery)
all of them -> training_session (the run's record in face_training_sessions)
"""

from assets.cached_photos import cached_photos
from assets.face_descriptors import face_descriptors
from assets.face_embeddings import face_embeddings
from assets.face_index import face_index
from assets.index_metrics import index_metrics
from assets.training_session import training_session
from assets.verified_faces import verified_faces

retrain_assets = [
    verified_faces, cached_photos, face_embeddings, face_index, index_metrics, face_descriptors, training_session,
]

__all__ = [
    "cached_photos", "face_descriptors", "face_embeddings", "face_index", "index_metrics", "retrain_assets",
    "training_session", "verified_faces",
]
