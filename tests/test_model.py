"""The real buffalo_sc pack: loading by content, detection, alignment, embeddings."""

import shutil

import numpy as np
import pytest

from facepipeline.errors import ModelPackError
from facepipeline.images import decode_image
from facepipeline.model import FaceModel, find_pack_dir
from tests.conftest import FACES, GROUP_PHOTOS, MODEL_ROOT, PACK


def photo(person: str, n: int) -> np.ndarray:
    return decode_image((FACES / person / f"{person}_{n:04d}.jpg").read_bytes())


def test_pack_files_are_recognised_by_what_they_are_not_their_names(tmp_path):
    renamed = tmp_path / "my_pack"
    renamed.mkdir()
    shutil.copy(MODEL_ROOT / PACK / "det_500m.onnx", renamed / "zz_first.onnx")
    shutil.copy(MODEL_ROOT / PACK / "w600k_mbf_int8.onnx", renamed / "aa_second.onnx")
    model = FaceModel.load(tmp_path, "my_pack", workers=1)
    assert model.pack.detector.path.name == "zz_first.onnx"
    assert model.pack.recognizer.path.name == "aa_second.onnx"
    assert model.pack.recognizer.sha256 == "7caa7fb0ad6c37b33e6c59f6411084b487aaabd596bba645d2cce391a5871120"
    assert model.embedding_dim == 512


def test_insightface_layout_root_models_pack_is_found_too(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / PACK).symlink_to(MODEL_ROOT / PACK)
    assert find_pack_dir(tmp_path, PACK) == tmp_path / "models" / PACK


def test_missing_and_incomplete_packs_are_clear_errors(tmp_path):
    with pytest.raises(ModelPackError, match=r"'buffalo_l' not found .* packs found there: buffalo_sc"):
        FaceModel.load(MODEL_ROOT, "buffalo_l")
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(MODEL_ROOT / PACK / "det_500m.onnx", half / "det.onnx")
    with pytest.raises(ModelPackError, match="has no recognition model"):
        FaceModel.load(tmp_path, "half")
    (half / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelPackError, match="cannot load"):
        FaceModel.load(tmp_path, "half")


def test_detects_every_face_of_a_group_photo(face_model):
    image = decode_image((GROUP_PHOTOS / "insightface_t1.jpg").read_bytes())
    faces = face_model.detect(image)
    assert len(faces) == 6
    assert all(f.score > 0.5 and f.landmarks.shape == (5, 2) for f in faces)


def test_embeddings_are_unit_vectors_that_separate_people(face_model):
    images = [photo("Colin_Powell", 1), photo("Colin_Powell", 2), photo("Tony_Blair", 1)]
    crops = np.stack([face_model.align(img, face_model.detect_central(img)) for img in images])
    assert crops.shape == (3, 112, 112, 3)
    vectors = face_model.embed(crops)
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    same, different = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert same > 0.4 > different + 0.2


@pytest.mark.parametrize("workers", [1, 2])
def test_each_cpu_worker_runs_its_calls_on_one_thread(workers):
    """``workers`` threads in all: a session spreading every call over all cores as well would
    oversubscribe them when another step process embeds beside this one."""
    model = FaceModel.load(MODEL_ROOT, PACK, workers=workers)
    assert model.workers == workers
    for session in model.sessions.values():
        assert session.get_session_options().intra_op_num_threads == 1


def test_an_embedding_does_not_depend_on_its_batch_mates(face_model):
    """The int8 recognizer quantises per call; the model must still give each face one vector."""
    assert face_model.faces_per_call == 1
    images = [photo("George_W_Bush", n) for n in range(1, 9)]
    crops = np.stack([face_model.align(img, face_model.detect_central(img)) for img in images])
    batched = face_model.embed(crops)
    single = np.concatenate([face_model.embed(crops[i : i + 1]) for i in range(len(crops))])
    assert np.allclose(batched, single, atol=1e-6)


def test_an_fp32_recognizer_keeps_real_batches(tmp_path):
    """A small real ONNX recognizer without dynamic quantisation (generated here, fp32 weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(size=(3, 512)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input.1"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["embedding"]),
        ],
        "tiny_recognizer",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 512])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    pack = tmp_path / "fp32_pack"
    pack.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9), pack / "recognizer.onnx")
    shutil.copy(MODEL_ROOT / PACK / "det_500m.onnx", pack / "detector.onnx")
    model = FaceModel.load(tmp_path, "fp32_pack", workers=1, batch_size=16)
    assert model.faces_per_call == 16
    crops = np.random.default_rng(1).integers(0, 255, size=(8, 112, 112, 3), dtype=np.uint8)
    batched = model.embed(crops)
    single = np.concatenate([model.embed(crops[i : i + 1]) for i in range(8)])
    assert np.allclose(batched, single, atol=1e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("size", [112, 48, 100])
def test_detector_sizes_must_fit_scrfds_strides(size):
    with pytest.raises(ValueError, match="multiple of 32"):
        FaceModel.load(MODEL_ROOT, PACK, workers=1, region_det_size=size)
