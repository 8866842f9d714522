"""The reference ``Gemma4Processor`` around a tokenizer (for parity tests with tiny test models).

The tokenizer is transformers' ``GemmaTokenizer``: read from a checkpoint's ``tokenizer.json``, or built from a
SentencePiece model's BPE vocabulary and merges, with every Gemma 4 control string added as a special token and
the processor's placeholder attributes set.
"""

from __future__ import annotations

import os

from tokenizers.models import BPE
from transformers import (
    Gemma4AudioFeatureExtractor,
    Gemma4ImageProcessorPil,
    Gemma4Processor,
    Gemma4VideoProcessor,
    GemmaTokenizer,
)
from transformers.convert_slow_tokenizer import SentencePieceExtractor

__all__ = ["processor"]

_PLACEHOLDER_ATTRIBUTES = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
}


def processor(model_file: str | os.PathLike, control_strings: list[str], image_budget: int = 280) -> Gemma4Processor:
    """``model_file``: a SentencePiece ``tokenizer.model``, or a directory holding a ``tokenizer.json`` (read as
    transformers reads a published checkpoint's)."""
    if os.path.isdir(model_file):
        tokenizer = GemmaTokenizer.from_pretrained(os.fspath(model_file), extra_special_tokens=_PLACEHOLDER_ATTRIBUTES)
    else:
        extracted = SentencePieceExtractor(os.fspath(model_file)).extract(BPE)
        tokenizer = GemmaTokenizer(
            vocab=extracted["vocab"], merges=extracted["merges"], extra_special_tokens=_PLACEHOLDER_ATTRIBUTES
        )
    tokenizer.add_tokens(control_strings, special_tokens=True)
    return Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessorPil(max_soft_tokens=image_budget),
        tokenizer=tokenizer,
        video_processor=Gemma4VideoProcessor(),
    )


def load_image(path: str):
    """The reference's image loader (``transformers.image_utils.load_image``)."""
    from transformers.image_utils import load_image as _load_image

    return _load_image(path)


def load_video(path: str, **kwargs):
    """The reference's video loader (``transformers.video_utils.load_video``): (frames, metadata)."""
    from transformers.video_utils import load_video as _load_video

    return _load_video(path, **kwargs)
