"""The Gemma 4 front end: budget math, image decoding and patches (audio, text, video: later issues)."""

from .budget import (
    SUPPORTED_BUDGETS,
    fit_image_budgets,
    image_grid,
    image_soft_tokens,
    image_target_size,
)
from .errors import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    InvalidImageError,
    NotAnImageError,
    UnsupportedImageError,
)
from .image import ImagePatches, collate_images, preprocess_image, preprocess_images
from .image_io import load_image

__all__ = [
    "SUPPORTED_BUDGETS",
    "fit_image_budgets",
    "image_grid",
    "image_soft_tokens",
    "image_target_size",
    "InvalidImageError",
    "EmptyImageError",
    "NotAnImageError",
    "CorruptImageError",
    "UnsupportedImageError",
    "ImageTooLargeError",
    "ImagePatches",
    "preprocess_image",
    "preprocess_images",
    "collate_images",
    "load_image",
]
