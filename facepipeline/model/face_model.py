"""Detect, align and embed faces with an InsightFace pack (SCRFD + ArcFace) on onnxruntime."""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from facepipeline.geometry import BBox
from facepipeline.model.pack import DETECTION, RECOGNITION, ModelPack, open_pack

# insightface 2.1 calls a scikit-image API that warns on every alignment; the result is unchanged.
warnings.filterwarnings("ignore", message=r"`estimate` is deprecated", category=FutureWarning)

# Around a known box the detector looks at a region 1.5 times the box's size (a quarter of the box
# of margin on every side), resized so the face is about 85 px: SCRFD's sweet spot, and ~25x
# cheaper than the whole photo at 640 x 640. Measured on 692 LFW photos against a full 640 pass:
# the same faces found, landmarks within 1.1 px, as with a 2x region at 160 px for 0.64 of its cost.
REGION_SCALE = 1.5


@dataclass(frozen=True)
class _Runtime:
    detector: Any
    """insightface's SCRFD on our detector session."""
    recognizer: Any
    """insightface's ArcFaceONNX on our recognizer session."""
    norm_crop: Callable[..., np.ndarray]
    faces_per_call: int


@dataclass(frozen=True)
class Detection:
    bbox: BBox
    score: float
    landmarks: np.ndarray
    """Five points (eyes, nose, mouth corners), shape (5, 2), in photo pixels."""


