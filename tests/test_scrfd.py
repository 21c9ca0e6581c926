"""facepipeline's SCRFD decoding and ArcFace alignment against InsightFace 2.1's own, bit for bit.

The model's detection and alignment are reimplemented (``facepipeline/model/scrfd.py`` and
``alignment.py``) so that a process that embeds never imports the InsightFace package; the
embeddings must not move by a single bit for it, or every face embedded before would differ from
those embedded after. InsightFace (a dev dependency) is the reference here, on the real buffalo_sc
weights and real photos: portraits, group photos and distractors, at every input size the pipeline
uses.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from facepipeline.images import decode_image
from facepipeline.model.alignment import AlignmentError, ARCFACE_TEMPLATE, norm_crop, similarity_transform
from facepipeline.model.face_model import RecognizerGraph
from facepipeline.model.pack import DETECTION, RECOGNITION
from facepipeline.model.scrfd import NMS_THRESHOLD, Scrfd, ScrfdError, _suppress_overlaps
from tests.conftest import FACES, GROUP_PHOTOS, MODEL_ROOT, SHARED

insightface = pytest.importorskip("insightface")

SIZES = (128, 160, 320, 640)  # the region size, and the whole-photo steps up to det_size


def sample_photos() -> list[np.ndarray]:
    paths = (
        sorted(FACES.rglob("*.jpg"))[::160]
        + sorted(GROUP_PHOTOS.rglob("*.jpg"))[:8]
        + sorted((SHARED / "data" / "distractors").rglob("*.jpg"))[::120]
    )
    photos = [decode_image(path.read_bytes()) for path in paths]
    # Odd shapes too (wide, tall, sizes no input divides): the letterbox's rounding on every path.
    odd = [photo[: photo.shape[0] - 37, : photo.shape[1] - 13] for photo in photos[::6]]
    odd += [photo[:, : photo.shape[1] // 3 + 7] for photo in photos[1::9]]
    return photos + odd


@pytest.fixture(scope="module")
def reference(face_model):
    """InsightFace's SCRFD and ArcFaceONNX on the very sessions facepipeline's model uses."""
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    detector = SCRFD(model_file=str(face_model.pack.detector.path), session=face_model.sessions[DETECTION])
    detector.prepare(0, det_thresh=face_model.det_thresh, input_size=(640, 640))
    recognizer = ArcFaceONNX(model_file=str(face_model.pack.recognizer.path), session=face_model.sessions[RECOGNITION])
    return detector, recognizer


def test_detections_and_crops_are_insightfaces_bit_for_bit(face_model, reference):
    from insightface.utils import face_align

    detector, _ = reference
    photos = sample_photos()
    assert len(photos) >= 40
    compared = faces = 0
    for image in photos:
        for size in SIZES:
            boxes, points = face_model.detector.detect(image, size)
            expected_boxes, expected_points = detector.detect(image, input_size=(size, size))
            assert boxes.dtype == expected_boxes.dtype and points.dtype == expected_points.dtype
            np.testing.assert_array_equal(boxes, expected_boxes)
            np.testing.assert_array_equal(points, expected_points)
            compared += 1
            for landmarks in points:
                np.testing.assert_array_equal(norm_crop(image, landmarks), face_align.norm_crop(image, landmark=landmarks))
                faces += 1
    assert compared == len(photos) * len(SIZES) and faces > 150  # group photos bring many faces per call


def test_a_fixed_size_batched_detector_is_insightfaces_too():
    """scrfd_2.5g_kps takes a fixed 640 x 640 input and gives batched outputs: the other branches."""
    from insightface.model_zoo.scrfd import SCRFD

    path = MODEL_ROOT / "scrfd_2.5g_kps" / "scrfd_2.5g_kps.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    ours = Scrfd(path, session)
    theirs = SCRFD(model_file=str(path), session=session)
    theirs.prepare(0, det_thresh=0.5, input_size=(640, 640))
    assert ours.fixed_size == (640, 640) and ours.batched
    photos = sample_photos()[::4]
    found = 0
    for image in photos:
        boxes, points = ours.detect(image, 128)  # a fixed-size model ignores the size asked for
        expected_boxes, expected_points = theirs.detect(image, input_size=(640, 640))
        np.testing.assert_array_equal(boxes, expected_boxes)
        np.testing.assert_array_equal(points, expected_points)
        found += len(boxes)
    assert found >= len(photos)


def test_every_size_gets_a_fixed_shape_session_with_the_models_own_options(face_model):
    """Single-threaded like the session the model was loaded with: a session spreading each call
    over every core would oversubscribe them beside another step process."""
    for size in (128, 160, 640):
        session = face_model.detector.session_for(size)
        assert session.get_inputs()[0].shape == [1, 3, size, size]
        assert session.get_session_options().intra_op_num_threads == 1
        assert session.get_providers() == face_model.sessions[DETECTION].get_providers()
    assert face_model.detector.session_for(160) is face_model.detector.session_for(160)


def test_overlap_suppression_keeps_what_insightfaces_keeps(reference):
    """Crowded random boxes, many near the threshold (where SCRFD's inclusive pixel areas matter)."""
    detector, _ = reference
    rng = np.random.default_rng(7)
    for _ in range(20):
        corners = rng.uniform(0, 60, size=(150, 2)).astype(np.float32)
        sizes = rng.uniform(4, 30, size=(150, 2)).astype(np.float32)
        boxes = np.hstack([corners, corners + sizes, rng.uniform(0.5, 1, size=(150, 1)).astype(np.float32)])
        boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
        assert detector.nms_thresh == NMS_THRESHOLD
        assert _suppress_overlaps(boxes, NMS_THRESHOLD) == detector.nms(boxes)


def test_the_recognizer_graph_is_read_as_insightface_reads_it(face_model, reference):
    _, recognizer = reference
    graph = RecognizerGraph.read(face_model.pack.recognizer.path)
    assert (graph.input_mean, graph.input_std) == (recognizer.input_mean, recognizer.input_std) == (127.5, 127.5)
    assert graph.dynamically_quantized  # the int8 build of w600k_mbf quantises per call


def test_the_recognizer_graphs_own_normalisation_is_read_as_insightface_reads_it(tmp_path):
    """A graph that subtracts and scales its input itself (a Sub and a Mul among its first nodes)
    takes raw pixels: mean 0, std 1, as InsightFace's ArcFaceONNX decides."""
    import onnx
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["input.1", "mean"], ["centred"], name="Sub_0"),
            helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="Mul_1"),
            helper.make_node("GlobalAveragePool", ["scaled"], ["pooled"], name="pool"),
            helper.make_node("Flatten", ["pooled"], ["embedding"], name="flat"),
        ],
        "normalising_recognizer",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(np.float32(127.5), "mean"), numpy_helper.from_array(np.float32(1 / 128), "scale")],
    )
    path = tmp_path / "recognizer.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9), path)
    read = RecognizerGraph.read(path)
    reference = ArcFaceONNX(model_file=str(path), session=ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    assert (read.input_mean, read.input_std) == (reference.input_mean, reference.input_std) == (0.0, 1.0)
    assert not read.dynamically_quantized


POINTS = arrays(np.float64, (5, 2), elements=st.floats(-500, 500, allow_nan=False, width=32))


@settings(max_examples=300, deadline=None)
@given(POINTS, POINTS, st.sampled_from(["as drawn", "collinear", "mirrored", "float32"]))
def test_the_similarity_is_scikit_images_umeyama_bit_for_bit(src, dst, shape):
    """Random, collinear (rank 1) and mirrored point sets: every branch of Umeyama's estimate."""
    from skimage.transform._geometric import _umeyama

    if shape == "collinear":
        src = np.outer(np.linspace(-1, 1, 5), src[0]) + src[1]
    elif shape == "mirrored":
        dst = src * np.array([-1.0, 1.0]) + dst[0]
    elif shape == "float32":
        src, dst = src.astype(np.float32), dst.astype(np.float32)
    expected = _umeyama(src, dst, True)
    if not np.isfinite(expected).all():  # scikit-image hands back NaN or inf (a near-zero spread); refused here
        with pytest.raises(AlignmentError):
            similarity_transform(src, dst)
    else:
        np.testing.assert_array_equal(similarity_transform(src, dst), expected)


def test_the_similarity_recovers_a_known_transform_and_refuses_degenerate_landmarks():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = ARCFACE_TEMPLATE.astype(np.float64)
    target = source @ (scale * rotation).T + shift
    matrix = similarity_transform(source, target)
    np.testing.assert_allclose(matrix[:2, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:2, 2], shift, atol=1e-9)
    with pytest.raises(AlignmentError, match="one point"):
        similarity_transform(np.full((5, 2), 40.0, np.float32), ARCFACE_TEMPLATE)
    with pytest.raises(AlignmentError, match="not all finite"):
        similarity_transform(np.where(np.eye(5, 2, dtype=bool), np.nan, 40.0).astype(np.float32), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match="multiple of 112"):
        norm_crop(np.zeros((200, 200, 3), np.uint8), ARCFACE_TEMPLATE, size=100)


def test_a_model_without_landmarks_is_refused_as_a_detector(face_model):
    """The recognizer (one output) is no SCRFD: a clear error, not a decoding crash."""
    with pytest.raises(ScrfdError, match=r"w600k_mbf_int8\.onnx is not an SCRFD detector with landmarks \(1 outputs"):
        Scrfd(face_model.pack.recognizer.path, face_model.sessions[RECOGNITION])
