"""Facts about media that the front end and the model both need, defined once (spec §3.1, §3.7, §4.1, §4.7, §5.2).

The front end (``preprocess``) and the model (``model``) import these; neither restates them. Pure Python: this
module imports nothing but ``enum``, so the budget math can use it and stay pure.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "Modality",
    "PATCH_SIZE",
    "PATCH_VALUES",
    "POOLING_KERNEL",
    "MEL_BINS",
    "audio_tokens_from_frames",
]


class Modality(IntEnum):
    """The values of ``mm_token_type_ids``: what each token position holds."""

    TEXT = 0
    IMAGE = 1
    VIDEO = 2
    AUDIO = 3


PATCH_SIZE = 16  # px per side of one vision patch
PATCH_VALUES = PATCH_SIZE * PATCH_SIZE * 3  # 768 values per patch: pixel row, pixel column, channel (fastest)
POOLING_KERNEL = 3  # k×k patches pool into one vision soft token
MEL_BINS = 128  # log-mel feature width


def audio_tokens_from_frames(valid_frames: int) -> int:
    """Tokens the audio tower's two stride-2 convs leave of ``valid_frames`` log-mel frames: ``⌈⌈V/2⌉/2⌉``."""
    half = (valid_frames + 1) // 2  # ⌈V/2⌉
    return (half + 1) // 2  # ⌈⌈V/2⌉/2⌉
