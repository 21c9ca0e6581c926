"""The embedding stage: verified faces on cached photos -> one L2-normalised vector per face.

Each photo is decoded once and the detector runs on the *photo* around the verified box (never on
a tight crop: SCRFD misses faces that fill its input). The detection that matches the verified box
is aligned on its five landmarks, and aligned crops are embedded in batches.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby

import numpy as np

from facepipeline.errors import FacePipelineError
from facepipeline.geometry import BBox
from facepipeline.images import decode_image
from facepipeline.model.alignment import AlignmentError
from facepipeline.model.face_model import REGION_SCALE, Detection, FaceModel

# A detection belongs to the verified box when they overlap this much (boxes from another
# detector are looser or tighter than SCRFD's), or when its centre lies inside the box.
MIN_BOX_IOU = 0.3
# Bump when a change to this stage can change an embedding or a failure: every face is redone.
STAGE_VERSION = 1

# Why a face has no embedding. The text beside each code in FaceEmbedding.error gives details.
PHOTO_UNAVAILABLE = "photo_unavailable"  # the photo could not be fetched
PHOTO_UNREADABLE = "photo_unreadable"  # its bytes are not a usable image
CACHE_READ_ERROR = "cache_read_error"  # the cached bytes could not be read (disk, permissions)
BOX_OUTSIDE_PHOTO = "box_outside_photo"
NO_FACE_IN_BOX = "no_face_in_box"
NO_FACE_ON_PHOTO = "no_face_on_photo"
NON_FINITE_EMBEDDING = "non_finite_embedding"
UNALIGNABLE_FACE = "unalignable_face"  # landmarks no similarity maps onto ArcFace's template
UNEXPECTED_ERROR = "unexpected_error"
# Failures that the same bytes, box and stage would repeat: not retried until one of them changes.
# The others (a disk error, an unexpected exception) are retried on every run.
PERMANENT_FAILURES = frozenset(
    {PHOTO_UNREADABLE, BOX_OUTSIDE_PHOTO, NO_FACE_IN_BOX, NO_FACE_ON_PHOTO, NON_FINITE_EMBEDDING, UNALIGNABLE_FACE}
)


def stage_fingerprint(model: FaceModel) -> str:
    """Everything that decides a face's embedding or failure: weights, detection settings, code."""
    parts = (
        model.pack.fingerprint,
        model.det_size,
        model.region_det_size,
        model.det_thresh,
        REGION_SCALE,
        MIN_BOX_IOU,
        STAGE_VERSION,
    )
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


@dataclass(frozen=True)
class FaceJob:
    face_id: str
    photo_sha256: str
    bbox: BBox | None
    """The verified box; None means "the face nearest the photo's centre"."""


@dataclass(frozen=True)
class FaceEmbedding:
    face_id: str
    embedding: np.ndarray | None
    detection: Detection | None
    error_code: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None

    @classmethod
    def failed(cls, face_id: str, code: str, message: str, detection: Detection | None = None) -> FaceEmbedding:
        return cls(face_id, None, detection, code, message)


