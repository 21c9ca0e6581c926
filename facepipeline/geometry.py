"""Face boxes in photo pixels, and how to compare them.

A :class:`BBox` is valid by construction: four finite numbers (never booleans, strings or nested
values), a positive size, and every coordinate within :data:`MAX_COORDINATE` pixels. The bound is
what keeps arithmetic on boxes finite: a gallery row saying ``"width": 1.7e308`` would otherwise
turn into ``inf`` the moment the box is grown to look for the face around it. No photo is that
large (decoding refuses far smaller ones), so a box beyond it is malformed, reported as such, and
the face it belongs to is counted as rejected while the rest of the run goes on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from facepipeline.errors import FacePipelineError, shown


class BBoxError(FacePipelineError, ValueError):
    """A bounding box that cannot describe a face in a photo."""


MAX_COORDINATE = 10_000_000.0
"""Pixels: the largest ``|x|``, ``|y|``, width or height a box may have (a photo 10 million pixels
wide does not exist; decoding refuses photos long before)."""

@dataclass(frozen=True, slots=True)
class BBox:
    """An axis-aligned box, top-left corner plus size, in pixels of the original photo.

    The same shape as the gallery's ``photo_faces.bbox`` JSON: ``{"x", "y", "width", "height"}``.
    """

    x: float
    y: float
    width: float
    height: float

    def __post_init__(self) -> None:
        for name in ("x", "y", "width", "height"):
            value = getattr(self, name)
            if type(value) is float and -MAX_COORDINATE <= value <= MAX_COORDINATE:
                continue  # the usual case, decided at once (NaN and inf fail the comparison)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BBoxError(f"bbox {name} must be a number, got {shown(value)}")
            # An int is compared as an int: math.isfinite would overflow on a 400-digit one.
            if isinstance(value, float) and not math.isfinite(value):
                raise BBoxError(f"bbox {name} must be finite, got {value!r}")
            if not -MAX_COORDINATE <= value <= MAX_COORDINATE:
                raise BBoxError(f"bbox {name} must be within +-{MAX_COORDINATE:,.0f} pixels, got {shown(value)}")
        if self.width <= 0 or self.height <= 0:
            raise BBoxError(f"bbox must have a positive size, got {shown(self.width)}x{shown(self.height)}")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BBox:
        """Parse the gallery's JSON box, with a clear error for anything malformed."""
        if not isinstance(data, Mapping):
            raise BBoxError(f"bbox must be an object with x, y, width, height; got {type(data).__name__}")
        missing = [k for k in ("x", "y", "width", "height") if k not in data]
        if missing:
            raise BBoxError(f"bbox is missing {', '.join(missing)}")
        return cls(data["x"], data["y"], data["width"], data["height"])

    @classmethod
    def from_xyxy(cls, x1: float, y1: float, x2: float, y2: float) -> BBox:
        return cls(float(x1), float(y1), float(x2) - float(x1), float(y2) - float(y1))

    def to_json(self) -> dict[str, float]:
        return {"x": round(self.x, 2), "y": round(self.y, 2), "width": round(self.width, 2), "height": round(self.height, 2)}

    @property
    def x2(self) -> float:
        return self.x + self.width

    @property
    def y2(self) -> float:
        return self.y + self.height

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.width / 2, self.y + self.height / 2

    def iou(self, other: BBox) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x, other.x))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y, other.y))
        inter = ix * iy
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union > 0 else 0.0

    def contains_point(self, px: float, py: float) -> bool:
        return self.x <= px <= self.x2 and self.y <= py <= self.y2

    def expanded(self, factor: float) -> BBox:
        """The box grown around its centre, e.g. ``factor=2`` doubles width and height.

        ``factor`` is at least 1 (a box only grows). Width and height stop at
        :data:`MAX_COORDINATE`, and the corner stays within it, so the result is a valid, finite box
        for any valid box and factor (it is clipped to a photo afterwards anyway).
        """
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 <= factor < math.inf:
            raise BBoxError(f"a box grows by a finite factor >= 1, got {shown(factor)}")
        factor = float(min(factor, 1e300))  # a 400-digit int factor would overflow float()
        cx, cy = self.center
        w, h = min(self.width * factor, MAX_COORDINATE), min(self.height * factor, MAX_COORDINATE)
        x = min(max(cx - w / 2, -MAX_COORDINATE), MAX_COORDINATE)
        y = min(max(cy - h / 2, -MAX_COORDINATE), MAX_COORDINATE)
        return BBox(x, y, w, h)

    def clipped(self, image_width: int, image_height: int) -> BBox | None:
        """The part of the box inside the image, or None when nothing of it is."""
        x1, y1 = max(0.0, self.x), max(0.0, self.y)
        x2, y2 = min(float(image_width), self.x2), min(float(image_height), self.y2)
        if x2 - x1 < 1 or y2 - y1 < 1:
            return None
        return BBox(x1, y1, x2 - x1, y2 - y1)
