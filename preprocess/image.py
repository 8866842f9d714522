"""The image front end: resize to the budget's target size, cut 16×16 patches, positions, padding.

Implements ../shared/spec/GEMMA4.md §6.2–§6.5. The resize is Pillow's bicubic filter on the uint8 RGB image,
so exact mode reproduces the Hugging Face PIL-backend processor (``Gemma4ImageProcessorPil``) bit for bit,
and it is skipped when the image already has the target size. Patches stay uint8 (4× smaller than float32)
until :func:`collate_images` builds model inputs; rescaling there divides by 255 in float32, which rounds to
exactly the reference's float64-multiply-then-cast values (checked for all 256 levels in the tests).

Fast mode (``exact=False``) trades a little fidelity for speed: JPEG sources decode at 1/2, 1/4 or 1/8
scale when that still leaves 1.25 × the target size (libjpeg's DCT scaling: the entropy decoding is still
paid, the inverse DCT and colour conversion shrink), and the resize is torch's uint8 antialiased bicubic
kernel (the same a = −0.5 filter family as Pillow's, vectorised; it uses torch's intra-op threads, so set
``torch.set_num_threads`` to control them). ``gemma4 bench images`` measures its PSNR against exact mode.

Shapes: P patches (rows·cols), M padded patches (9·budget), N images, 768 = 16·16·3 values per patch
(pixel row, pixel column, channel — channel fastest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from data_specs.media import PATCH_SIZE, PATCH_VALUES

from .budget import SIDE_MULTIPLE, check_budget, image_target_size, max_patches
from .image_io import DEFAULT_MAX_PIXELS, DecodedImage, DraftFn, ImageSource, decode_image

__all__ = [
    "PATCH_VALUES",
    "ImagePatches",
    "preprocess_image",
    "patch_image",
    "draft_for",
    "resize_to_target",
    "patchify",
    "patch_positions",
    "collate_images",
    "preprocess_images",
]

DRAFT_MARGIN = 1.25  # fast mode: the JPEG decoder may scale down while staying ≥ this × target


@dataclass(frozen=True)
class ImagePatches:
    """One preprocessed image.

    patches: (P, 768) uint8, raster order over the (rows, cols) patch grid.
    size: (height, width) in px after resizing; multiples of 48.
    original_size: (height, width) of the upright input.
    """

    patches: np.ndarray
    size: tuple[int, int]
    original_size: tuple[int, int]
    budget: int

    @property
    def grid(self) -> tuple[int, int]:
        """(patch rows, patch columns)."""
        return self.size[0] // PATCH_SIZE, self.size[1] // PATCH_SIZE

    @property
    def num_patches(self) -> int:
        return self.patches.shape[0]

    @property
    def num_soft_tokens(self) -> int:
        return (self.size[0] // SIDE_MULTIPLE) * (self.size[1] // SIDE_MULTIPLE)

    @property
    def positions(self) -> np.ndarray:
        """(P, 2) int64 (x, y) = (column, row) of each patch; read-only."""
        return patch_positions(*self.grid)

    def pixel_values(self) -> np.ndarray:
        """(P, 768) float32 in [0, 1], unpadded."""
        return np.divide(self.patches, np.float32(255), dtype=np.float32)


def resize_to_target(image: Image.Image, size: tuple[int, int], *, exact: bool = True) -> np.ndarray:
    """Bicubic resize of an RGB image to ``size`` = (height, width); returns (height, width, 3) uint8.

    No resampling when the image already has that size. ``exact=True`` is Pillow's bicubic filter (the
    reference's pixels, bit for bit); ``exact=False`` is torch's antialiased uint8 bicubic kernel.
    """
    height, width = size
    if image.size == (width, height):
        return np.asarray(image)
    if exact:
        return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
    import torch  # deferred: exact mode needs no torch
    from torch.nn.functional import interpolate

    pixels = torch.from_numpy(np.array(image))  # (H, W, 3) uint8; np.array: a writable copy for torch
    pixels = pixels.permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W), channels-last memory
    resized = interpolate(pixels, size=(height, width), mode="bicubic", antialias=True)  # (1, 3, h, w)
    return resized[0].permute(1, 2, 0).numpy()  # (h, w, 3) uint8; channels-last memory: no copy


def patchify(pixels: np.ndarray) -> np.ndarray:
    """Cut an (H, W, C) image whose sides are multiples of 16 into (P, 16·16·C) patches, raster order.

    Works for any dtype; never copies more than once and never modifies ``pixels``.
    """
    height, width, channels = pixels.shape
    if height % PATCH_SIZE or width % PATCH_SIZE:
        raise ValueError(f"image sides must be multiples of {PATCH_SIZE} px, got {height}x{width}")
    rows, cols = height // PATCH_SIZE, width // PATCH_SIZE
    grid = pixels.reshape(rows, PATCH_SIZE, cols, PATCH_SIZE, channels)  # (R, py, C, px, ch)
    grid = grid.transpose(0, 2, 1, 3, 4)  # (R, C, py, px, ch)
    return grid.reshape(rows * cols, PATCH_SIZE * PATCH_SIZE * channels)  # (P, 768): copies once


@lru_cache(maxsize=64)
def patch_positions(rows: int, cols: int) -> np.ndarray:
    """(rows·cols, 2) int64 positions (x, y) = (column, row) in raster order; cached, read-only."""
    ys, xs = np.divmod(np.arange(rows * cols, dtype=np.int64), cols)
    positions = np.stack([xs, ys], axis=1)  # (P, 2)
    positions.flags.writeable = False
    return positions


def draft_for(budget: int) -> DraftFn:
    """Fast mode's draft rule at ``budget``: the JPEG decoder may scale down while both sides stay at least
    ``DRAFT_MARGIN`` × the target size of the upright original."""
    budget = check_budget(budget)

    def draft(original: tuple[int, int]) -> tuple[int, int]:
        th, tw = image_target_size(*original, budget)
        return int(th * DRAFT_MARGIN), int(tw * DRAFT_MARGIN)

    return draft


def patch_image(decoded: DecodedImage, budget: int, *, exact: bool = True) -> ImagePatches:
    """An already decoded image → resized to the budget's target size (from its original size) and cut into
    patches. The second half of :func:`preprocess_image`, for callers that decode first."""
    budget = check_budget(budget)
    size = image_target_size(*decoded.original_size, budget)
    pixels = resize_to_target(decoded.image, size, exact=exact)
    return ImagePatches(patches=patchify(pixels), size=size, original_size=decoded.original_size, budget=budget)


def preprocess_image(
    image: ImageSource,
    budget: int = 280,
    *,
    exact: bool = True,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ImagePatches:
    """Decode (see :mod:`preprocess.image_io`), resize to the budget's target size and cut patches.

    ``image`` is any source ``load_image`` accepts. ``name`` labels the input in error messages.
    """
    budget = check_budget(budget)
    decoded = decode_image(image, name=name, max_pixels=max_pixels, draft=None if exact else draft_for(budget))
    return patch_image(decoded, budget, exact=exact)


def collate_images(items: Sequence[ImagePatches], *, max_patches_per_image: int | None = None) -> dict:
    """Stack preprocessed images into the reference processor's outputs.

    Returns ``pixel_values`` (N, M, 768) float32 in [0, 1] (zero rows for padding), ``image_position_ids``
    (N, M, 2) int64 ((−1, −1) for padding) and ``num_soft_tokens_per_image`` (list of N ints). M defaults to
    9 × the largest budget among ``items``; a smaller explicit M than an image's patch count is an error.
    """
    if max_patches_per_image is None:
        max_patches_per_image = max((max_patches(item.budget) for item in items), default=0)
    width = max_patches_per_image
    for index, item in enumerate(items):
        if item.num_patches > width:
            raise ValueError(f"image {index} has {item.num_patches} patches, more than max_patches_per_image={width}")
    pixel_values = np.zeros((len(items), width, PATCH_VALUES), dtype=np.float32)  # (N, M, 768)
    position_ids = np.full((len(items), width, 2), -1, dtype=np.int64)  # (N, M, 2)
    for index, item in enumerate(items):
        n = item.num_patches
        # float32 division by 255 rounds exactly like the reference's float64 multiply by 1/255 + cast.
        np.divide(item.patches, np.float32(255), out=pixel_values[index, :n], dtype=np.float32)
        position_ids[index, :n] = item.positions
    return {
        "pixel_values": pixel_values,
        "image_position_ids": position_ids,
        "num_soft_tokens_per_image": [item.num_soft_tokens for item in items],
    }


def preprocess_images(images: Sequence[ImageSource], budget: int = 280, *, exact: bool = True, **kwargs) -> dict:
    """``collate_images`` of ``preprocess_image`` for each image: the equivalent of calling the reference
    ``Gemma4ImageProcessorPil(max_soft_tokens=budget)(images)``."""
    return collate_images([preprocess_image(im, budget, exact=exact, **kwargs) for im in images])
