import json
import pickle
from dataclasses import asdict

import numpy as np
import pytest

from facepipeline.metrics import EvaluationConfig, evaluate, person_results, split_gallery_probes
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


def twins_and_strangers(per_person: int = 20, seed: int = 5):
    """'twin-a' and 'twin-b' drawn around the same centre (they can only be told apart by chance);
    four others far apart and tight."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 64))
    layout = {"twin-a": (0, 0.3), "twin-b": (0, 0.3), "p1": (1, 0.05), "p2": (2, 0.05), "p3": (3, 0.05), "p4": (4, 0.05)}
    vectors, people = [], []
    for person, (centre, spread) in layout.items():
        vectors.append(centres[centre] + spread * rng.normal(size=(per_person, 64)))
        people += [person] * per_person
    vectors = np.concatenate(vectors)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), people


def test_per_person_results_name_whom_each_person_is_mistaken_for():
    vectors, people = twins_and_strangers()
    result = evaluate(vectors, people, EvaluationConfig(target_far=0.01))
    by_id = {p.person_id: p for p in result.per_person}
    assert set(by_id) == {"twin-a", "twin-b", "p1", "p2", "p3", "p4"}
    assert sum(p.probes for p in result.per_person) == result.probe_faces == 24
    for twin, other in (("twin-a", "twin-b"), ("twin-b", "twin-a")):
        assert by_id[twin].correct < by_id[twin].probes and by_id[twin].confused_with == other
        assert by_id[twin].rank1_accuracy == round(by_id[twin].correct / by_id[twin].probes, 4)
    for person in ("p1", "p2", "p3", "p4"):
        assert (by_id[person].correct, by_id[person].rank1_accuracy, by_id[person].confused_with) == (4, 1.0, None)
    # The twins are the looser clusters: their probes sit further from their own gallery faces.
    tight = min(by_id[p].genuine_similarity_mean for p in ("p1", "p2", "p3", "p4"))
    assert max(by_id["twin-a"].genuine_similarity_mean, by_id["twin-b"].genuine_similarity_mean) < tight
    assert [p.person_id for p in result.per_person][2:] == ["p1", "p2", "p3", "p4"]  # worst first, ties by id
    assert [p.person_id for p in result.per_person][:2] == ["twin-b", "twin-a"]  # 2 of 4 right, then 3 of 4
    # The micro figure is the per-person counts put together; the macro one their mean.
    assert result.rank1_accuracy == round(sum(p.correct for p in result.per_person) / result.probe_faces, 4)
    assert result.rank1_accuracy_macro == pytest.approx(np.mean([p.correct / p.probes for p in result.per_person]), abs=1e-4)


def test_per_person_results_count_the_errors_and_break_ties_by_id():
    truth = np.array(["a", "a", "a", "a", "b", "b", "c", "c", "c"], dtype=object)
    predicted = np.array(["c", "b", "c", "a", "b", "b", "b", "a", "c"], dtype=object)
    genuine = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.7, -np.inf, 0.4, 0.6])
    rows = person_results(truth, predicted, genuine)
    assert [asdict(r) for r in rows] == [
        {"person_id": "a", "probes": 4, "correct": 1, "rank1_accuracy": 0.25, "genuine_similarity_mean": 0.65, "confused_with": "c"},
        {"person_id": "c", "probes": 3, "correct": 1, "rank1_accuracy": 0.3333, "genuine_similarity_mean": 0.5, "confused_with": "a"},
        {"person_id": "b", "probes": 2, "correct": 2, "rank1_accuracy": 1.0, "genuine_similarity_mean": 0.8, "confused_with": None},
    ]
    nowhere = person_results(np.array(["d"], dtype=object), np.array(["e"], dtype=object), np.array([-np.inf]))
    assert nowhere[0].genuine_similarity_mean is None and nowhere[0].confused_with == "e"


def test_an_ok_evaluation_accounts_for_every_probe_per_person_and_survives_json():
    vectors, entries = clustered(30, 8, spread=1.5, seed=3)
    result = evaluate(vectors, entries.column("person_id").to_pylist(), EvaluationConfig(target_far=0.05))
    assert result.status == "ok" and len(result.per_person) == result.probe_people == 30
    assert sum(p.probes for p in result.per_person) == result.probe_faces
    assert sum(p.correct for p in result.per_person) == round(result.rank1_accuracy * result.probe_faces)
    keys = [(p.rank1_accuracy, -p.probes, p.person_id) for p in result.per_person]
    assert keys == sorted(keys)
    as_json = json.loads(json.dumps(result.as_dict()))
    assert as_json["per_person"][0] == asdict(result.per_person[0])
    assert pickle.loads(pickle.dumps(result.as_dict())) == result.as_dict()
    too_few = evaluate(*clustered(3, 3)[:1], ["p0"] * 3 + ["p1"] * 3 + ["p2"] * 3)
    assert too_few.per_person == [] and too_few.as_dict()["per_person"] == []


def _everything(vectors, people, faces, scores):
    from facepipeline.calibration import calibrate
    from facepipeline.gallery.config import ConfidenceThresholds, DataLevels

    config = EvaluationConfig(target_far=0.01)
    return (
        evaluate(vectors, people, config, faces, scores=scores).as_dict(),
        calibrate(vectors, people, faces, levels=DataLevels(), configured=ConfidenceThresholds(), config=config, scores=scores).as_dict(),
    )


def _table(vectors, people, config):
    """The definition, written plainly: every face against every person's gallery faces."""
    from facepipeline.metrics import split_gallery_probes

    gallery, _ = split_gallery_probes(people, config, [f"f{i}" for i in range(len(people))])
    names = sorted(set(people))
    table = np.full((len(vectors), len(names)), -np.inf, dtype=np.float32)
    for column, name in enumerate(names):
        rows = [r for r in gallery if people[r] == name]
        table[:, column] = (vectors @ vectors[rows].T).max(axis=1)
    return names, table


