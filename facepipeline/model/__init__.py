"""InsightFace models on onnxruntime: a pack (detector + recognizer) loaded from a folder."""

from facepipeline.model.face_model import Detection, FaceModel
from facepipeline.model.pack import ModelFile, ModelPack, find_pack_dir

__all__ = ["Detection", "FaceModel", "ModelFile", "ModelPack", "find_pack_dir"]