class FaceModel:
    """One detector and one recognizer of a pack, ready to use.

    ``det_size`` bounds the detector's input for whole photos (never upsampling a small photo);
    ``region_det_size`` is the input used around a known box.
    """

    def __init__(
        self,
        pack: ModelPack,
        sessions: dict[str, ort.InferenceSession],
        *,
        det_size: int = 640,
        region_det_size: int = 128,
        det_thresh: float = 0.5,
        batch_size: int = 32,
        workers: int = 1,
    ) -> None:
        for name, size in (("det_size", det_size), ("region_det_size", region_det_size)):
            if size < 64 or size % 32:
                raise ValueError(f"{name} must be a multiple of 32 and at least 64 (SCRFD's largest stride), got {size}")
        self.pack = pack
        self.sessions = sessions
        self.workers = max(1, workers)
        self.det_thresh = det_thresh
        self.det_size = det_size
        self.region_det_size = region_det_size
        self.batch_size = batch_size
        self.embedding_dim = int(sessions[RECOGNITION].get_outputs()[0].shape[-1])
        self._runtime_lock = threading.Lock()
        self._runtime: _Runtime | None = None

    @classmethod
    def load(
        cls,
        model_root: Path,
        pack: str,
        *,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        workers: int | None = None,
        intra_op_threads: int | None = None,
        **options,
    ) -> FaceModel:
        """Load a pack. On CPU the default is one worker per core, each session call single-threaded
        (measured faster than one call spread over the cores); on a GPU, one worker feeds big batches.

        On CPU ``workers`` is the number of threads the model may keep busy: each worker's calls run
        on one thread. A session that also spread each call over every core (onnxruntime's default)
        would oversubscribe the cores as soon as another process embeds beside it: two step processes
        of one worker each ran at ~15 faces/s each that way, where one alone ran at ~25.
        """
        on_cpu = providers[0] == "CPUExecutionProvider"
        if workers is None:
            workers = len(os.sched_getaffinity(0)) if on_cpu else 1  # the cores this process may use
        if intra_op_threads is None:
            intra_op_threads = 1 if on_cpu else 0
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3  # the int8 recognizer declares a [1, 512] output; batches are fine
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = intra_op_threads
        model_pack, sessions = open_pack(Path(model_root), pack, tuple(providers), session_options)
        return cls(model_pack, sessions, workers=workers, **options)

    @property
    def providers(self) -> list[str]:
        return list(self.sessions[RECOGNITION].get_providers())

    def prepare(self) -> None:
        """Make what detection and embedding need beyond the sessions now; raises when it cannot.

        ``embed_faces`` calls it before its workers start, so a broken install fails the stage
        instead of every face. Otherwise it happens at the first detection or embedding.
        """
        self._ready()

    def _ready(self) -> _Runtime:
        """insightface's SCRFD and ArcFace wrappers on our sessions and its alignment, and how many
        faces a recognizer call takes: made once, on first use. With SciPy and scikit-image behind
        it, importing insightface costs ~0.5 s, which a process that loads the model only for its
        fingerprint (a retrain with nothing new) never pays."""
        if self._runtime is None:
            with self._runtime_lock:
                if self._runtime is None:
                    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
                    from insightface.model_zoo.scrfd import SCRFD
                    from insightface.utils import face_align

                    detector = SCRFD(model_file=str(self.pack.detector.path), session=self.sessions[DETECTION])
                    detector.prepare(0, det_thresh=self.det_thresh, input_size=(self.det_size, self.det_size))
                    recognizer = ArcFaceONNX(model_file=str(self.pack.recognizer.path), session=self.sessions[RECOGNITION])
                    # A dynamically quantised recognizer picks its int8 scales per call, from the
                    # whole batch: a face's embedding would then depend on its batch-mates (cosine
                    # down to 0.975 measured). Such a model runs one face per call, so an embedding
                    # depends on its face alone.
                    per_call = 1 if is_dynamically_quantized(self.pack.recognizer.path) else self.batch_size
                    self._runtime = _Runtime(detector, recognizer, face_align.norm_crop, per_call)
        return self._runtime

    @property
    def faces_per_call(self) -> int:
        return self._ready().faces_per_call

    @property
    def detector(self):
        return self._ready().detector

    @property
    def recognizer(self):
        return self._ready().recognizer

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Every face on a whole photo."""
        # Sizes come in steps of 160 px: insightface keeps one onnxruntime session per input size,
        # so a few steps bound the sessions, and a small photo is never blown up to 640.
        long_side = max(image.shape[:2])
        size = min(self.det_size, _round_up(long_side, 160))
        return self._detect(image, size, offset=(0.0, 0.0))

    def detect_central(self, image: np.ndarray) -> Detection | None:
        """The face nearest the photo's centre (the labelled face of a portrait).

        A coarse pass at ``region_det_size`` finds the large faces of portraits cheaply; only when
        none of them sits in the central half of the photo does the full-size pass run.
        """
        height, width = image.shape[:2]
        for size in (self.region_det_size, None):
            detections = self._detect(image, size, offset=(0.0, 0.0)) if size else self.detect(image)
            nearest = _nearest_centre(detections, width, height)
            if nearest is not None:
                cx, cy = nearest.bbox.center
                if size is None or (abs(cx - width / 2) <= width / 4 and abs(cy - height / 2) <= height / 4):
                    return nearest
        return None

    def detect_near(self, image: np.ndarray, bbox: BBox) -> list[Detection]:
        """Faces in the region around a known box (the box grown ``REGION_SCALE`` times)."""
        height, width = image.shape[:2]
        region = bbox.expanded(REGION_SCALE).clipped(width, height)
        if region is None:
            return []
        x1, y1 = int(region.x), int(region.y)
        x2, y2 = int(math.ceil(region.x2)), int(math.ceil(region.y2))
        crop = image[y1:y2, x1:x2]
        return self._detect(crop, self.region_det_size, offset=(float(x1), float(y1)))

    def _detect(self, image: np.ndarray, size: int, offset: tuple[float, float]) -> list[Detection]:
        boxes, landmarks = self.detector.detect(image, input_size=(size, size))
        dx, dy = offset
        found = []
        for (x1, y1, x2, y2, score), points in zip(boxes, landmarks, strict=True):
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            found.append(
                Detection(
                    bbox=BBox.from_xyxy(x1 + dx, y1 + dy, x2 + dx, y2 + dy),
                    score=float(score),
                    landmarks=points + np.array([dx, dy], dtype=np.float32),
                )
            )
        return found

    def align(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """The 112 x 112 crop ArcFace was trained on: a similarity transform of the five landmarks."""
        runtime = self._ready()
        return runtime.norm_crop(image, landmark=detection.landmarks, image_size=runtime.recognizer.input_size[0])

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings of aligned BGR crops, shape (N, 112, 112, 3) -> (N, dim)."""
        if len(crops) == 0:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        blob = crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
        blob = np.ascontiguousarray((blob - self.recognizer.input_mean) / self.recognizer.input_std)
        step = self.faces_per_call
        raw = np.concatenate(
            [self.recognizer.session.run(None, {self.recognizer.input_name: blob[i : i + step]})[0] for i in range(0, len(blob), step)]
        )
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return (raw / np.maximum(norms, 1e-12)).astype(np.float32)


def is_dynamically_quantized(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type == "DynamicQuantizeLinear" for node in graph.node)


def _nearest_centre(detections: list[Detection], width: int, height: int) -> Detection | None:
    if not detections:
        return None
    return min(detections, key=lambda d: (d.bbox.center[0] - width / 2) ** 2 + (d.bbox.center[1] - height / 2) ** 2)


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, int(math.ceil(value / multiple)) * multiple)
