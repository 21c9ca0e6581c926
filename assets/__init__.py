"""The retrain, as software-defined assets:

verified_faces -> cached_photos -> face_embeddings -> face_index -> index_metrics
"""

from assets.cached_photos import cached_photos
from assets.face_embeddings import face_embeddings
from assets.face_index import face_index
from assets.index_metrics import index_metrics
from assets.verified_faces import verified_faces

retrain_assets = [verified_faces, cached_photos, face_embeddings, face_index, index_metrics]

__all__ = ["cached_photos", "face_embeddings", "face_index", "index_metrics", "retrain_assets", "verified_faces"]
