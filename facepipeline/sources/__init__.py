"""Where verified faces come from.

``open_source("folder:/photos/people")`` returns a :class:`FaceSource`; every source yields the
same :class:`~facepipeline.faces.VerifiedFace` records.
"""

from facepipeline.sources.base import FaceSource, open_source
from facepipeline.sources.folder import FolderSource

__all__ = ["FaceSource", "FolderSource", "open_source"]
