"""The reference image front end: ``Gemma4ImageProcessorPil`` and ``transformers.image_utils.load_image``."""

from __future__ import annotations

from transformers import Gemma4ImageProcessorPil
from transformers.image_utils import load_image as _load_image

__all__ = ["processor", "load_image"]


def processor(budget: int) -> Gemma4ImageProcessorPil:
    return Gemma4ImageProcessorPil(max_soft_tokens=budget)


def load_image(path: str):
    return _load_image(path)
