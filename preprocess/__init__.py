"""The Gemma 4 front end: budget math, images, audio, video, tokenizer, chat format, replies, interleaving, collation.

The public names are resolved lazily (PEP 562 ``__getattr__``): ``import preprocess`` or
``from preprocess.budget import …`` loads no submodule it does not name, so the budget math and the
``gemma4`` command line start without importing torch, numpy or Pillow. ``from preprocess import X`` loads
``X``'s submodule on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Submodule → the public names it defines. Each is imported on first access to one of its names.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "budget": (
        "SUPPORTED_BUDGETS",
        "audio_soft_tokens",
        "fit_image_budgets",
        "image_grid",
        "image_soft_tokens",
        "image_target_size",
    ),
    "errors": (
        "InvalidInputError",
        "InvalidImageError",
        "EmptyImageError",
        "NotAnImageError",
        "CorruptImageError",
        "UnsupportedImageError",
        "ImageTooLargeError",
        "InvalidAudioError",
        "EmptyAudioError",
        "CorruptAudioError",
        "UnsupportedAudioError",
        "NonFiniteAudioError",
        "AudioTooShortError",
        "AudioTooLongError",
        "AudioTooLargeError",
        "InvalidVideoError",
        "VideoTooLargeError",
        "StillImageAsVideoError",
        "NotAFileError",
        "TooManyMediaError",
        "TooManyTokensError",
    ),
    "limits": ("MediaLimits",),
    "image": ("ImagePatches", "preprocess_image", "preprocess_images", "collate_images"),
    "image_io": ("load_image",),
    "audio": ("AudioSegment", "ChunkedAudio", "chunk_audio", "log_mel", "log_mel_batch"),
    "audio_io": ("load_audio",),
    "tokenizer": ("Tokenizer", "SpecialTokens", "MissingSpecialTokenError"),
    "chat": ("render_chat", "ChatFormatError"),
    "prompt": ("build_example", "Example", "AudioFeatures"),
    "reply": ("parse_reply", "Reply", "ToolCall"),
    "openai_parts": ("normalize_part",),
    "collate": ("collate", "uncollate", "bucket_by_length"),
    "video_io": ("load_video", "VideoFrames"),
    "video": ("preprocess_video", "VideoPatches", "collate_videos"),
}
_SOURCES = {name: module for module, names in _EXPORTS.items() for name in names}

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
    "audio_soft_tokens",
    "load_audio",
    "log_mel",
    "log_mel_batch",
    "chunk_audio",
    "AudioSegment",
    "ChunkedAudio",
    "InvalidInputError",
    "InvalidAudioError",
    "EmptyAudioError",
    "CorruptAudioError",
    "UnsupportedAudioError",
    "NonFiniteAudioError",
    "AudioTooShortError",
    "AudioTooLongError",
    "AudioTooLargeError",
    "InvalidVideoError",
    "VideoTooLargeError",
    "StillImageAsVideoError",
    "NotAFileError",
    "TooManyMediaError",
    "TooManyTokensError",
    "MediaLimits",
    "normalize_part",
    "Tokenizer",
    "SpecialTokens",
    "MissingSpecialTokenError",
    "render_chat",
    "ChatFormatError",
    "build_example",
    "Example",
    "AudioFeatures",
    "parse_reply",
    "Reply",
    "ToolCall",
    "collate",
    "uncollate",
    "bucket_by_length",
    "load_video",
    "VideoFrames",
    "preprocess_video",
    "VideoPatches",
    "collate_videos",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS or name == "sources":  # ``preprocess.image`` after a bare ``import preprocess``
        return importlib.import_module(f"{__name__}.{name}")
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the names eagerly
    from .audio import AudioSegment, ChunkedAudio, chunk_audio, log_mel, log_mel_batch
    from .audio_io import load_audio
    from .budget import (
        SUPPORTED_BUDGETS,
        audio_soft_tokens,
        fit_image_budgets,
        image_grid,
        image_soft_tokens,
        image_target_size,
    )
    from .chat import ChatFormatError, render_chat
    from .collate import bucket_by_length, collate, uncollate
    from .errors import (
        AudioTooLargeError,
        AudioTooLongError,
        AudioTooShortError,
        CorruptAudioError,
        CorruptImageError,
        EmptyAudioError,
        EmptyImageError,
        ImageTooLargeError,
        InvalidAudioError,
        InvalidImageError,
        InvalidInputError,
        InvalidVideoError,
        NonFiniteAudioError,
        NotAFileError,
        NotAnImageError,
        StillImageAsVideoError,
        TooManyMediaError,
        TooManyTokensError,
        UnsupportedAudioError,
        UnsupportedImageError,
        VideoTooLargeError,
    )
    from .image import ImagePatches, collate_images, preprocess_image, preprocess_images
    from .image_io import load_image
    from .limits import MediaLimits
    from .openai_parts import normalize_part
    from .prompt import AudioFeatures, Example, build_example
    from .reply import Reply, ToolCall, parse_reply
    from .tokenizer import MissingSpecialTokenError, SpecialTokens, Tokenizer
    from .video import VideoPatches, collate_videos, preprocess_video
    from .video_io import VideoFrames, load_video
