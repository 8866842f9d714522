"""Tests of ``preprocess.image_io``: every source kind and mode becomes the right RGB image, bad input raises
a ``ValueError`` subclass naming the input, and inputs are never modified.

Oracles are Pillow itself (``convert``, ``alpha_composite``), numpy rotations and, for array alpha blending,
``transformers.image_transforms.convert_to_rgb`` (test-only parity oracle).
"""

from __future__ import annotations

import io
import pathlib
import warnings

import numpy as np
import PIL.Image
import pytest
from PIL import Image

from preprocess import errors
from preprocess.image_io import DecodedImage, decode_image, describe_source, load_image

# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def reference_convert_to_rgb(reference):
    """The reference's ``convert_to_rgb`` (alpha composited on white); skips the test without transformers."""
    return pytest.importorskip("transformers.image_transforms").convert_to_rgb


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8 random pixels."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str, **kwargs) -> bytes:
    """Encode ``image`` with Pillow into ``fmt`` and return the bytes."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    """The RGB pixels of a decoded image, asserting it is an RGB image."""
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    out = np.asarray(image)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    return out


def composite_on_white(image: Image.Image) -> np.ndarray:
    """Pillow's alpha composite of ``image`` over opaque white, as RGB pixels (transparency oracle)."""
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def snapshot(image: Image.Image) -> tuple:
    """Everything about a PIL image a decoder could accidentally change."""
    return image.mode, image.size, image.tobytes(), dict(image.info)


