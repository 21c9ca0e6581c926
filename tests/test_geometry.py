import math

import pytest

from facepipeline.geometry import BBox, BBoxError


def test_iou_of_identical_disjoint_and_half_overlapping_boxes():
    box = BBox(0, 0, 10, 10)
    assert box.iou(BBox(0, 0, 10, 10)) == pytest.approx(1.0)
    assert box.iou(BBox(20, 20, 5, 5)) == 0.0
    assert box.iou(BBox(5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_from_json_reads_the_gallery_shape_and_round_trips():
    box = BBox.from_json({"x": 100, "y": 200, "width": 150, "height": 150})
    assert (box.x, box.y, box.width, box.height) == (100, 200, 150, 150)
    assert BBox.from_json(box.to_json()) == box


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"x": 1, "y": 2, "width": 3}, "missing height"),
        ({"x": "1", "y": 2, "width": 3, "height": 4}, "x must be a number"),
        ({"x": 1, "y": 2, "width": 0, "height": 4}, "positive size"),
        ({"x": 1, "y": 2, "width": -5, "height": 4}, "positive size"),
        ({"x": math.nan, "y": 2, "width": 3, "height": 4}, "finite"),
        ({"x": 1, "y": math.inf, "width": 3, "height": 4}, "finite"),
        ({"x": True, "y": 2, "width": 3, "height": 4}, "number"),
        ([1, 2, 3, 4], "object"),
    ],
)
def test_malformed_boxes_are_rejected_with_the_reason(data, message):
    with pytest.raises(BBoxError, match=message):
        BBox.from_json(data)


def test_expanded_and_clipped_keep_the_centre_and_stay_inside_the_image():
    box = BBox(40, 40, 20, 20).expanded(2.0)
    assert box.center == (50, 50) and box.width == 40
    assert BBox(-10, -10, 30, 30).clipped(100, 100) == BBox(0, 0, 20, 20)
    assert BBox(200, 200, 10, 10).clipped(100, 100) is None


# -- malformed boxes from a real gallery: the face is rejected with its reason, the read goes on ------

BAD_BOXES = {
    "huge width (the 1.7e308 that overflowed to inf)": ({"x": 0, "y": 0, "width": 1.7e308, "height": 50}, "width must be within"),
    "400-digit x": ({"x": 10**400, "y": 0, "width": 50, "height": 50}, "x must be within"),
    "string": ({"x": "ten", "y": 0, "width": 50, "height": 50}, "x must be a number, got 'ten'"),
    "boolean": ({"x": True, "y": 0, "width": 50, "height": 50}, "x must be a number, got True"),
    "nested object": ({"x": {"value": 1}, "y": 0, "width": 50, "height": 50}, "x must be a number, got {'value': 1}"),
    "missing keys": ({"x": 1, "y": 2}, "missing width, height"),
    "zero size": ({"x": 1, "y": 2, "width": 0, "height": 5}, "positive size"),
    "negative size": ({"x": 1, "y": 2, "width": 5, "height": -5}, "positive size"),
    "not an object": ([1, 2, 3, 4], "must be an object"),
    "null": (None, "must be an object"),
}


def test_a_gallery_row_with_a_malformed_box_is_rejected_with_its_reason_and_the_others_are_read(gallery_dsn):
    import psycopg
    from psycopg.types.json import Jsonb

    from facepipeline.gallery.postgres import PostgresGallery
    from facepipeline.sources.base import FaceFilters

    good = {"x": 10, "y": 20, "width": 30, "height": 40}
    with psycopg.connect(gallery_dsn, autocommit=True) as conn:
        person = conn.execute("insert into people (real_name) values ('Ada') returning id::text").fetchone()[0]
        photo = conn.execute(
            "insert into photos (storage_path, url, width, height) values ('p.jpg', 'http://127.0.0.1:9/p.jpg', 250, 250) returning id::text"
        ).fetchone()[0]

        def face(box) -> str:
            return conn.execute(
                "insert into photo_faces (photo_id, person_id, bbox, verified) values (%s, %s, %s, true) returning id::text",
                [photo, person, Jsonb(box)],  # None: the JSON null
            ).fetchone()[0]

        good_ids = {face(good) for _ in range(3)}
        bad_ids = {face(box): message for box, message in BAD_BOXES.values()}

    read = PostgresGallery(gallery_dsn).read(FaceFilters())
    assert {f.face_id for f in read.faces} == good_ids and all(f.bbox == BBox(10, 20, 30, 40) for f in read.faces)
    assert len(read.rejected) == len(bad_ids) == len(BAD_BOXES)
    for rejected in read.rejected:
        assert rejected.reason.startswith("bad bbox: ") and bad_ids[rejected.face_id] in rejected.reason, rejected
        assert "\n" not in rejected.reason and len(rejected.reason) < 200


def test_the_model_looks_around_a_box_at_the_limits_without_overflowing(face_model):
    """detect_near grows the box by 1.5 before cropping: at MAX_COORDINATE that must stay finite."""
    import numpy as np

    from facepipeline.geometry import MAX_COORDINATE
    from facepipeline.images import decode_image
    from tests.conftest import FACES

    image = decode_image(next(FACES.glob("*/*.jpg")).read_bytes())
    huge = BBox(-MAX_COORDINATE, -MAX_COORDINATE, MAX_COORDINATE, MAX_COORDINATE)
    assert huge.clipped(image.shape[1], image.shape[0]) is None  # lies outside: the embedding counts it as such
    whole = BBox(0, 0, MAX_COORDINATE, MAX_COORDINATE)
    found = face_model.detect_near(image, whole)  # the region is the whole photo
    assert len(found) >= 1 and all(np.isfinite([d.bbox.x, d.bbox.y, d.bbox.width, d.bbox.height]).all() for d in found)
