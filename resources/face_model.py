from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from facepipeline.model import FaceModel


class FaceModelResource(ConfigurableResource):
    """An InsightFace pack (SCRFD detector + ArcFace recognizer) on onnxruntime, loaded once per process."""

    pack: str = Field(description="Pack folder name under model_root, e.g. buffalo_l or buffalo_sc.")
    model_root: str = Field(description="Folder holding the packs (<root>/<pack>/*.onnx).")
    providers: list[str] = Field(
        default=["CPUExecutionProvider"],
        description="onnxruntime providers, most preferred first, e.g. ['CUDAExecutionProvider', 'CPUExecutionProvider'].",
    )
    det_size: int = Field(default=640, ge=160, le=2048, multiple_of=32, description="Largest detector input for whole photos (a multiple of 32).")
    region_det_size: int = Field(default=128, ge=64, le=1024, multiple_of=32, description="Detector input around a known face box (a multiple of 32).")
    det_thresh: float = Field(default=0.5, gt=0, lt=1, description="Minimum detector score.")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Faces per recognizer call.")
    workers: int = Field(default=0, ge=0, le=64, description="Parallel embedding workers; 0 = one per CPU core (1 on GPU).")

    _model: FaceModel | None = PrivateAttr(default=None)

    def load(self) -> FaceModel:
        """The model, loaded on first use: steps that never embed never pay for it."""
        if self._model is None:
            self._model = FaceModel.load(
                self.model_root,
                self.pack,
                providers=tuple(self.providers),
                workers=self.workers or None,
                det_size=self.det_size,
                region_det_size=self.region_det_size,
                det_thresh=self.det_thresh,
                batch_size=self.batch_size,
            )
        return self._model
