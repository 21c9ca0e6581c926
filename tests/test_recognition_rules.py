"""The rules of recognition that need no gallery: ranking, one person per photo, the index it may use."""

import numpy as np
import pyarrow as pa
import pytest

from facepipeline.gallery.base import CoOccurrence, FaceLabel
from facepipeline.gallery.config import ConfidenceThresholds
from facepipeline.images import decode_image
from facepipeline.index import FaceIndex, IndexStore
from facepipeline.recognition import Candidate, ContextPrior, RecognitionError, RecognitionPolicy, Recognizer, assign
from tests.conftest import FACES

POLICY = RecognitionPolicy(ConfidenceThresholds(0.4, 0.4, 0.4), context_weight=0.1)


def candidate(person: str, similarity: float, threshold: float = 0.4) -> Candidate:
    return Candidate(person, person, similarity, "medium_data", threshold)


def test_context_weight_reranks_candidates_that_both_pass_logic_only():
    # Carol was seen with Bob at earlier events; Alice never was. Bob is already at this event.
    prior = ContextPrior(CoOccurrence.from_labels([
        FaceLabel("f1", "p1", "e0", "carol"), FaceLabel("f2", "p1", "e0", "bob"), FaceLabel("f3", "p2", "e1", "alice"),
    ]))
    face = [candidate("alice", 0.52), candidate("carol", 0.50)]
    assert assign([face], prior, RecognitionPolicy(POLICY.thresholds, context_weight=0.0), nearby={"bob"})[0].person_id == "alice"
    chosen = assign([face], prior, POLICY, nearby={"bob"})[0]
    assert chosen.person_id == "carol" and chosen.context == 1.0 and chosen.similarity == 0.50
    # Context never lifts a candidate over its threshold: the threshold is on the similarity itself.
    assert assign([[candidate("carol", 0.39)]], prior, POLICY, nearby={"bob"}) == [None]


def test_one_person_per_photo_the_better_face_keeps_them_logic_only():
    prior = ContextPrior()
    faces = [[candidate("alice", 0.45), candidate("bob", 0.44)], [candidate("alice", 0.61)], [candidate("alice", 0.50)]]
    chosen = assign(faces, prior, POLICY)
    assert [c.person_id if c else None for c in chosen] == ["bob", "alice", None]


def test_out_of_range_thresholds_and_context_weight_are_refused():
    with pytest.raises(RecognitionError, match="confidence_thresholds.low_data"):
        RecognitionPolicy(ConfidenceThresholds(1.5, 0.4, 0.4))
    with pytest.raises(RecognitionError, match="context_weight"):
        RecognitionPolicy(POLICY.thresholds, context_weight=-0.1)


def test_no_promoted_index_and_an_index_of_another_pack_are_clear_errors(tmp_path, face_model):
    store = IndexStore(tmp_path / "index")
    with pytest.raises(Exception, match="no promoted index version .* run a retrain first"):
        store.require_promoted()
    photos = sorted((FACES / "Tony_Blair").glob("*.jpg"))[:3]
    crops = []
    for path in photos:
        image = decode_image(path.read_bytes())
        crops.append(face_model.align(image, face_model.detect_central(image)))
    entries = pa.table({"face_id": ["a", "b", "c"], "person_id": ["tb"] * 3, "person_name": ["Tony Blair"] * 3})
    index = FaceIndex.build(face_model.embed(np.stack(crops)), entries)
    other = store.publish(index, {"model": {"model_pack": "antelopev2", "model_sha256": "0" * 64}})
    store.promote(other.version, reason="test", by="pytest")
    with pytest.raises(RecognitionError, match="built with the antelopev2 pack .* retrain with this pack"):
        Recognizer(face_model, store.require_promoted(), POLICY, ContextPrior())
    ours = store.publish(index, {"model": {"model_pack": "buffalo_sc", "model_sha256": face_model.pack.recognizer.sha256}})
    record = store.promote(ours.version, reason="rollback test", by="pytest")
    assert record["previous"] == other.version and store.promoted().version == ours.version
    assert [p["version"] for p in store.promotions()] == [other.version, ours.version]
    recognizer = Recognizer(face_model, store.promoted(), POLICY, ContextPrior())
    blair = decode_image(sorted((FACES / "Tony_Blair").glob("*.jpg"))[5].read_bytes())
    [face] = [f for f in recognizer.recognize(blair).faces if f.person_id]
    assert face.person_id == "tb" and face.suggestion.similarity >= 0.4


def test_a_suggestion_with_a_non_finite_or_misshapen_vector_or_score_is_refused_before_any_write():
    from facepipeline.gallery.base import SuggestionRow

    box = {"x": 1, "y": 2, "width": 30, "height": 40}
    good = dict(face_id="f", photo_id="p", person_id=None, confidence=None, bbox=box, descriptor=np.ones(512) / np.sqrt(512),
                det_score=0.9, detected_bbox=box, context={})
    assert SuggestionRow(**good).vector_literal().count(",") == 511
    nan = np.ones(512)
    nan[7] = np.nan
    for bad, message in [
        ({"descriptor": nan}, "descriptor is not finite"),
        ({"descriptor": np.ones(128)}, "must have 512 values"),
        ({"det_score": float("inf")}, "score is not finite"),
        ({"confidence": float("nan")}, "score is not finite"),
    ]:
        with pytest.raises(ValueError, match=message):
            SuggestionRow(**{**good, **bad})