def _same(a, b):
    assert np.allclose(a.own_score, b.own_score, atol=1e-6)
    assert np.allclose(a.stranger, b.stranger, atol=1e-6)  # -inf where -inf
    assert np.array_equal(a.stranger_column, b.stranger_column) and np.array_equal(a.groups, b.groups)


@pytest.mark.parametrize("grouped", [False, True])
def test_scores_are_the_faces_x_people_table_read_per_face_and_per_group(grouped):
    from facepipeline.metrics import gallery_scores

    vectors, entries = clustered(25, 6, spread=1.3, seed=9)
    people = entries.column("person_id").to_pylist()
    people = people[: len(people) - 7]  # people of 6 and of fewer faces
    vectors = vectors[: len(people)]
    config = EvaluationConfig()
    group_by = (lambda counts: (counts >= 6).astype(np.int64)) if grouped else None
    scores = gallery_scores(vectors, people, config, [f"f{i}" for i in range(len(people))], group_by=group_by)
    names, table = _table(vectors, people, config)
    own = np.array([names.index(p) for p in people])
    assert np.allclose(scores.own_score, table[np.arange(len(people)), own], atol=1e-6)
    others = table.copy()
    others[np.arange(len(people)), own] = -np.inf
    groups = group_by(np.bincount(own)) if grouped else np.zeros(len(names), dtype=np.int64)
    for g in range(groups.max() + 1):
        assert np.allclose(scores.stranger[:, g], others[:, groups == g].max(axis=1), atol=1e-6)
    assert np.array_equal(scores.stranger_column, others.argmax(axis=1))
    everyone = np.arange(len(people))
    assert np.array_equal(scores.nearest(everyone), table.argmax(axis=1))
    assert scores.computed == table.size and scores.reused == 0


def test_cached_scores_give_the_numbers_a_fresh_evaluation_gives_and_only_changed_faces_are_computed(tmp_path):
    from facepipeline.calibration import level_groups
    from facepipeline.gallery.config import DataLevels
    from facepipeline.metrics import ScoreCache, gallery_scores

    vectors, entries = clustered(30, 8, spread=1.2, seed=4)
    people, faces = entries.column("person_id").to_pylist(), entries.column("face_id").to_pylist()
    config = EvaluationConfig(target_far=0.01)
    group_by = level_groups(DataLevels())
    cache = ScoreCache(tmp_path / "scores.npz")
    first = gallery_scores(vectors[:-5], people[:-5], config, faces[:-5], group_by=group_by, cache=cache)
    assert first.reused == 0 and first.computed == first.pairs

    def check(vectors, people, faces):
        cached = gallery_scores(vectors, people, config, faces, group_by=group_by, cache=cache)
        fresh = gallery_scores(vectors, people, config, faces, group_by=group_by)
        _same(cached, fresh)
        assert cached.reused > 0
        assert _everything(vectors, people, faces, cached) == _everything(vectors, people, faces, fresh)
        return cached

    # Five new faces of the last person: their rows and that person's column are new, the rest is
    # reused, that person's earlier faces too (their own score comes with the new column).
    grown = check(vectors, people, faces)
    assert grown.computed == 5 * len(grown.people) + (len(vectors) - 5) * 1
    # The same faces again: everything is reused.
    assert check(vectors, people, faces).computed == 0
    # A face relabelled: its old and new person's columns are computed again, and its own row.
    relabelled = list(people)
    relabelled[0] = "p29"
    assert check(vectors, relabelled, faces).computed < grown.pairs // 5
    # A face re-embedded (same id, another vector): its row and its person's column are computed again.
    changed = vectors.copy()
    changed[10] = -changed[10]
    assert 0 < check(changed, people, faces).computed < grown.pairs // 5
    # Other settings move faces between gallery and probes: the columns follow, the numbers stay exact.
    check(vectors, people, faces)
    other_split = gallery_scores(vectors, people, EvaluationConfig(test_fraction=0.3, seed=1), faces, group_by=group_by, cache=cache)
    _same(other_split, gallery_scores(vectors, people, EvaluationConfig(test_fraction=0.3, seed=1), faces, group_by=group_by))
    assert other_split.computed > 0


