"""The crop ArcFace was trained on: five landmarks mapped onto a fixed template by a similarity.

InsightFace's ``utils.face_align.norm_crop`` does this with scikit-image's ``SimilarityTransform``
(Umeyama's least-squares estimate) and OpenCV's ``warpAffine``. The estimate is the same few NumPy
operations here, in the same order and precision, so crops are bit for bit the library's
(``tests/test_scrfd.py``), without importing scikit-image's transforms and SciPy behind them, and
without the ``SimilarityTransform.estimate`` that scikit-image has deprecated.
"""

from __future__ import annotations

import cv2
import numpy as np

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
"""Where ArcFace expects the eyes, the nose tip and the mouth corners on its 112 x 112 input."""


class AlignmentError(ValueError):
    """Landmarks from which no similarity can be estimated (all in one point, or not finite)."""


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3 x 3 similarity (rotation, uniform scale, translation) taking ``src`` points closest to
    ``dst`` in least squares: Umeyama, PAMI 1991, eq. 38-43."""
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise AlignmentError("the landmarks are not all finite")
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # a degenerate set is refused below
        return _umeyama(src, dst)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    num, dim = src.shape
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_demean = src - src_mean
    dst_demean = dst - dst_mean
    a = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    transform = np.eye(dim + 1, dtype=np.float64)
    u, s, v = np.linalg.svd(a)
    rank = np.count_nonzero(s > s.max() * np.max(a.shape) * np.finfo(float).eps)
    if rank == 0:
        raise AlignmentError("the landmarks are all in one point")
    if rank == dim - 1 and np.linalg.det(u) * np.linalg.det(v) <= 0:
        flipped = d.copy()
        flipped[dim - 1] = -1
        transform[:dim, :dim] = u @ np.diag(flipped) @ v
    elif rank == dim - 1:
        transform[:dim, :dim] = u @ v
    else:
        transform[:dim, :dim] = u @ np.diag(d) @ v
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d)
    transform[:dim, dim] = dst_mean - scale * (transform[:dim, :dim] @ src_mean.T)
    transform[:dim, :dim] *= scale
    if not np.all(np.isfinite(transform)):
        raise AlignmentError("no finite similarity maps these landmarks onto the template")
    return transform


def norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The ``size`` x ``size`` crop whose five landmarks sit on ArcFace's template (scaled for
    ``size``, a multiple of 112)."""
    if size % 112:
        raise ValueError(f"ArcFace crops are a multiple of 112 pixels, got {size}")
    matrix = similarity_transform(np.asarray(landmarks), ARCFACE_TEMPLATE * (size / 112.0))[0:2, :]
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
