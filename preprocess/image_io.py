"""Image decoding: every way an image can arrive becomes one RGB ``PIL.Image`` (spec §6.3, colour).

The only module that opens image files or bytes. Sources: a path, ``bytes``/``bytearray``/``memoryview``, a
binary file object, a ``PIL.Image.Image``, or an ``H×W`` / ``H×W×C`` (C = 1…4) ``uint8`` or ``uint16`` array
(channels last). What happens on the way to RGB:

* EXIF orientation is applied (a camera's portrait photo arrives upright).
* Animated images give their first frame.
* Transparency (an ``A`` band, or a ``transparency`` entry as palette images have) is composited onto white,
  as the reference processor does: through Pillow's ``alpha_composite`` for images, and exactly rounded
  integer blending for arrays (the reference's float blend, which rounds to the same values).
* 16-bit data (``I;16`` modes, ``uint16`` arrays) is scaled to 8 bits, ``round(v / 257)``. **Deviation**: the
  reference calls ``convert("RGB")``, which clips every value above 255 to white.
* 32-bit ``I`` and float ``F`` images are accepted when their values lie in 0…255; anything else is refused
  with a message rather than clipped.
* A decompression-bomb guard refuses images of more than ``max_pixels`` pixels (default
  ``MediaLimits.max_pixels``, Pillow's own warning threshold of about 89 MP) before decoding them.
* A path must name a regular file: a FIFO, socket or device is refused without being opened (reading a FIFO
  would block), as is a path that cannot be resolved (a symbolic-link loop).
* Error messages never quote the file's bytes (a decoder's quoted bytes are replaced by ``<bytes>``).

:func:`probe_image` reads only the header: the upright size a decode would report, with the same checks.

Bad input raises a subclass of :class:`preprocess.errors.InvalidImageError` (a ``ValueError``) whose message
starts with a description of the source; a missing file raises ``FileNotFoundError`` and a directory
``IsADirectoryError``. Inputs are never
modified: arrays are copied, a file object's position is restored, and a PIL image is converted into a new
image, except that an upright plain-RGB image is returned as it is (unmodified; copying it would cost time).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import (
    CorruptImageError,
    EmptyImageError,
    ImageNotAFileError,
    ImageTooLargeError,
    InvalidImageError,
    NotAnImageError,
    UnsupportedImageError,
)
from .limits import DEFAULT_LIMITS
from .sources import describe, open_regular, read_stream, scrub

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "DecodedImage",
    "decode_image",
    "load_image",
    "probe_image",
    "describe_source",
]

# MediaLimits.max_pixels: Pillow's default MAX_IMAGE_PIXELS (its warning threshold), about 89 megapixels.
DEFAULT_MAX_PIXELS = DEFAULT_LIMITS.max_pixels

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray

# (height, width) of the oriented original → smallest (height, width) a draft decode may deliver.
DraftFn = Callable[[tuple[int, int]], tuple[int, int]]

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # these swap width and height
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True)
class DecodedImage:
    """A decoded RGB image and the size the token budget must be computed from.

    ``original_size`` is the ``(height, width)`` of the upright full-resolution image. It differs from
    ``image.size`` (reversed) only when a draft decode (fast mode) let the JPEG decoder scale down.
    """

    image: Image.Image
    original_size: tuple[int, int]
    source: str


def describe_source(source: object, name: str | None = None) -> str:
    """A short description of ``source`` for error messages: ``name`` if given, else the path or kind."""
    return describe(source, "image", name)


def load_image(
    source: ImageSource, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode ``source`` into an upright RGB ``PIL.Image`` (see the module docstring for the rules)."""
    return decode_image(source, name=name, max_pixels=max_pixels).image


def decode_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft: DraftFn | None = None,
) -> DecodedImage:
    """Decode ``source`` into RGB. ``draft`` (JPEG only) lets the decoder scale down by 1/2, 1/4 or 1/8
    while both sides stay at least the size it returns for the upright original size."""
    what = describe_source(source, name)
    if isinstance(source, Image.Image):
        return _from_pil(source, what, max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, what, max_pixels)
    if isinstance(source, str | os.PathLike):
        with open_regular(source, what, ImageNotAFileError) as fp:  # a missing file: FileNotFoundError
            return _from_stream(fp, what, max_pixels, draft)
    if isinstance(source, bytes | bytearray | memoryview):
        return _from_stream(io.BytesIO(source), what, max_pixels, draft)
    if hasattr(source, "read"):
        data = read_stream(source, what, UnsupportedImageError)  # Pillow would seek to 0: read from here
        return _from_stream(io.BytesIO(data), what, max_pixels, draft)
    raise UnsupportedImageError(what, "expected a path, bytes, a binary file object, a PIL image or a uint8 array")


