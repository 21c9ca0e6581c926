"""SCRFD, InsightFace's face detector, on an onnxruntime session: boxes, scores and five landmarks.

The pre- and post-processing are InsightFace 2.1's ``model_zoo.scrfd.SCRFD``, step for step (the
same OpenCV resize and blob, the same anchor decoding, ordering and NMS, one fixed-shape session per
input size), so detections are bit for bit the same as the library's; ``tests/test_scrfd.py``
compares the two on real photos. It lives here because importing the ``insightface`` package loads
its whole application layer (``insightface.app`` and its liveness add-on, scikit-image's
transforms, SciPy's spatial module): 0.3-0.5 s in every process that detects a face, which is most
of an incremental retrain's model cost.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

INPUT_MEAN = 127.5
INPUT_STD = 128.0
NMS_THRESHOLD = 0.4

# Output layouts SCRFD exports come in: (scores, boxes[, landmarks]) per feature level.
_LAYOUTS = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}
_COMPONENT_WIDTHS = (1, 4, 10)  # a score, a box (4 distances), five landmarks (10 offsets)


class ScrfdError(RuntimeError):
    """A detector file that is not an SCRFD model with landmarks."""


class Scrfd:
    """Faces on an image: ``detect(image, size)`` -> ``(boxes (N, 5) x1 y1 x2 y2 score, landmarks (N, 5, 2))``.

    ``session`` is the detector's session as loaded; each input size gets a session of its own on
    a copy of the graph with every dimension fixed (as InsightFace 2.1 does), made on first use with
    the same options and providers.
    """

    def __init__(self, model_path: Path, session: ort.InferenceSession, *, det_thresh: float = 0.5) -> None:
        outputs = session.get_outputs()
        layout = _LAYOUTS.get(len(outputs))
        if layout is None or not layout[2]:
            raise ScrfdError(
                f"{model_path.name} is not an SCRFD detector with landmarks ({len(outputs)} outputs; "
                f"expected 9 or 15)"
            )
        if len(session.get_inputs()[0].shape) != 4 or any(len(output.shape) not in (2, 3) for output in outputs):
            raise ScrfdError(f"{model_path.name} is not an SCRFD detector: its input is not NCHW or an output is not 2-D or 3-D")
        self.model_path = Path(model_path)
        self.session = session
        self.det_thresh = det_thresh
        self.strides, self.anchors, _ = layout
        self.batched = len(outputs[0].shape) == 3
        self.input_name = session.get_inputs()[0].name
        self.output_names = [output.name for output in outputs]
        self.fixed_size = _fixed_size(session.get_inputs()[0].shape)
        self._sessions: dict[tuple[int, int], ort.InferenceSession] = {}
        if self.fixed_size is not None:
            self._sessions[self.fixed_size] = session
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Faces on a BGR image, letterboxed into a ``size`` x ``size`` input; in image pixels,
        best score first, overlaps suppressed."""
        input_size = self.fixed_size or (size, size)
        height, width = image.shape[:2]
        if height / width > input_size[1] / input_size[0]:
            new_height = input_size[1]
            new_width = int(new_height / (height / width))
        else:
            new_width = input_size[0]
            new_height = int(new_width * (height / width))
        scale = new_height / height
        canvas = np.zeros((input_size[1], input_size[0], 3), dtype=np.uint8)
        canvas[:new_height, :new_width, :] = cv2.resize(image, (new_width, new_height))
        scores, boxes, points = self._forward(canvas)
        if scores.size == 0:
            return np.empty((0, 5), dtype=np.float32), np.empty((0, 5, 2), dtype=np.float32)
        # Best score first, ties in anchor order. (InsightFace sorts once more over all its input
        # sizes; with one size that stable sort of sorted scores changes nothing.)
        order = np.argsort(-scores.ravel(), kind="stable")
        candidates = np.hstack((boxes / scale, scores)).astype(np.float32, copy=False)[order]
        points = (points / scale)[order]
        keep = _suppress_overlaps(candidates, NMS_THRESHOLD)
        return candidates[keep], points[keep]

    def _forward(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / INPUT_STD, canvas.shape[1::-1], (INPUT_MEAN,) * 3, swapRB=True)
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        outputs = self._session_for(canvas.shape[1::-1]).run(self.output_names, {self.input_name: blob})
        levels = len(self.strides)
        scores_list, boxes_list, points_list = [], [], []
        for level, stride in enumerate(self.strides):
            scores, distances, offsets = (outputs[level + levels * k] for k in range(3))
            if self.batched:
                scores, distances, offsets = scores[0], distances[0], offsets[0]
            centres = self._anchor_centres(blob.shape[2] // stride, blob.shape[3] // stride, stride)
            found = np.where(scores >= self.det_thresh)[0]
            boxes = _distance_to_box(centres, distances * stride)
            points = _distance_to_points(centres, offsets * stride).reshape((-1, 5, 2))
            scores_list.append(scores[found])
            boxes_list.append(boxes[found])
            points_list.append(points[found])
        return np.vstack(scores_list), np.vstack(boxes_list), np.vstack(points_list)

    def _anchor_centres(self, rows: int, columns: int, stride: int) -> np.ndarray:
        key = (rows, columns, stride)
        centres = self._centres.get(key)
        if centres is None:
            centres = np.stack(np.mgrid[:rows, :columns][::-1], axis=-1).astype(np.float32)
            centres = (centres * stride).reshape((-1, 2))
            if self.anchors > 1:
                centres = np.stack([centres] * self.anchors, axis=1).reshape((-1, 2))
            if len(self._centres) < 100:
                self._centres[key] = centres
        return centres

    def session_for(self, size: int) -> ort.InferenceSession:
        """The session that serves ``size`` x ``size`` inputs, made now if it is not yet."""
        return self._session_for(self.fixed_size or (size, size))

    def _session_for(self, input_size: tuple[int, int]) -> ort.InferenceSession:
        with self._lock:
            session = self._sessions.get(input_size)
            if session is None:
                session = self._sessions[input_size] = self._fixed_shape_session(input_size)
            return session

    def _fixed_shape_session(self, input_size: tuple[int, int]) -> ort.InferenceSession:
        """A session on the graph with this input size written into every input and output shape."""
        import onnx

        width, height = input_size
        model = onnx.load_model(str(self.model_path), load_external_data=True)
        inputs = {value.name: value for value in model.graph.input}
        dims = inputs[self.input_name].type.tensor_type.shape.dim
        _set_dim(dims[2], height)
        _set_dim(dims[3], width)
        levels = len(self.strides)
        for index, output in enumerate(model.graph.output):
            dims = output.type.tensor_type.shape.dim
            if len(dims) == 3:
                _set_dim(dims[0], 1)
            stride = self.strides[index % levels]
            _set_dim(dims[len(dims) - 2], (height // stride) * (width // stride) * self.anchors)
            _set_dim(dims[-1], _COMPONENT_WIDTHS[index // levels])
        providers = self.session.get_providers()
        options = self.session.get_provider_options()
        session = ort.InferenceSession(
            model.SerializeToString(),
            sess_options=self.session.get_session_options(),
            providers=providers,
            provider_options=[dict(options.get(provider, {})) for provider in providers],
        )
        # onnxruntime falls back to the CPU, with a warning only, when a provider cannot start.
        if session.get_providers() != providers:
            raise ScrfdError(
                f"the detector's {width}x{height} session runs on {session.get_providers()}, not {providers} "
                f"as the model was loaded"
            )
        if _fixed_size(session.get_inputs()[0].shape) != input_size:
            raise ScrfdError(f"the detector's {width}x{height} session does not take a fixed {width}x{height} input")
        return session


def _fixed_size(shape) -> tuple[int, int] | None:
    """``(width, height)`` when an NCHW input shape fixes both."""
    if shape is None or len(shape) < 4:
        return None
    height, width = shape[2:4]
    if all(isinstance(value, int) and value > 0 for value in (height, width)):
        return int(width), int(height)
    return None


def _set_dim(dim, value: int) -> None:
    dim.ClearField("dim_param")
    dim.dim_value = int(value)


def _distance_to_box(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    return np.stack(
        [centres[:, 0] - distances[:, 0], centres[:, 1] - distances[:, 1],
         centres[:, 0] + distances[:, 2], centres[:, 1] + distances[:, 3]],
        axis=-1,
    )


def _distance_to_points(centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    coordinates = []
    for i in range(0, offsets.shape[1], 2):
        coordinates.append(centres[:, i % 2] + offsets[:, i])
        coordinates.append(centres[:, i % 2 + 1] + offsets[:, i + 1])
    return np.stack(coordinates, axis=-1)


def _suppress_overlaps(detections: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS over score-ordered ``x1 y1 x2 y2 score`` rows, with SCRFD's inclusive pixel areas."""
    x1, y1, x2, y2, scores = (detections[:, k] for k in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        width = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = width * height / (areas[i] + areas[rest] - width * height)
        order = rest[np.where(overlap <= threshold)[0]]
    return keep
