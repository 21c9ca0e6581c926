import io

import numpy as np
import pytest
from PIL import Image

from facepipeline.errors import ImageError
from facepipeline.images import decode_image, image_size
from tests.conftest import FACES

PHOTO = FACES / "George_W_Bush" / "George_W_Bush_0001.jpg"


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_real_jpeg_decodes_to_bgr_uint8():
    pixels = decode_image(PHOTO.read_bytes())
    assert pixels.shape == (250, 250, 3) and pixels.dtype == np.uint8
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
    assert np.array_equal(pixels[:, :, ::-1], rgb)


def pillow_bgr(data: bytes) -> np.ndarray:
    """Pillow's own decode, EXIF rotation applied, as BGR: what every photo decoded to before the
    plain-JPEG path."""
    from PIL import ImageOps

    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))[:, :, ::-1]


def exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.open(PHOTO).crop((0, 0, 250, 120)), "JPEG", quality=95, exif=exif.tobytes())


def xmp_jpeg(orientation: int) -> bytes:
    """A rotation in XMP only (``tiff:Orientation``), no EXIF block: Pillow reads it too."""
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{orientation}"/></rdf:RDF></x:xmpmeta>'
    )
    return encode(Image.open(PHOTO).crop((0, 0, 250, 120)), "JPEG", quality=95, xmp=xmp.encode())


def test_real_photos_decode_to_exactly_the_pixels_pillow_gives():
    photos = sorted(FACES.glob("*/*.jpg"))[::20]  # plain JPEGs: decoded by OpenCV
    assert len(photos) > 200
    different = [p.name for p in photos if not np.array_equal(decode_image(p.read_bytes()), pillow_bgr(p.read_bytes()))]
    assert different == []


