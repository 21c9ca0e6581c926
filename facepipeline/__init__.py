"""facepipeline: turn confirmed face labels into a versioned face-recognition index.

The domain core. Plain Python, no orchestration imports: a user who never heard of Dagster can

    from facepipeline.sources import open_source
    from facepipeline.model import FaceModel
    from facepipeline.embedding import embed_faces

and embed a folder of photos. The Dagster layer (``assets/``, ``jobs/``, ...) only wires this core.
"""

import os

__version__ = "0.1.0"

# Arrow's default allocator (mimalloc) keeps the memory a step frees for its own reuse, so a long
# run's resident memory only grows with the tables it has held (+100 MiB after 10,000 faces'
# vectors). The system allocator gives large blocks back when they are freed. It is chosen when
# pyarrow is first imported, so this must run before that; a value already set wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
