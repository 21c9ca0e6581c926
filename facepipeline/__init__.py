"""facepipeline: turn confirmed face labels into a versioned face-recognition index.

The domain core. Plain Python, no orchestration imports: a user who never heard of Dagster can

    from facepipeline.sources import open_source
    from facepipeline.model import FaceModel
    from facepipeline.embedding import embed_faces

and embed a folder of photos. The Dagster layer (``assets/``, ``jobs/``, ...) only wires this core.
"""

__version__ = "0.1.0"