class NonSeekable(io.RawIOBase):
    """A read-only binary stream that cannot seek (like a socket or a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b) -> int:
        chunk = self._buf.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)

    def tell(self) -> int:
        raise OSError("not seekable")

    def seek(self, *args) -> int:
        raise OSError("not seekable")


def expect_error(exc_type: type[Exception], fn, *args, names: str, **kwargs) -> Exception:
    """Call ``fn`` expecting ``exc_type`` (a ValueError subclass from preprocess.errors) whose message names
    the input (``names`` occurs in ``str(exc)``)."""
    assert issubclass(exc_type, errors.InvalidImageError) and issubclass(exc_type, ValueError)
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert names in str(info.value), (names, str(info.value))
    assert isinstance(info.value, ValueError)
    return info.value


RGB_SOURCE = random_rgb(24, 40, seed=1)  # (h, w) = (24, 40): not square, so a transposition would show
PNG_BYTES = encode(RGB_SOURCE, "PNG")


# ------------------------------------------------------------------------------------------------ sources


def test_path_str_and_pathlib(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(PNG_BYTES)
    for source in (str(path), path):
        decoded = decode_image(source)
        assert isinstance(decoded, DecodedImage)
        np.testing.assert_array_equal(pixels(decoded.image), RGB_SOURCE)
        assert decoded.original_size == (24, 40)
        assert str(path) in decoded.source
        np.testing.assert_array_equal(pixels(load_image(source)), RGB_SOURCE)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_like(kind):
    source = kind(PNG_BYTES)
    np.testing.assert_array_equal(pixels(load_image(source)), RGB_SOURCE)
    assert decode_image(source).original_size == (24, 40)


def test_seekable_file_object_position_restored():
    fp = io.BytesIO(PNG_BYTES)
    assert fp.tell() == 0
    np.testing.assert_array_equal(pixels(load_image(fp)), RGB_SOURCE)
    assert fp.tell() == 0
    # Decoding the same object again works because its position was restored.
    np.testing.assert_array_equal(pixels(load_image(fp)), RGB_SOURCE)
    assert fp.tell() == 0


def test_seekable_file_object_position_restored_after_error():
    fp = io.BytesIO(b"this is not an image at all, just text" * 4)
    fp.seek(5)
    with pytest.raises(errors.NotAnImageError):
        load_image(fp)
    assert fp.tell() == 5


def test_real_file_object(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(PNG_BYTES)
    with open(path, "rb") as fp:
        np.testing.assert_array_equal(pixels(load_image(fp)), RGB_SOURCE)
        assert fp.tell() == 0
        assert not fp.closed


def test_seekable_file_object_at_nonzero_offset():
    prefix = b"container header"
    fp = io.BytesIO(prefix + PNG_BYTES)
    fp.seek(len(prefix))
    np.testing.assert_array_equal(pixels(load_image(fp)), RGB_SOURCE)
    assert fp.tell() == len(prefix)


def test_non_seekable_file_object():
    stream = NonSeekable(PNG_BYTES)
    assert not stream.seekable()
    np.testing.assert_array_equal(pixels(load_image(stream)), RGB_SOURCE)


def test_non_seekable_file_object_reads_from_current_position():
    prefix = b"container header"
    stream = NonSeekable(prefix + PNG_BYTES)
    assert stream.read(len(prefix)) == prefix
    np.testing.assert_array_equal(pixels(load_image(stream)), RGB_SOURCE)


def test_pil_image():
    image = Image.fromarray(RGB_SOURCE)
    decoded = decode_image(image)
    np.testing.assert_array_equal(pixels(decoded.image), RGB_SOURCE)
    assert decoded.original_size == (24, 40)


def test_uint8_hwc_arrays():
    for channels in (3, 1):
        array = RGB_SOURCE[:, :, :channels].copy()
        decoded = decode_image(array)
        expected = np.repeat(array, 3, axis=2) if channels == 1 else array
        np.testing.assert_array_equal(pixels(decoded.image), expected)
        assert decoded.original_size == (24, 40)


def test_uint8_hw_array_is_grey():
    grey = RGB_SOURCE[:, :, 0].copy()
    out = pixels(load_image(grey))
    np.testing.assert_array_equal(out, np.stack([grey] * 3, axis=2))
    assert decode_image(grey).original_size == (24, 40)


def test_non_contiguous_array():
    view = RGB_SOURCE[::-1, ::2]  # negative and non-unit strides
    np.testing.assert_array_equal(pixels(load_image(view)), np.ascontiguousarray(view))


def test_uint16_arrays_scale_by_257_with_rounding():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)  # no exact ties
    np.testing.assert_array_equal(pixels(load_image(values)), np.stack([expected] * 3, axis=2))
    rgb16 = np.stack([values, values[::-1], values.T], axis=2)
    np.testing.assert_array_equal(pixels(load_image(rgb16)), np.stack([expected, expected[::-1], expected.T], axis=2))
    # Spot values computed by hand: 128/257 < 0.5, 129/257 > 0.5, 256/257 ~ 1, 65535/257 = 255.
    spots = np.array([[0, 128, 129, 256, 385, 386, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(pixels(load_image(spots))[0, :, 0], [0, 0, 1, 1, 1, 2, 255])


def test_describe_source():
    assert describe_source(b"abc") == "image bytes (3 bytes)"
    assert "image bytes" in describe_source(bytearray(b"ab"))
    assert "image bytes" in describe_source(memoryview(b"ab"))
    assert "/some/where.png" in describe_source("/some/where.png")
    assert "/some/where.png" in describe_source(pathlib.Path("/some/where.png"))
    assert "RGBA" in describe_source(Image.new("RGBA", (5, 7))) and "5x7" in describe_source(Image.new("L", (5, 7)))
    text = describe_source(np.zeros((2, 3, 4), np.uint8))
    assert "(2, 3, 4)" in text and "uint8" in text
    named = io.BytesIO(b"x")
    named.name = "upload.jpg"
    assert "upload.jpg" in describe_source(named)
    assert "int" in describe_source(42)
    assert describe_source(b"abc", name="my photo") == "my photo"


# ------------------------------------------------------------------------------------------------ modes


def test_mode_l():
    grey = RGB_SOURCE[:, :, 1].copy()
    for source in (Image.fromarray(grey, "L"), encode(Image.fromarray(grey, "L"), "PNG")):
        np.testing.assert_array_equal(pixels(load_image(source)), np.stack([grey] * 3, axis=2))


def test_mode_la_composited_on_white():
    la = Image.merge("LA", [Image.fromarray(RGB_SOURCE[:, :, 0]), Image.fromarray(RGB_SOURCE[:, :, 2])])
    expected = composite_on_white(la)
    for source in (la, encode(la, "PNG")):
        np.testing.assert_array_equal(pixels(load_image(source)), expected)
    # Not simply dropping alpha:
    assert not np.array_equal(expected, np.asarray(la.convert("RGB")))


def test_mode_rgba_composited_on_white():
    alpha = np.random.default_rng(5).integers(0, 256, RGB_SOURCE.shape[:2], dtype=np.uint8)
    alpha[0, :4] = [0, 255, 1, 128]
    rgba = Image.fromarray(np.dstack([RGB_SOURCE, alpha]), "RGBA")
    expected = composite_on_white(rgba)
    for source in (rgba, encode(rgba, "PNG")):
        out = pixels(load_image(source))
        np.testing.assert_array_equal(out, expected)
    assert (out[0, 0] == 255).all()  # fully transparent -> white
    np.testing.assert_array_equal(out[0, 1], RGB_SOURCE[0, 1])  # opaque -> colour kept


def test_mode_p():
    palette_image = Image.fromarray(RGB_SOURCE).quantize(colors=16)
    assert palette_image.mode == "P" and "transparency" not in palette_image.info
    expected = np.asarray(palette_image.convert("RGB"))
    for source in (palette_image, encode(palette_image, "PNG"), encode(palette_image, "GIF")):
        np.testing.assert_array_equal(pixels(load_image(source)), expected)


def test_mode_p_with_transparency():
    def make() -> Image.Image:  # fresh each time: Pillow's GIF writer mangles a palette once converted
        image = Image.fromarray(np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8), "P")
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])  # 0 black (transparent), 1 red, 2 green
        image.info["transparency"] = 0
        return image

    for source in (make(), encode(make(), "PNG"), encode(make(), "GIF", transparency=0)):
        reopened = source if isinstance(source, Image.Image) else Image.open(io.BytesIO(source))
        expected = composite_on_white(reopened)
        out = pixels(load_image(source))
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(out[0], [[255, 255, 255], [255, 0, 0], [0, 255, 0]])
        np.testing.assert_array_equal(out[1], [[0, 255, 0], [255, 0, 0], [255, 255, 255]])


def test_mode_cmyk():
    cmyk = Image.fromarray(np.dstack([RGB_SOURCE, RGB_SOURCE[:, :, :1]]), "CMYK")
    expected = np.asarray(cmyk.convert("RGB"))
    for source in (cmyk, encode(cmyk, "TIFF")):
        np.testing.assert_array_equal(pixels(load_image(source)), expected)


def test_mode_1bit():
    bits = Image.fromarray(RGB_SOURCE[:, :, 0] > 127)
    assert bits.mode == "1"
    expected = np.stack([np.where(RGB_SOURCE[:, :, 0] > 127, 255, 0).astype(np.uint8)] * 3, axis=2)
    for source in (bits, encode(bits, "PNG")):
        np.testing.assert_array_equal(pixels(load_image(source)), expected)


def test_mode_i16_png_scales_instead_of_clipping():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    data = encode(Image.fromarray(values), "PNG")
    opened = Image.open(io.BytesIO(data))
    assert opened.mode.startswith("I;16")
    expected = np.floor(values.astype(np.float64) / 257 + 0.5).astype(np.uint8)
    out = pixels(load_image(data))
    np.testing.assert_array_equal(out, np.stack([expected] * 3, axis=2))
    np.testing.assert_array_equal(pixels(load_image(opened)), out)
    # Documented deviation from the reference's plain convert("RGB"), which clips everything above 255.
    clipped = np.asarray(opened.convert("RGB"))
    np.testing.assert_array_equal(clipped[:, :, 0], np.minimum(values, 255).astype(np.uint8))
    assert not np.array_equal(out, clipped)
    assert out[1, 0, 0] == 1 and clipped[1, 0, 0] == 255  # value 256
    assert out[0, 128, 0] == 0 and clipped[0, 128, 0] == 128  # value 128


def test_mode_i_and_f_in_range_accepted():
    ints = np.array([[0, 1, 128], [200, 254, 255]], dtype=np.int32)
    image_i = Image.fromarray(ints)
    assert image_i.mode == "I"
    np.testing.assert_array_equal(pixels(load_image(image_i)), np.stack([ints.astype(np.uint8)] * 3, axis=2))
    floats = np.array([[0.0, 0.2, 10.9], [127.1, 254.8, 255.0]], dtype=np.float32)
    image_f = Image.fromarray(floats)
    assert image_f.mode == "F"
    expected = np.array([[0, 0, 11], [127, 255, 255]], dtype=np.uint8)
    for source in (image_f, encode(image_f, "TIFF")):
        np.testing.assert_array_equal(pixels(load_image(source)), np.stack([expected] * 3, axis=2))


@pytest.mark.parametrize(
    "values",
    [
        np.array([[0, 256]], dtype=np.int32),
        np.array([[-1, 10]], dtype=np.int32),
        np.array([[0.0, 255.5]], dtype=np.float32),
        np.array([[-0.5, 3.0]], dtype=np.float32),
        np.array([[np.inf, 3.0]], dtype=np.float32),
    ],
)
def test_mode_i_and_f_out_of_range_refused(values):
    image = Image.fromarray(values)
    assert image.mode in ("I", "F")
    expect_error(errors.UnsupportedImageError, load_image, image, names=f"mode {image.mode}")
    expect_error(errors.UnsupportedImageError, load_image, image, name="scan 7", names="scan 7")
    expect_error(errors.UnsupportedImageError, load_image, encode(image, "TIFF"), names="image bytes")


def test_mode_f_nan_refused():
    values = np.full((4, 4), 10.0, dtype=np.float32)
    values[0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expect_error(errors.UnsupportedImageError, load_image, Image.fromarray(values), names="mode F")


def test_rgba_and_la_arrays_match_reference_convert_to_rgb(reference_convert_to_rgb):
    # Every (colour, alpha) pair: colour varies along rows, alpha along columns.
    colour, alpha = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij")
    rgba = np.dstack([colour, colour[::-1], np.roll(colour, 77, axis=0), alpha])
    expected = reference_convert_to_rgb(rgba, return_numpy=True)
    assert expected.shape == (256, 256, 3)
    np.testing.assert_array_equal(pixels(load_image(rgba)), expected)
    # LA (two channels): the reference takes no 2-channel arrays; it equals RGBA with grey colour.
    la = np.dstack([colour, alpha])
    expected_la = reference_convert_to_rgb(np.dstack([colour, colour, colour, alpha]), return_numpy=True)
    np.testing.assert_array_equal(pixels(load_image(la)), expected_la)
    # And the blend agrees with Pillow's alpha_composite of the same RGBA image.
    np.testing.assert_array_equal(expected, composite_on_white(Image.fromarray(rgba, "RGBA")))


def test_single_channel_array_matches_reference(reference_convert_to_rgb):
    grey = RGB_SOURCE[:, :, :1].copy()
    np.testing.assert_array_equal(pixels(load_image(grey)), reference_convert_to_rgb(grey, return_numpy=True))


# ------------------------------------------------------------------------------------------------ orientation


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1)])  # 6: rotate 90 clockwise; 8: anticlockwise
def test_exif_orientation_png_exact(orientation, turns):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(RGB_SOURCE, "PNG", exif=exif.tobytes())
    decoded = decode_image(data)
    upright = np.rot90(RGB_SOURCE, turns)
    assert decoded.image.size == (24, 40)  # PIL (width, height): swapped from the stored 40x24
    assert decoded.original_size == (40, 24)
    np.testing.assert_array_equal(pixels(decoded.image), upright)
    # A PIL image opened from the same bytes is turned upright too, and left as it was.
    opened = Image.open(io.BytesIO(data))
    before = snapshot(opened)
    np.testing.assert_array_equal(pixels(load_image(opened)), upright)
    assert snapshot(opened) == before


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1)])
def test_exif_orientation_jpeg(orientation, turns):
    # Large flat quadrants so that JPEG loss cannot hide a wrong rotation.
    source = np.zeros((64, 96, 3), np.uint8)
    source[:32, :48] = (255, 0, 0)
    source[:32, 48:] = (0, 255, 0)
    source[32:, :48] = (0, 0, 255)
    source[32:, 48:] = (255, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(source).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(buf.getvalue())
    assert decoded.image.size == (64, 96)
    assert decoded.original_size == (96, 64)
    out = pixels(decoded.image).astype(np.int16)
    assert np.abs(out - np.rot90(source, turns)).mean() < 4
    assert np.abs(out - np.rot90(source, -turns)).mean() > 50


def test_draft_decodes_jpeg_smaller_but_reports_full_size():
    source = np.kron(random_rgb(30, 40, seed=3), np.ones((16, 16, 1), np.uint8))  # 480 x 640
    data = encode(source, "JPEG", quality=95)
    calls = []

    def draft(original):
        calls.append(original)
        return original[0] // 4, original[1] // 4

    decoded = decode_image(data, draft=draft)
    assert calls == [(480, 640)]
    assert decoded.original_size == (480, 640)
    width, height = decoded.image.size
    assert 120 <= height < 480 and 160 <= width < 640
    # Without draft: full size. A PNG ignores draft.
    assert decode_image(data).image.size == (640, 480)
    assert decode_image(encode(source, "PNG"), draft=draft).image.size == (640, 480)


def test_draft_with_exif_rotation_uses_upright_sizes():
    source = np.kron(random_rgb(30, 40, seed=4), np.ones((16, 16, 1), np.uint8))  # stored 480 x 640
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(source, "JPEG", quality=95, exif=exif.tobytes())
    calls = []

    def draft(original):
        calls.append(original)
        return 300, 100  # upright (h, w): at most 1/2 scale is possible along the height

    decoded = decode_image(data, draft=draft)
    assert calls == [(640, 480)]
    assert decoded.original_size == (640, 480)
    width, height = decoded.image.size
    assert height >= 300 and width >= 100
    assert height < 640 and height > width


# ------------------------------------------------------------------------------------------------ animation


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def test_animated_gif_first_frame():
    data = animated_gif()
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = pixels(load_image(data))
    assert out.shape == (6, 8, 3)
    assert (out == [255, 0, 0]).all()


def test_animated_pil_image_left_on_its_frame():
    image = Image.open(io.BytesIO(animated_gif()))
    image.seek(2)
    out = pixels(load_image(image))
    assert (out == [255, 0, 0]).all()  # frame 0
    assert image.tell() == 2
    assert (np.asarray(image.convert("RGB")) == [0, 0, 255]).all()  # still frame 2's pixels


# ------------------------------------------------------------------------------------------ inputs untouched


def test_arrays_not_modified():
    rng = np.random.default_rng(11)
    arrays = [
        rng.integers(0, 256, (9, 7, 4), dtype=np.uint8),
        rng.integers(0, 256, (9, 7, 2), dtype=np.uint8),
        rng.integers(0, 256, (9, 7, 1), dtype=np.uint8),
        rng.integers(0, 256, (9, 7), dtype=np.uint8),
        rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16),
        rng.integers(0, 65536, (9, 7, 4), dtype=np.uint16),
    ]
    for array in arrays:
        copy = array.copy()
        out = load_image(array)
        np.testing.assert_array_equal(array, copy)
        assert array.dtype == copy.dtype and array.shape == copy.shape
        # The result does not share memory with the input.
        np.asarray(out)  # force materialisation
        assert not np.shares_memory(np.asarray(out), array)


def test_pil_images_not_modified():
    rng = np.random.default_rng(12)
    rgba = Image.fromarray(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8), "RGBA")
    la = Image.fromarray(rng.integers(0, 256, (9, 7, 2), dtype=np.uint8), "LA")
    palette = Image.fromarray(rng.integers(0, 3, (9, 7), dtype=np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    palette.info["transparency"] = 1
    rgb = Image.fromarray(random_rgb(9, 7))
    cmyk = Image.fromarray(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8), "CMYK")
    i16 = Image.fromarray(rng.integers(0, 65536, (9, 7), dtype=np.uint16))
    floats = Image.fromarray(rng.uniform(0, 255, (9, 7)).astype(np.float32))
    for image in (rgba, la, palette, rgb, cmyk, i16, floats):
        before = snapshot(image)
        load_image(image)
        assert snapshot(image) == before, image.mode


# ------------------------------------------------------------------------------------------------ bad input


def test_error_classes_are_value_errors():
    for cls in (
        errors.EmptyImageError,
        errors.NotAnImageError,
        errors.CorruptImageError,
        errors.UnsupportedImageError,
        errors.ImageTooLargeError,
    ):
        assert issubclass(cls, errors.InvalidImageError) and issubclass(cls, ValueError)


def test_empty_inputs(tmp_path):
    expect_error(errors.EmptyImageError, load_image, b"", names="image bytes")
    expect_error(errors.EmptyImageError, load_image, bytearray(), names="image bytes")
    expect_error(errors.EmptyImageError, load_image, b"", name="upload #3", names="upload #3")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    expect_error(errors.EmptyImageError, load_image, empty, names=str(empty))
    expect_error(errors.EmptyImageError, load_image, io.BytesIO(), name="stream", names="stream")
    expect_error(errors.EmptyImageError, load_image, NonSeekable(b""), name="pipe", names="pipe")


def test_not_an_image(tmp_path):
    junk = np.random.default_rng(2).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    expect_error(errors.NotAnImageError, load_image, junk, names="image bytes")
    expect_error(errors.NotAnImageError, load_image, junk, name="attachment", names="attachment")
    path = tmp_path / "notes.png"
    path.write_bytes(b"just some text, not a PNG\n" * 10)
    expect_error(errors.NotAnImageError, load_image, path, names=str(path))
    expect_error(errors.NotAnImageError, load_image, NonSeekable(junk), name="pipe", names="pipe")


def test_truncated_jpeg_and_png(tmp_path):
    source = random_rgb(64, 64, seed=9)
    for fmt in ("JPEG", "PNG"):
        data = encode(source, fmt)
        cut = data[: len(data) // 2]
        exc = expect_error(errors.CorruptImageError, load_image, cut, names="image bytes")
        assert fmt in str(exc)
        path = tmp_path / f"cut.{fmt.lower()}"
        path.write_bytes(cut)
        expect_error(errors.CorruptImageError, load_image, path, names=str(path))


def test_truncated_header():
    source = random_rgb(64, 64, seed=9)
    for fmt, keep in (("JPEG", 50), ("PNG", 20)):
        cut = encode(source, fmt)[:keep]
        try:
            load_image(cut, name="cut-file")
        except errors.InvalidImageError as exc:
            assert "cut-file" in str(exc)
        except OSError as exc:
            raise AssertionError(f"{fmt} cut at {keep} bytes raised bare {exc!r}") from exc
        else:
            raise AssertionError(f"{fmt} cut at {keep} bytes decoded")


def test_array_errors():
    expect_error(errors.EmptyImageError, load_image, np.zeros((0, 5, 3), np.uint8), names="image array")
    expect_error(errors.EmptyImageError, load_image, np.zeros((5, 0), np.uint8), names="(5, 0)")
    expect_error(errors.UnsupportedImageError, load_image, np.zeros((5, 5, 3), np.float64), names="float64")
    expect_error(errors.UnsupportedImageError, load_image, np.zeros((5, 5, 3), np.int32), names="image array")
    expect_error(errors.UnsupportedImageError, load_image, np.zeros((5, 5, 3), bool), names="image array")
    expect_error(errors.UnsupportedImageError, load_image, np.zeros(25, np.uint8), names="(25,)")
    expect_error(errors.UnsupportedImageError, load_image, np.zeros((2, 5, 5, 3), np.uint8), names="(2, 5, 5, 3)")
    expect_error(errors.UnsupportedImageError, load_image, np.zeros((5, 5, 5), np.uint8), names="(5, 5, 5)")
    expect_error(errors.UnsupportedImageError, load_image, np.zeros((3, 5, 5), np.uint8), names="(3, 5, 5)")
    expect_error(errors.UnsupportedImageError, load_image, np.zeros((5, 5, 3), np.float32), name="frame", names="frame")


def test_empty_pil_image():
    expect_error(errors.EmptyImageError, load_image, Image.new("RGB", (0, 4)), names="PIL image")


def test_unsupported_types():
    expect_error(errors.UnsupportedImageError, load_image, 42, names="int")
    expect_error(errors.UnsupportedImageError, load_image, [[1, 2], [3, 4]], names="list")
    expect_error(errors.UnsupportedImageError, load_image, None, name="slot 0", names="slot 0")


def test_missing_path(tmp_path):
    missing = tmp_path / "no" / "such.png"
    for source in (missing, str(missing)):
        with pytest.raises(FileNotFoundError) as info:
            load_image(source)
        assert str(missing) in str(info.value)


def test_max_pixels_file_and_array(tmp_path):
    array = random_rgb(64, 64, seed=6)  # 4096 pixels
    data = encode(array, "PNG")
    path = tmp_path / "big.png"
    path.write_bytes(data)
    expect_error(errors.ImageTooLargeError, load_image, data, max_pixels=4095, names="image bytes")
    expect_error(errors.ImageTooLargeError, load_image, path, max_pixels=4095, names=str(path))
    expect_error(errors.ImageTooLargeError, load_image, array, max_pixels=4095, names="image array")
    expect_error(errors.ImageTooLargeError, load_image, Image.fromarray(array), max_pixels=4095, names="PIL image")
    exc = expect_error(errors.ImageTooLargeError, load_image, array, max_pixels=100, name="huge", names="huge")
    assert "4096" in str(exc)
    # At the limit, and without a limit, the image decodes.
    for source in (data, path, array, Image.fromarray(array)):
        np.testing.assert_array_equal(pixels(load_image(source, max_pixels=4096)), array)
        np.testing.assert_array_equal(pixels(load_image(source, max_pixels=None)), array)


def test_pillow_bomb_limit_below_ours(monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    array = random_rgb(64, 64, seed=7)  # 4096 > 2 * 1000: Pillow itself would refuse to open it
    data = encode(array, "PNG")
    with pytest.raises(PIL.Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    expect_error(errors.ImageTooLargeError, load_image, data, max_pixels=500, names="image bytes")
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000
    expect_error(errors.ImageTooLargeError, load_image, data, max_pixels=1999, names="image bytes")
    for limit in (10**9, None):
        np.testing.assert_array_equal(pixels(load_image(data, max_pixels=limit)), array)
        assert PIL.Image.MAX_IMAGE_PIXELS == 1000


def test_pillow_bomb_limit_restored_after_decode_error(monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(random_rgb(64, 64, seed=8), "PNG")
    cut = data[: len(data) // 2]
    expect_error(errors.CorruptImageError, load_image, cut, max_pixels=10**9, names="image bytes")
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000


def test_no_decompression_bomb_warning_leaks(monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 px: Pillow warns (but does not refuse)
    data = encode(random_rgb(64, 64, seed=8), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        assert load_image(data, max_pixels=10**6).size == (64, 64)


def test_pillow_global_limit_is_never_changed_even_while_decoding(monkeypatch):
    """Process-wide knobs are the entry points' to set: reopening past Pillow's limit must not lift it, not
    even for the duration of the call (another thread would lose its guard meanwhile)."""
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    PIL.Image.init()
    factory, accept = PIL.Image.OPEN["PNG"]
    seen = []

    def watching(fp, filename):
        seen.append(PIL.Image.MAX_IMAGE_PIXELS)
        return factory(fp, filename)

    monkeypatch.setitem(PIL.Image.OPEN, "PNG", (watching, accept))
    array = random_rgb(64, 64, seed=9)  # 4096 > 2 * 1000: Pillow alone refuses it
    np.testing.assert_array_equal(pixels(load_image(encode(array, "PNG"), max_pixels=10**6)), array)
    assert seen and set(seen) == {1000}  # Pillow's open and our reopen both ran with the limit in place
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000


# ------------------------------------------------------------------------------------------------ limits, files


def png_header_only(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A PNG declaring ``width × height`` grey pixels whose IDAT holds almost nothing: tiny on disk, and the
    header is all that a size check may read."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_default_pixel_limit_is_pillows_warning_threshold():
    """A 12 000 × 8 000 1-bit PNG (96 MP, a few hundred bytes) is refused by default before decoding (it
    would need ~290 MB as RGB); the old default (179 MP) let it through."""
    from preprocess.limits import MediaLimits

    assert MediaLimits().max_pixels == 89_478_485 == PIL.Image.MAX_IMAGE_PIXELS
    data = png_header_only(12_000, 8_000)
    exc = expect_error(errors.ImageTooLargeError, load_image, data, names="image bytes")
    assert "89478485" in str(exc) and "MediaLimits.max_pixels" in str(exc)


def test_probe_image_reads_the_upright_size_from_the_header(tmp_path):
    from preprocess.image_io import probe_image

    data = png_header_only(12_000, 8_000)
    assert probe_image(data, max_pixels=None) == (8_000, 12_000)
    expect_error(errors.ImageTooLargeError, probe_image, data, names="image bytes")
    array = random_rgb(30, 50)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: width and height swap
    turned = encode(array, "JPEG", exif=exif.tobytes())
    path = tmp_path / "turned.jpg"
    path.write_bytes(turned)
    for source in (turned, path, io.BytesIO(turned), Image.open(io.BytesIO(turned)), array, Image.fromarray(array)):
        assert probe_image(source) == decode_image(source).original_size
    assert probe_image(turned) == (50, 30)


def test_unrecognised_bytes_are_not_quoted():
    """The errors table must never hold file contents (e.g. a manifest pointing at /etc/master.passwd)."""
    secret = b"root:*:0:0:System Administrator:/var/root:/bin/sh\n"
    exc = expect_error(errors.NotAnImageError, load_image, secret, names="image bytes")
    assert "root" not in str(exc) and "b'" not in str(exc)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs")
def test_fifo_path_is_refused_without_blocking(tmp_path):
    from preprocess.image_io import probe_image
    from tests.preprocess.helpers import unblocking_fifo

    with unblocking_fifo(tmp_path / "pipe.png") as path:
        for load in (load_image, probe_image):
            exc = expect_error(errors.ImageNotAFileError, load, path, names=str(path))
            assert "FIFO" in str(exc)


def test_symlink_loop_and_directory(tmp_path):
    import os

    loop = tmp_path / "loop.png"
    os.symlink(loop, loop)
    expect_error(errors.ImageNotAFileError, load_image, loop, names=str(loop))
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        load_image(tmp_path)
