"""The Gemma 4 front end: budget math, images, audio (text, video and interleaving: later issues)."""

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
from .errors import (
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
    NonFiniteAudioError,
    NotAnImageError,
    UnsupportedAudioError,
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
]