@pytest.mark.parametrize(
    "data",
    [
        PHOTO.read_bytes() + b"trailing bytes after the end-of-image marker",  # goes Pillow's way
        PHOTO.read_bytes()[:6000] + PHOTO.read_bytes()[-2:],  # the middle lost, the end marker kept
        exif_jpeg(1),  # EXIF without a rotation: plain
        exif_jpeg(3),  # rotated: Pillow's way
        xmp_jpeg(6),  # rotated in XMP only: Pillow's way too
        encode(Image.open(PHOTO).convert("L"), "JPEG"),
        encode(Image.open(PHOTO).convert("CMYK"), "JPEG"),
        encode(Image.open(PHOTO), "JPEG", progressive=True),
        encode(Image.open(PHOTO), "JPEG", subsampling=0),  # 4:4:4
        encode(Image.open(PHOTO), "JPEG", subsampling=1),  # 4:2:2
        encode(Image.open(PHOTO).crop((3, 5, 254, 178)), "JPEG"),  # odd width and height (251 x 173)
        encode(Image.open(PHOTO).resize((2000, 1500)), "JPEG", quality=90),  # a phone-sized photo
        encode(Image.open(PHOTO), "JPEG", restart_marker_blocks=4),  # restart markers
    ],
    ids=["trailing-bytes", "middle-lost", "exif-1", "exif-3", "xmp-6", "grey", "cmyk", "progressive",
         "subsampling-444", "subsampling-422", "odd-size", "phone-size", "restart-markers"],
)
def test_every_jpeg_decodes_to_exactly_the_pixels_pillow_gives(data):
    assert np.array_equal(decode_image(data), pillow_bgr(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "HTML page"),
        (b"\x00\x01garbage" * 10, "not an image"),
        (PHOTO.read_bytes()[:3000], "corrupt image"),
    ],
    ids=["zero-bytes", "html", "garbage", "truncated-jpeg"],
)
def test_bad_bytes_raise_an_image_error_with_the_reason(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_decompression_bomb_is_refused_from_the_header_before_decoding():
    bomb = encode(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(bomb) < 200_000  # tiny on disk, 400 megapixels once decoded
    with pytest.raises(ImageError, match="too large"):
        image_size(bomb)
    with pytest.raises(ImageError, match="too large"):
        decode_image(bomb)


def test_images_over_our_own_pixel_limit_are_refused_before_decoding():
    with pytest.raises(ImageError, match="too large: 250x250 pixels"):
        decode_image(PHOTO.read_bytes(), max_pixels=250 * 249)


def test_exif_rotation_is_applied_in_the_right_direction():
    stored = Image.open(PHOTO).convert("RGB").crop((0, 0, 250, 120))  # wider than tall
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    pixels = decode_image(encode(stored, "PNG", exif=exif.tobytes()))
    expected = np.asarray(stored.transpose(Image.Transpose.ROTATE_270))  # PIL rotates counter-clockwise
    assert pixels.shape[:2] == (250, 120)
    assert np.array_equal(pixels[:, :, ::-1], expected)


@pytest.mark.parametrize(("mode", "fmt"), [("CMYK", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("RGB", "WEBP")])
def test_other_colour_modes_and_formats_keep_their_pixels(mode, fmt):
    original = Image.open(PHOTO).convert(mode)
    pixels = decode_image(encode(original, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    reference = np.asarray(original.convert("RGB")).astype(int)
    assert pixels.shape == (250, 250, 3)
    tolerance = 8 if fmt == "JPEG" else 0  # JPEG re-encoding moves pixels a little
    assert np.abs(pixels[:, :, ::-1].astype(int) - reference).mean() <= tolerance


def test_sixteen_bit_greyscale_is_scaled_not_clipped_to_white():
    grey = np.asarray(Image.open(PHOTO).convert("L"))
    wide = Image.fromarray(grey.astype(np.uint16) * 257)  # the same picture in 16 bits
    pixels = decode_image(encode(wide, "PNG"))
    assert np.abs(pixels[:, :, 0].astype(int) - grey.astype(int)).max() <= 1


def _variant(name: str) -> bytes:
    """The same real face photo in each accepted format and colour mode a gallery may hold."""
    original = Image.open(PHOTO)
    if name == "cmyk_jpeg":
        return encode(original.convert("CMYK"), "JPEG", quality=95)
    if name == "grey_png":
        return encode(original.convert("L"), "PNG")
    if name == "rgba_png":
        rgba = original.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))  # transparent at the top, opaque below
        return encode(rgba, "PNG")
    if name == "webp":
        return encode(original, "WEBP", quality=90)
    if name == "exif_rotated_jpeg":  # stored sideways, the EXIF tag says "rotate 90 degrees clockwise"
        exif = Image.Exif()
        exif[0x0112] = 6
        return encode(original.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    raise AssertionError(name)


VARIANTS = ["cmyk_jpeg", "grey_png", "rgba_png", "webp", "exif_rotated_jpeg"]


def test_the_model_finds_the_same_face_in_every_accepted_format_and_colour_mode(face_model):
    from facepipeline.embedding import FaceJob, embed_faces

    photos = {"original": PHOTO.read_bytes(), **{name: _variant(name) for name in VARIANTS}}
    assert all(decode_image(data).shape == (250, 250, 3) for data in photos.values())  # upright, three channels
    results = {r.face_id: r for r in embed_faces(face_model, [FaceJob(k, k, None) for k in photos], photos.__getitem__)}
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    reference = results["original"].embedding
    similarity = {name: float(np.dot(results[name].embedding, reference)) for name in VARIANTS}
    assert min(similarity.values()) > 0.85, similarity  # greyscale loses the most: ~0.93
    centre = results["original"].detection.bbox.center
    for name in VARIANTS:  # the same face at the same place (the pixel-exact rotation check is above)
        x, y = results[name].detection.bbox.center
        assert abs(x - centre[0]) < 5 and abs(y - centre[1]) < 5, (name, (x, y), centre)


def test_formats_outside_the_accepted_ones_never_reach_a_decoder():
    original = Image.open(PHOTO)
    for fmt, name in [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF"), ("PPM", "PNM")]:
        with pytest.raises(ImageError, match=rf"^not an image \(a {name} image; accepted formats: JPEG, PNG, WEBP\)$"):
            decode_image(encode(original, fmt))
