from dataclasses import replace

import pytest

from facepipeline.dataset import dataset_fingerprint, dataset_stats, keep_people_with_min_faces, validate_dataset
from facepipeline.faces import VerifiedFace, faces_to_table, table_to_faces
from facepipeline.geometry import BBox


def faces_for(counts: dict[str, int]) -> list[VerifiedFace]:
    return [
        VerifiedFace(f"{name}-{i}", f"id-{name}", name, f"file:///{name}/{i}.jpg", BBox(i, i, 10, 10) if i % 2 else None)
        for name, n in counts.items()
        for i in range(n)
    ]


def test_statistics_count_people_faces_and_the_histogram_bands():
    stats = dataset_stats(faces_for({"a": 3, "b": 4, "c": 7, "d": 12, "e": 17, "f": 25, "g": 2}))
    assert stats.people == 7 and stats.faces == 70
    assert (stats.min_faces_per_person, stats.max_faces_per_person, stats.avg_faces_per_person) == (2, 25, 10.0)
    assert stats.people_by_face_count == {"1-2": 1, "3-4": 2, "5-9": 1, "10-14": 1, "15-19": 1, "20+": 1}


def test_fewer_than_two_people_is_an_error_and_small_people_are_warnings():
    assert validate_dataset(faces_for({"solo": 30})).errors == ["need at least 2 people with verified faces, found 1"]
    result = validate_dataset(faces_for({"a": 3, "b": 9, "c": 4}))
    assert result.ok
    assert result.warnings == ["a has only 3 verified faces (fewer than 5)", "c has only 4 verified faces (fewer than 5)"]


def test_min_faces_filter_drops_whole_people_and_rejects_nonsense():
    kept = keep_people_with_min_faces(faces_for({"a": 2, "b": 3}), 3)
    assert {f.person_name for f in kept} == {"b"} and len(kept) == 3
    with pytest.raises(ValueError, match=">= 1"):
        keep_people_with_min_faces([], 0)


def test_fingerprint_ignores_order_but_sees_a_changed_box_or_label():
    faces = faces_for({"a": 3, "b": 3})
    assert dataset_fingerprint(faces) == dataset_fingerprint(list(reversed(faces)))
    moved = [replace(faces[0], bbox=BBox(99, 99, 10, 10))] + faces[1:]
    relabelled = [replace(faces[0], person_id="id-b")] + faces[1:]
    assert dataset_fingerprint(moved) != dataset_fingerprint(faces)
    assert dataset_fingerprint(relabelled) != dataset_fingerprint(faces)


def test_table_round_trip_keeps_boxes_and_missing_boxes():
    faces = faces_for({"a": 4})
    assert table_to_faces(faces_to_table(faces)) == faces


def test_the_same_table_is_converted_once_and_each_caller_gets_a_list_of_its_own():
    table = faces_to_table(faces_for({"a": 3}))
    first, second = table_to_faces(table), table_to_faces(table)
    assert all(a is b for a, b in zip(first, second, strict=True))  # the same frozen faces, not converted again
    first.append("changed by its caller")
    second.pop()
    assert table_to_faces(table) == first[:3] and len(first) == 4 and len(second) == 2
    same_content = faces_to_table(faces_for({"a": 3}))
    assert table_to_faces(same_content) == first[:3] and table_to_faces(same_content)[0] is not first[0]


def test_a_table_from_before_photo_id_and_event_date_still_reads_but_one_without_a_required_column_does_not():
    faces = faces_for({"a": 2})
    older = faces_to_table(faces).drop_columns(["photo_id", "event_date"])
    assert table_to_faces(older) == [replace(f, photo_id=None, event_date=None) for f in faces]
    with pytest.raises(KeyError, match="event_id"):
        table_to_faces(faces_to_table(faces).drop_columns(["event_id"]))


def test_a_face_id_listed_twice_is_an_error():
    faces = faces_for({"a": 3, "b": 3})
    result = validate_dataset(faces + [replace(faces[0], person_id="id-b", person_name="b")])
    assert result.errors == [f"1 face ids appear more than once (e.g. {faces[0].face_id}): a face has one label"]
