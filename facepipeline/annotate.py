"""Photos drawn with their faces: a box per face, the suggested name and its score, for a person to check."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facepipeline.geometry import BBox

GREEN, YELLOW, GREY = (46, 204, 113), (241, 196, 15), (149, 165, 166)  # suggested, unknown, a person's


@dataclass(frozen=True)
class Box:
    bbox: BBox
    label: str
    colour: tuple[int, int, int]


def annotate(image_bgr: np.ndarray, boxes: list[Box], *, max_side: int = 480, quality: int = 75) -> bytes:
    """A JPEG of the photo, at most ``max_side`` px, with each box outlined and labelled."""
    photo = Image.fromarray(np.ascontiguousarray(image_bgr[..., ::-1]))
    scale = min(1.0, max_side / max(photo.size))
    if scale < 1.0:
        photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(photo)
    font = ImageFont.load_default(size=max(11, round(photo.width / 50)))
    width = max(2, round(photo.width / 300))
    for box in boxes:
        x1, y1 = box.bbox.x * scale, box.bbox.y * scale
        x2, y2 = box.bbox.x2 * scale, box.bbox.y2 * scale
        draw.rectangle((x1, y1, x2, y2), outline=box.colour, width=width)
        left, top, right, bottom = draw.textbbox((x1, y2 + 2), box.label, font=font)
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=box.colour)
        draw.text((x1, y2 + 2), box.label, fill=(0, 0, 0), font=font)
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=quality)
    return out.getvalue()
