"""Model packs: a folder of ONNX files, recognised by what each file is, not by its name.

``buffalo_l`` ships ``det_10g.onnx`` and ``w600k_r50.onnx``; the test pack here ships
``det_500m.onnx`` and ``w600k_mbf_int8.onnx``. Each file is opened and classified by its
inputs and outputs, so a renamed or re-quantised file still loads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import onnxruntime as ort

from facepipeline.errors import ModelPackError

DETECTION = "detection"
RECOGNITION = "recognition"
# SCRFD heads with 5-point landmarks (alignment needs them): scores, boxes, landmarks for 3 or 5
# strides. The 6- and 10-output variants have no landmarks and cannot feed ArcFace.
_DETECTOR_OUTPUT_COUNTS = {9, 15}


@dataclass(frozen=True)
class ModelFile:
    path: Path
    task: str
    sha256: str
    size: int

    def describe(self) -> dict:
        return {"file": self.path.name, "task": self.task, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class ModelPack:
    name: str
    directory: Path
    detector: ModelFile
    recognizer: ModelFile

    @property
    def fingerprint(self) -> str:
        """Identifies the weights that produce an embedding (detector landmarks + recognizer)."""
        return hashlib.sha256(f"{self.detector.sha256}:{self.recognizer.sha256}".encode()).hexdigest()

    def describe(self) -> dict:
        return {
            "pack": self.name,
            "fingerprint": self.fingerprint,
            "files": [self.detector.describe(), self.recognizer.describe()],
        }


def find_pack_dir(model_root: Path, pack: str) -> Path:
    """``<root>/<pack>`` or insightface's own layout ``<root>/models/<pack>``."""
    root = Path(model_root).expanduser()
    for candidate in (root / pack, root / "models" / pack):
        if candidate.is_dir() and any(candidate.glob("*.onnx")):
            return candidate
    available = sorted({p.parent.name for p in root.glob("*/*.onnx")} | {p.parent.name for p in root.glob("models/*/*.onnx")})
    hint = f"; packs found there: {', '.join(available)}" if available else ""
    raise ModelPackError(
        f"model pack {pack!r} not found under {root} (looked for {root / pack}/*.onnx){hint}. "
        "Set FACEPIPELINE_MODEL_ROOT and FACEPIPELINE_MODEL."
    )


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


def classify(session: ort.InferenceSession) -> str | None:
    """What an ONNX model does, from its signature: detection, recognition, or None (other)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        return None
    height, width = inputs[0].shape[2:4]
    if len(outputs) in _DETECTOR_OUTPUT_COUNTS:
        return DETECTION
    out_dim = outputs[0].shape[-1] if len(outputs) == 1 and outputs[0].shape else None
    if (height, width) == (112, 112) and isinstance(out_dim, int) and out_dim >= 128:
        return RECOGNITION
    return None


def open_pack(
    model_root: Path, pack: str, providers: tuple[str, ...], session_options: ort.SessionOptions
) -> tuple[ModelPack, dict[str, ort.InferenceSession]]:
    """Open every ONNX file of a pack; keep one detector and one recognizer session."""
    directory = find_pack_dir(model_root, pack)
    found: dict[str, tuple[Path, ort.InferenceSession]] = {}
    for path in sorted(directory.glob("*.onnx")):
        try:
            session = ort.InferenceSession(str(path), sess_options=session_options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt files
            raise ModelPackError(f"cannot load {path}: {exc}") from exc
        task = classify(session)
        if task and task not in found:
            found[task] = (path, session)
    for task in (DETECTION, RECOGNITION):
        if task not in found:
            what = "detection model with 5-point landmarks" if task == DETECTION else "recognition model (112x112 input)"
            raise ModelPackError(f"model pack {pack!r} in {directory} has no {what}")
    files = {
        task: ModelFile(path=path, task=task, sha256=file_sha256(path), size=path.stat().st_size)
        for task, (path, _) in found.items()
    }
    model_pack = ModelPack(name=pack, directory=directory, detector=files[DETECTION], recognizer=files[RECOGNITION])
    return model_pack, {task: session for task, (_, session) in found.items()}
