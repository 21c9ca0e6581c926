import numpy as np
import pytest

from facepipeline.metrics import EvaluationConfig, evaluate, split_gallery_probes
from tests.test_index import clustered


def test_split_is_stratified_fixed_and_never_empties_a_person():
    people = ["a"] * 10 + ["b"] * 4 + ["c"] * 2 + ["d"]
    gallery, probes = split_gallery_probes(people, EvaluationConfig(test_fraction=0.2, seed=7))
    assert sorted(np.concatenate([gallery, probes]).tolist()) == list(range(len(people)))
    held_out = [people[i] for i in probes]
    assert (held_out.count("a"), held_out.count("b"), held_out.count("c"), held_out.count("d")) == (2, 1, 1, 0)
    again = split_gallery_probes(people, EvaluationConfig(test_fraction=0.2, seed=7))
    assert np.array_equal(again[1], probes)
    other = split_gallery_probes(people, EvaluationConfig(test_fraction=0.2, seed=8))
    assert not np.array_equal(other[1], probes)


def test_too_few_samples_gives_a_clear_result_and_no_numbers():
    vectors, entries = clustered(3, 3)
    result = evaluate(vectors, entries.column("person_id").to_pylist())
    assert result.status == "too_few_samples" and "9 faces" in result.message
    assert result.rank1_accuracy is None and result.markdown().startswith("**too few samples")


def test_well_separated_people_are_all_named_at_a_threshold_that_meets_the_far():
    vectors, entries = clustered(40, 10, spread=0.1)
    result = evaluate(vectors, entries.column("person_id").to_pylist(), EvaluationConfig(target_far=0.01))
    assert result.status == "ok" and result.probe_faces == 80 and result.gallery_faces == 320
    assert result.rank1_accuracy == 1.0 and result.rank1_accuracy_macro == 1.0
    assert result.far <= 0.01 and result.precision == 1.0 and result.recall == 1.0
    point = next(p for p in result.sweep if p.threshold == result.recommended_threshold)
    assert point.far == result.far


def test_precision_recall_and_far_are_real_and_move_with_the_threshold():
    vectors, entries = clustered(30, 8, spread=1.5, seed=3)  # overlapping people: mistakes happen
    result = evaluate(vectors, entries.column("person_id").to_pylist(), EvaluationConfig(target_far=0.05))
    assert 0.2 < result.rank1_accuracy < 1.0
    low = next(p for p in result.sweep if p.threshold == 0.0)
    assert low.recall == pytest.approx(result.rank1_accuracy, abs=1e-4) and low.far == 1.0
    assert result.recall < result.precision  # "unknown" answers cost recall, not precision
    fars = [p.far for p in result.sweep]
    assert fars == sorted(fars, reverse=True)
    assert result.far <= 0.05
    assert "(recommended)" in result.markdown()


def test_an_unreachable_far_target_is_flagged_not_hidden():
    vectors, entries = clustered(30, 8, spread=3.0, seed=3)  # people nearly indistinguishable
    result = evaluate(vectors, entries.column("person_id").to_pylist(), EvaluationConfig(target_far=0.0001))
    assert result.target_met is False and "no threshold reaches FAR <= 0.0001 with recall > 0" in result.message
    assert result.impostor_trials == 240 and result.far_resolution == round(1 / 240, 6)
    separable, entries = clustered(30, 8, spread=1.5, seed=3)
    reachable = evaluate(separable, entries.column("person_id").to_pylist(), EvaluationConfig(target_far=0.05))
    assert reachable.target_met is True and reachable.far <= 0.05 and reachable.recall > 0
    assert "cannot show" not in reachable.message
    strict = evaluate(separable, entries.column("person_id").to_pylist(), EvaluationConfig(target_far=0.001))
    assert "240 impostor trials cannot show a FAR below ~0.0125" in strict.message
    assert strict.far == 0.0 and strict.far_verifiable is False and strict.target_met is False


def test_adding_people_leaves_the_held_out_faces_of_the_others_in_place():
    people = [f"p{i // 10}" for i in range(100)]
    faces = [f"face-{i}" for i in range(100)]
    _, probes = split_gallery_probes(people, EvaluationConfig(), faces)
    more_people = people + [f"new{i // 6}" for i in range(30)]
    more_faces = faces + [f"new-face-{i}" for i in range(30)]
    _, more_probes = split_gallery_probes(more_people, EvaluationConfig(), more_faces)
    assert [more_faces[i] for i in more_probes if i < 100] == [faces[i] for i in probes]