def probe_image(
    source: ImageSource, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """The upright ``(height, width)`` that :func:`decode_image` would report as ``original_size``, read from
    the header only (no pixel data is decoded); raises what decoding would for a bad header or size."""
    what = describe_source(source, name)
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, what, max_pixels)
        turned = _orientation(source) in _TRANSPOSED_ORIENTATIONS
        return (source.width, source.height) if turned else (source.height, source.width)
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3):
            raise UnsupportedImageError(what, "expected an HxW or HxWxC array with C in 1…4 (channels last)")
        _check_pixels(source.shape[1], source.shape[0], what, max_pixels)
        return source.shape[0], source.shape[1]
    if isinstance(source, str | os.PathLike):
        with open_regular(source, what, ImageNotAFileError) as fp:
            return _header(fp, what, max_pixels)[1]
    if isinstance(source, bytes | bytearray | memoryview):
        return _header(io.BytesIO(source), what, max_pixels)[1]
    if hasattr(source, "read"):
        return _header(io.BytesIO(read_stream(source, what, UnsupportedImageError)), what, max_pixels)[1]
    raise UnsupportedImageError(what, "expected a path, bytes, a binary file object, a PIL image or a uint8 array")


def _check_pixels(width: int, height: int, what: str, max_pixels: int | None) -> None:
    if width < 1 or height < 1:
        raise EmptyImageError(what, f"image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            what,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(a decompression-bomb guard; raise max_pixels / MediaLimits.max_pixels to allow it)",
        )


def _open(fp: BinaryIO, what: str, max_pixels: int | None) -> Image.Image:
    """``Image.open`` with our pixel limit instead of Pillow's global one, which is read but never changed."""
    start = fp.tell()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as exc:
        pillow_limit = Image.MAX_IMAGE_PIXELS  # not None: Pillow only raises when a limit is set
        if max_pixels is not None and max_pixels <= 2 * pillow_limit:
            raise ImageTooLargeError(
                what, f"{exc} (limit {max_pixels} pixels; raise max_pixels / MediaLimits.max_pixels to allow it)"
            ) from None
        # The caller allows more than Pillow does: open it without Pillow's guard; ours runs next.
        fp.seek(start)
        return _open_unguarded(fp, what, exc)
    except UnidentifiedImageError:  # never quote the bytes: the "image" may be any file the manifest names
        raise NotAnImageError(what, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # e.g. a file cut inside its header
        raise CorruptImageError(what, f"cannot read the image header: {type(exc).__name__}: {scrub(exc)}") from exc


def _open_unguarded(fp: BinaryIO, what: str, bomb: Image.DecompressionBombError) -> Image.Image:
    """What ``Image.open`` does, minus its check against the process-wide ``Image.MAX_IMAGE_PIXELS``: the first
    registered format plugin (``Image.ID`` order) that accepts the header opens the image. Setting the global to
    ``None`` for the call instead would lift the guard for every other thread of the process meanwhile."""
    start = fp.tell()
    prefix = fp.read(16)  # as many bytes as Image.open shows the plugins' accept functions
    Image.init()
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, str):  # a str is Pillow's "almost: here is why not"
            continue
        fp.seek(start)
        try:
            return factory(fp, "")
        except Image.DecompressionBombError:  # a plugin that checks frames itself (GIF): nothing more to do
            raise ImageTooLargeError(what, f"{bomb} (Pillow's own limit: raise Image.MAX_IMAGE_PIXELS)") from None
        except (SyntaxError, IndexError, TypeError, struct.error):  # not this format: try the next, as Pillow does
            continue
        except (OSError, ValueError, EOFError) as exc:
            raise CorruptImageError(what, f"cannot read the image header: {type(exc).__name__}: {scrub(exc)}") from exc
    raise CorruptImageError(what, f"cannot reopen the image without Pillow's pixel limit ({bomb})")


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block must not make an otherwise good image unreadable
        return 1


