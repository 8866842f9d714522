"""``gemma4 preview``: the image as the model sees it, with its soft-token grid and its padding.

Sizes are written height × width (``h x w``), as everywhere in the ``gemma4`` command line. The top panel is
the resized image (exactly the pixels the patches are cut from) with a line every 48 px:
each cell is one soft token (3×3 patches of 16 px). The bottom panel is the patch budget ``9·budget`` as a
bar: the image's patches, then the zero padding patches that fill the rest.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from preprocess.budget import SIDE_MULTIPLE, image_target_size, max_patches
from preprocess.image import resize_to_target
from preprocess.image_io import DEFAULT_MAX_PIXELS, ImageSource, decode_image

__all__ = ["render_preview", "draw_preview", "caption", "unpatchify"]

GRID_COLOUR = (255, 0, 160, 150)
USED_COLOUR = (46, 160, 67)
PADDING_COLOUR = (200, 200, 200)
TEXT_COLOUR = (20, 20, 20)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_preview(
    source: ImageSource, budget: int = 280, *, exact: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """An RGB picture of the resized image with its 48 px soft-token grid and a padding bar beneath."""
    decoded = decode_image(source, max_pixels=max_pixels)
    size = image_target_size(*decoded.original_size, budget)
    return draw_preview(resize_to_target(decoded.image, size, exact=exact), decoded.original_size, budget)


def unpatchify(patches: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(P, 768) patches of an image of ``size`` = (h, w) → (h, w, 3) pixels: the inverse of ``patchify``."""
    rows, cols = size[0] // 16, size[1] // 16
    grid = patches.reshape(rows, cols, 16, 16, 3)  # (R, C, py, px, ch)
    return grid.transpose(0, 2, 1, 3, 4).reshape(size[0], size[1], 3)  # (R, py, C, px, ch) → (h, w, 3)


def caption(original_size: tuple[int, int], size: tuple[int, int], budget: int) -> list[str]:
    """The lines written under the picture. Sizes read "h x w" (height first), as in ``gemma4 budget``."""
    (oh, ow), (th, tw) = original_size, size
    used, total = (th // 16) * (tw // 16), max_patches(budget)
    return [
        f"input {oh} x {ow} px (h x w) -> {th} x {tw} px at budget {budget}",
        f"{th // 16} x {tw // 16} patches = {(th // SIDE_MULTIPLE) * (tw // SIDE_MULTIPLE)} soft tokens "
        f"({th // SIDE_MULTIPLE} x {tw // SIDE_MULTIPLE} cells of {SIDE_MULTIPLE} px)",
        f"patches: {used} image + {total - used} padding = {total} (9 x budget)",
    ]


def draw_preview(pixels: np.ndarray, original_size: tuple[int, int], budget: int) -> Image.Image:
    """The picture for already-resized ``pixels`` (th, tw, 3) uint8 of an image originally ``original_size``."""
    th, tw = pixels.shape[:2]
    resized = Image.fromarray(pixels).convert("RGBA")
    grid = Image.new("RGBA", resized.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(grid)
    for x in range(0, tw + 1, SIDE_MULTIPLE):
        draw.line([(min(x, tw - 1), 0), (min(x, tw - 1), th - 1)], fill=GRID_COLOUR, width=1)
    for y in range(0, th + 1, SIDE_MULTIPLE):
        draw.line([(0, min(y, th - 1)), (tw - 1, min(y, th - 1))], fill=GRID_COLOUR, width=1)
    picture = Image.alpha_composite(resized, grid).convert("RGB")

    total = max_patches(budget)
    used = (th // 16) * (tw // 16)
    width = max(tw, 480)
    font = _font(14)
    lines = caption(original_size, (th, tw), budget)
    line_height, bar_height, margin = 18, 16, 8
    footer = margin + len(lines) * line_height + bar_height + margin
    canvas = Image.new("RGB", (width, th + footer), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = th + margin
    for text in lines:
        draw.text((margin, y), text, fill=TEXT_COLOUR, font=font)
        y += line_height
    bar_width = width - 2 * margin
    split = margin + round(bar_width * used / total)
    draw.rectangle([margin, y, margin + bar_width - 1, y + bar_height - 1], fill=PADDING_COLOUR)
    if used:
        draw.rectangle([margin, y, max(margin, split - 1), y + bar_height - 1], fill=USED_COLOUR)
    return canvas
