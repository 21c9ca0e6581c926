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