def test_a_person_merged_into_another_whose_old_gallery_they_take_over_is_computed_anew(tmp_path):
    """Person B's faces relabelled as A, whose one face becomes a probe: A's new gallery is B's old
    one, the same vectors in the same group, and still another person's column."""
    from facepipeline.metrics import ScoreCache, gallery_scores
    from facepipeline.person_scores import split_gallery_probes

    vectors, entries = clustered(10, 7, spread=1.2, seed=5)
    people, faces = entries.column("person_id").to_pylist(), entries.column("face_id").to_pylist()
    b = people[0]
    b_rows = [i for i, p in enumerate(people) if p == b]
    config = EvaluationConfig()
    b_gallery, _ = split_gallery_probes([b] * 7, config, [faces[i] for i in b_rows])
    a_face = next(  # an id for A's face that the merged person holds out, with B's old probe
        f"a{n}" for n in range(10_000)
        if sorted(split_gallery_probes([b] * 8, config, [faces[i] for i in b_rows] + [f"a{n}"])[0].tolist()) == b_gallery.tolist()
    )
    vectors = np.vstack([vectors, -vectors[b_rows[0]]])  # A's face: nobody's look-alike
    faces = faces + [a_face]
    cache = ScoreCache(tmp_path / "scores.npz")
    gallery_scores(vectors, people + ["A"], config, faces, cache=cache)
    merged = ["A" if p == b else p for p in people] + ["A"]
    _same(gallery_scores(vectors, merged, config, faces, cache=cache), gallery_scores(vectors, merged, config, faces))


def test_cached_scores_stay_exact_through_a_long_random_history_of_gallery_edits(tmp_path):
    """Faces added, removed, relabelled and re-embedded, people merged and new: after each edit the
    cached scores are the fresh ones, and the cache answers most faces once the gallery is large."""
    from facepipeline.metrics import ScoreCache, gallery_scores

    rng = np.random.default_rng(11)
    vectors, entries = clustered(40, 9, spread=1.25, seed=12)
    people, faces = entries.column("person_id").to_pylist(), entries.column("face_id").to_pylist()
    config = EvaluationConfig(target_far=0.01)
    cache = ScoreCache(tmp_path / "scores.npz")
    group_by = lambda counts: np.minimum(counts // 4, 2)  # noqa: E731  (three groups that faces move people between)
    live = list(range(200))
    reused = []
    for step in range(40):
        edit = step % 4
        if edit == 0:  # a few new faces
            live += [i for i in rng.choice(len(people), 4, replace=False).tolist() if i not in live]
        elif edit == 1:  # a few faces deleted
            for i in rng.choice(live, 3, replace=False).tolist():
                live.remove(i)
        elif edit == 2:  # a face relabelled
            i = int(rng.choice(live))
            people = list(people)
            people[i] = people[int(rng.choice(live))]
        else:  # a face re-embedded
            i = int(rng.choice(live))
            vectors = vectors.copy()
            vectors[i] = np.roll(vectors[i], 1)
        rows = sorted(live)
        args = (vectors[rows], [people[i] for i in rows], config, [faces[i] for i in rows])
        cached = gallery_scores(*args, group_by=group_by, cache=cache)
        _same(cached, gallery_scores(*args, group_by=group_by))
        reused.append(cached.reused / cached.pairs)
    assert np.median(reused[5:]) > 0.5


def test_a_full_evaluation_ignores_the_cache_and_a_broken_cache_is_a_miss(tmp_path):
    from facepipeline.metrics import ScoreCache, gallery_scores

    vectors, entries = clustered(20, 6, seed=2)
    people, faces = entries.column("person_id").to_pylist(), entries.column("face_id").to_pylist()
    cache = ScoreCache(tmp_path / "scores.npz")
    gallery_scores(vectors, people, EvaluationConfig(), faces, cache=cache)
    assert gallery_scores(vectors, people, EvaluationConfig(), faces, cache=cache, reuse=False).reused == 0
    (tmp_path / "scores.npz").write_bytes(b"not a table")
    again = gallery_scores(vectors, people, EvaluationConfig(), faces, cache=cache)
    assert again.reused == 0 and ScoreCache(tmp_path / "scores.npz").load() is not None  # rewritten whole
