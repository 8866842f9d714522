"""The Gemma 4 front end: budget math, images, audio, video, tokenizer, chat format, interleaving, collation."""

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
from .prompt import AudioFeatures, Example, build_example
from .tokenizer import MissingSpecialTokenError, SpecialTokens, Tokenizer
from .video import VideoPatches, collate_videos, preprocess_video
from .video_io import VideoFrames, load_video

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
    "Tokenizer",
    "SpecialTokens",
    "MissingSpecialTokenError",
    "render_chat",
    "ChatFormatError",
    "build_example",
    "Example",
    "AudioFeatures",
    "collate",
    "uncollate",
    "bucket_by_length",
    "load_video",
    "VideoFrames",
    "preprocess_video",
    "VideoPatches",
    "collate_videos",
]