@dataclass
class Progress:
    total: int
    done: int = 0
    failed: int = 0
    started: float = 0.0

    @property
    def faces_per_second(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        return f"embedded {self.done - self.failed}/{self.total}, {self.failed} failed, {self.faces_per_second:.0f} faces/s"


def pick_detection(detections: list[Detection], bbox: BBox) -> Detection | None:
    """The detection that is the verified face: the best overlap with its box, if good enough."""
    scored = [(d.bbox.iou(bbox), d) for d in detections]
    matching = [(iou, d) for iou, d in scored if iou >= MIN_BOX_IOU or bbox.contains_point(*d.bbox.center)]
    return max(matching, key=lambda pair: pair[0])[1] if matching else None


def embed_faces(
    model: FaceModel,
    jobs: Iterable[FaceJob],
    read_photo: Callable[[str], bytes],
    *,
    workers: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    progress_every: int = 200,
) -> Iterator[FaceEmbedding]:
    """Embed faces; yields one result per job (failures carry their reason), chunk by chunk.

    Results come grouped by photo, not in the order of ``jobs``: match them by ``face_id``.

    Jobs are grouped by photo and cut into chunks of about ``model.batch_size`` faces. Each chunk
    is decoded, detected, aligned and embedded as one batch by one of ``workers`` threads
    (onnxruntime releases the GIL): on CPU, several single-threaded sessions running side by side
    use the cores better than one session spreading a small batch over them. Fewer faces than
    ``workers`` full batches are cut into ``workers`` smaller chunks, so that a few new faces keep
    every worker busy too.
    """
    jobs = sorted(jobs, key=lambda job: job.photo_sha256)
    if jobs:
        model.prepare()  # a model that cannot run fails here, not face by face in the workers
    state = Progress(total=len(jobs), started=time.perf_counter())
    workers = workers or model.workers
    chunks = _chunks(jobs, min(model.batch_size, -(-len(jobs) // workers)))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embed") as pool:
        for results in _bounded_map(pool, lambda chunk: _embed_chunk(model, chunk, read_photo), chunks, 2 * workers):
            for result in results:
                state.done += 1
                state.failed += not result.ok
                if progress and (state.done % progress_every == 0 or state.done == state.total):
                    progress(state)
                yield result


def _chunks(jobs: list[FaceJob], size: int) -> list[list[list[FaceJob]]]:
    """Jobs sorted by photo, cut into chunks of about ``size`` faces; a photo's faces stay together."""
    chunks: list[list[list[FaceJob]]] = []
    filled = 0
    for _, group in groupby(jobs, key=lambda job: job.photo_sha256):
        if not chunks or filled >= size:
            chunks.append([])
            filled = 0
        chunks[-1].append(list(group))
        filled += len(chunks[-1][-1])
    return chunks


def _embed_chunk(model: FaceModel, chunk: list[list[FaceJob]], read_photo: Callable[[str], bytes]) -> list[FaceEmbedding]:
    results: list[FaceEmbedding] = []
    aligned: list[tuple[FaceJob, Detection, np.ndarray]] = []
    for photo_jobs in chunk:
        try:
            found = _find_faces(model, photo_jobs, read_photo)
        except Exception as exc:  # one odd photo must never cost the rest of the run
            message = f"{type(exc).__name__}: {exc}"
            found = [FaceEmbedding.failed(job.face_id, UNEXPECTED_ERROR, message) for job in photo_jobs]
        for item in found:
            (results if isinstance(item, FaceEmbedding) else aligned).append(item)
    if aligned:
        vectors = model.embed(np.stack([crop for _, _, crop in aligned]))
        for (job, detection, _), vector in zip(aligned, vectors, strict=True):
            if np.all(np.isfinite(vector)):
                results.append(FaceEmbedding(job.face_id, vector, detection))
            else:
                results.append(FaceEmbedding.failed(job.face_id, NON_FINITE_EMBEDDING, "model returned a non-finite embedding", detection))
    return results


def _find_faces(
    model: FaceModel, photo_jobs: list[FaceJob], read_photo: Callable[[str], bytes]
) -> list[FaceEmbedding | tuple[FaceJob, Detection, np.ndarray]]:
    """Each job of one photo: its aligned face, or why there is none."""
    try:
        data = read_photo(photo_jobs[0].photo_sha256)
    except OSError as exc:
        return [FaceEmbedding.failed(job.face_id, CACHE_READ_ERROR, f"cached photo unreadable: {exc}") for job in photo_jobs]
    try:
        image = decode_image(data)
    except FacePipelineError as exc:
        return [FaceEmbedding.failed(job.face_id, PHOTO_UNREADABLE, f"photo unreadable: {exc}") for job in photo_jobs]
    height, width = image.shape[:2]
    central: Detection | None = None
    found: list[FaceEmbedding | tuple[FaceJob, Detection, np.ndarray]] = []
    for job in photo_jobs:
        if job.bbox is None:
            central = central or model.detect_central(image)
            detection, code, message = central, NO_FACE_ON_PHOTO, "no face found on the photo"
        elif job.bbox.clipped(width, height) is None:
            detection, code = None, BOX_OUTSIDE_PHOTO
            message = f"box {job.bbox.to_json()} lies outside the {width}x{height} photo"
        else:
            detection = pick_detection(model.detect_near(image, job.bbox), job.bbox)
            code, message = NO_FACE_IN_BOX, "no face found in the verified box"
        if detection is None:
            found.append(FaceEmbedding.failed(job.face_id, code, message))
            continue
        try:
            found.append((job, detection, model.align(image, detection)))
        except AlignmentError as exc:  # this face only; the photo's others go on
            found.append(FaceEmbedding.failed(job.face_id, UNALIGNABLE_FACE, f"face cannot be aligned: {exc}", detection))
    return found


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: list, lookahead: int) -> Iterator:
    """Like ``pool.map`` but keeps at most ``lookahead`` results in flight (bounded memory)."""
    futures = [pool.submit(fn, item) for item in items[:lookahead]]
    for index in range(len(items)):
        result = futures[index].result()
        futures[index] = None  # let the finished chunk be freed once handed out
        if index + lookahead < len(items):
            futures.append(pool.submit(fn, items[index + lookahead]))
        yield result