def _header(fp: BinaryIO, what: str, max_pixels: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """The opened (not yet decoded) image and its upright (height, width), within ``max_pixels``."""
    start = fp.tell()
    if not fp.read(1):
        raise EmptyImageError(what, "the input is empty (0 bytes)")
    fp.seek(start)
    im = _open(fp, what, max_pixels)
    _check_pixels(im.width, im.height, what, max_pixels)
    turned = _orientation(im) in _TRANSPOSED_ORIENTATIONS
    return im, ((im.width, im.height) if turned else (im.height, im.width))


def _from_stream(fp: BinaryIO, what: str, max_pixels: int | None, draft: DraftFn | None) -> DecodedImage:
    im, original = _header(fp, what, max_pixels)
    try:
        orientation = _orientation(im)
        turned = orientation in _TRANSPOSED_ORIENTATIONS
        if draft is not None and im.format == "JPEG":
            min_h, min_w = draft(original)
            im.draft(None, (min_h, min_w) if turned else (min_w, min_h))  # PIL sizes are (width, height)
        im.load()
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
        return DecodedImage(image=_to_rgb(im, what), original_size=original, source=what)
    except InvalidImageError:
        raise
    except Exception as exc:  # Pillow signals damaged data with many types (OSError, SyntaxError, …)
        fmt = im.format or "image"
        raise CorruptImageError(what, f"cannot decode {fmt} data: {type(exc).__name__}: {scrub(exc)}") from exc


def _from_pil(im: Image.Image, what: str, max_pixels: int | None) -> DecodedImage:
    _check_pixels(im.width, im.height, what, max_pixels)
    frame = im.tell() if getattr(im, "n_frames", 1) > 1 else 0
    try:
        if frame:
            im.seek(0)
        try:
            im.load()
            orientation = _orientation(im)
            upright = ImageOps.exif_transpose(im) if orientation != 1 else im  # a new image: im is untouched
            rgb = _to_rgb(upright, what)
            if frame and rgb is im:
                rgb = im.copy()  # we seek the caller's image back below
        except InvalidImageError:
            raise
        except Exception as exc:
            raise CorruptImageError(what, f"cannot read pixels: {type(exc).__name__}: {scrub(exc)}") from exc
    finally:
        if frame:
            im.seek(frame)  # leave the caller's image on the frame it was on
    return DecodedImage(image=rgb, original_size=(rgb.height, rgb.width), source=what)


def _has_alpha(im: Image.Image) -> bool:
    return "A" in im.getbands() or im.info.get("transparency") is not None


def _to_rgb(im: Image.Image, what: str) -> Image.Image:
    """RGB version of a loaded image; ``im`` itself when it is already plain RGB."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray(_sixteen_to_eight(np.asarray(im))).convert("RGB")
    if mode in ("I", "F"):
        values = np.asarray(im)
        low, high = float(values.min()), float(values.max())
        if not (0 <= low and high <= 255):  # also refuses NaN
            raise UnsupportedImageError(
                what, f"mode {mode} values span {low:g}…{high:g}; only 0…255 converts to 8-bit without clipping"
            )
        return Image.fromarray(np.rint(values).astype(np.uint8)).convert("RGB")
    try:
        if _has_alpha(im):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im if mode == "RGB" else im.convert("RGB")
    except ValueError as exc:
        raise UnsupportedImageError(what, f"cannot convert mode {mode} to RGB: {exc}") from exc


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """Exact ``round(v · 255 / 65535) = round(v / 257)`` for 16-bit values (never a tie: 257 is odd)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _from_array(array: np.ndarray, what: str, max_pixels: int | None) -> DecodedImage:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 2, 3, 4)):
        raise UnsupportedImageError(what, "expected an HxW or HxWxC array with C in 1…4 (channels last)")
    if array.dtype == np.uint16:
        array = _sixteen_to_eight(array)
    elif array.dtype != np.uint8:
        raise UnsupportedImageError(what, "expected dtype uint8 (or uint16); convert the array first")
    height, width = array.shape[:2]
    _check_pixels(width, height, what, max_pixels)
    if array.ndim == 2:
        array = array[:, :, None]
    channels = array.shape[2]
    if channels in (2, 4):  # last channel is alpha: blend onto white
        alpha = array[:, :, -1:].astype(np.uint32)
        colour = array[:, :, :-1].astype(np.uint32)
        blended = colour * alpha + 255 * (255 - alpha)
        array = ((2 * blended + 255) // 510).astype(np.uint8)  # round(blended / 255), exact
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    rgb = Image.fromarray(np.ascontiguousarray(array), mode=None)  # copies: the caller's array is untouched
    return DecodedImage(image=rgb, original_size=(height, width), source=what)
