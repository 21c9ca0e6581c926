"""Detect, align and embed faces with an InsightFace pack (SCRFD + ArcFace) on onnxruntime."""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from facepipeline.geometry import BBox
from facepipeline.model.alignment import norm_crop
from facepipeline.model.pack import DETECTION, RECOGNITION, ModelPack, open_pack
from facepipeline.model.scrfd import Scrfd

# Around a known box the detector looks at a region 1.5 times the box's size (a quarter of the box
# of margin on every side), resized so the face is about 85 px: SCRFD's sweet spot, and ~25x
# cheaper than the whole photo at 640 x 640. Measured on 692 LFW photos against a full 640 pass:
# the same faces found, landmarks within 1.1 px, as with a 2x region at 160 px for 0.64 of its cost.
REGION_SCALE = 1.5


@dataclass(frozen=True)
class RecognizerGraph:
    """What the recognizer's ONNX graph says about how to call it."""

    input_mean: float
    input_std: float
    """Pixels go in as ``(value - input_mean) / input_std``: 127.5 and 127.5 unless the graph
    normalises them itself (a Sub and a Mul among its first nodes, as InsightFace's ArcFaceONNX
    decides), then 0 and 1."""
    dynamically_quantized: bool
    """Its int8 scales are picked per call from the whole batch (DynamicQuantizeLinear)."""

    @classmethod
    def read(cls, path: Path) -> RecognizerGraph:
        import onnx

        nodes = onnx.load(str(path), load_external_data=False).graph.node
        first = [node.name for node in nodes[:8]]
        normalises = any(n.startswith(("Sub", "_minus")) for n in first) and any(n.startswith(("Mul", "_mul")) for n in first)
        return cls(
            input_mean=0.0 if normalises else 127.5,
            input_std=1.0 if normalises else 127.5,
            dynamically_quantized=any(node.op_type == "DynamicQuantizeLinear" for node in nodes),
        )


@dataclass(frozen=True)
class _Runtime:
    detector: Scrfd
    recognizer: RecognizerGraph
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
        self.input_size = int(sessions[RECOGNITION].get_inputs()[0].shape[3])
        """The recognizer's square input, in pixels."""
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
        """The detector's decoding and what the recognizer's graph says, read once, on first use:
        a process that loads the model only for its fingerprint (a retrain with nothing new) never
        reads the graphs."""
        if self._runtime is None:
            with self._runtime_lock:
                if self._runtime is None:
                    detector = Scrfd(self.pack.detector.path, self.sessions[DETECTION], det_thresh=self.det_thresh)
                    detector.session_for(self.region_det_size)  # the size every verified box uses
                    recognizer = RecognizerGraph.read(self.pack.recognizer.path)
                    # A dynamically quantised recognizer picks its int8 scales per call, from the
                    # whole batch: a face's embedding would then depend on its batch-mates (cosine
                    # down to 0.975 measured). Such a model runs one face per call, so an embedding
                    # depends on its face alone.
                    per_call = 1 if recognizer.dynamically_quantized else self.batch_size
                    self._runtime = _Runtime(detector, recognizer, per_call)
        return self._runtime

    @property
    def faces_per_call(self) -> int:
        return self._ready().faces_per_call

    @property
    def detector(self) -> Scrfd:
        return self._ready().detector

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Every face on a whole photo."""
        # Sizes come in steps of 160 px: the detector keeps one onnxruntime session per input size,
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
        boxes, landmarks = self.detector.detect(image, size)
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
        return norm_crop(image, detection.landmarks, self.input_size)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings of aligned BGR crops, shape (N, 112, 112, 3) -> (N, dim)."""
        if len(crops) == 0:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        runtime = self._ready()
        session = self.sessions[RECOGNITION]
        blob = crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
        blob = np.ascontiguousarray((blob - runtime.recognizer.input_mean) / runtime.recognizer.input_std)
        name, step = session.get_inputs()[0].name, runtime.faces_per_call
        raw = np.concatenate([session.run(None, {name: blob[i : i + step]})[0] for i in range(0, len(blob), step)])
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return (raw / np.maximum(norms, 1e-12)).astype(np.float32)


def _nearest_centre(detections: list[Detection], width: int, height: int) -> Detection | None:
    if not detections:
        return None
    return min(detections, key=lambda d: (d.bbox.center[0] - width / 2) ** 2 + (d.bbox.center[1] - height / 2) ** 2)


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, int(math.ceil(value / multiple)) * multiple)
