"""Exceptions for bad input. Every one is a ``ValueError`` and its message names the input it is about."""

from __future__ import annotations

__all__ = [
    "ChatFormatError",
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
    "InvalidVideoError",
    "EmptyVideoError",
    "CorruptVideoError",
    "UnsupportedVideoError",
    "VideoTooLargeError",
    "AudioTooLargeError",
    "NotAFileError",
    "ImageNotAFileError",
    "AudioNotAFileError",
    "VideoNotAFileError",
    "StillImageAsVideoError",
    "TooManyMediaError",
    "TooManyTokensError",
]


class InvalidInputError(ValueError):
    """Bad input. The message is ``"<source>: <problem>"``; both parts are kept as attributes."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


class InvalidImageError(InvalidInputError):
    """An image input that cannot be turned into RGB pixels."""


class EmptyImageError(InvalidImageError):
    """The input holds no bytes, or an image with a zero-length side."""


class NotAnImageError(InvalidImageError):
    """The bytes are not in any image format Pillow recognises."""


class CorruptImageError(InvalidImageError):
    """The format was recognised but decoding failed (truncated or damaged data)."""


class UnsupportedImageError(InvalidImageError):
    """A well-formed input of a kind we do not convert (unknown type, dtype, layout or pixel range)."""


class ImageTooLargeError(InvalidImageError):
    """More pixels than the decompression-bomb limit (``MediaLimits.max_pixels``) allows."""


class InvalidAudioError(InvalidInputError):
    """An audio input that cannot be turned into 16 kHz mono samples."""


class EmptyAudioError(InvalidAudioError):
    """The input holds no bytes or no samples."""


class CorruptAudioError(InvalidAudioError):
    """The bytes are not audio any decoder recognises, or decoding failed part-way."""


class UnsupportedAudioError(InvalidAudioError):
    """A well-formed input of a kind we do not convert (type, dtype, rank, sample rate)."""


class NonFiniteAudioError(InvalidAudioError):
    """NaN or infinite samples."""


class AudioTooShortError(InvalidAudioError):
    """Too few samples for one valid feature frame, so the audio would produce no tokens at all."""


class AudioTooLongError(InvalidAudioError):
    """More samples than one 30 s segment where a single segment is required (chunk the audio first)."""


class AudioTooLargeError(InvalidAudioError):
    """Longer, or with more samples, than ``MediaLimits`` allows; found from the header, before decoding."""


class InvalidVideoError(InvalidInputError):
    """A video input that cannot be turned into sampled RGB frames."""


class EmptyVideoError(InvalidVideoError):
    """The input holds no bytes, or its video stream yields no frame."""


class CorruptVideoError(InvalidVideoError):
    """Not a container FFmpeg can open, no video stream in it, or decoding failed (FFmpeg's error is chained)."""


class UnsupportedVideoError(InvalidVideoError):
    """An input we do not decode: unknown type, a bad ``num_frames``, or sampled frames of different sizes."""


class VideoTooLargeError(InvalidVideoError):
    """More frames, or frames of more pixels, than ``MediaLimits`` allows; found before decoding."""


class StillImageAsVideoError(InvalidVideoError):
    """A still image (a file of an image format, e.g. JPEG or PNG) given as a video: send it as an image part."""


class NotAFileError(InvalidInputError):
    """A path that names no regular file: a FIFO, socket or device (never opened: reading a FIFO blocks until
    some writer comes), or a path that cannot be resolved (a symbolic-link loop, a file used as a folder).
    A directory raises ``IsADirectoryError`` and a missing file ``FileNotFoundError`` instead, as ``open`` does."""


class ImageNotAFileError(NotAFileError, InvalidImageError):
    """An image path that names no regular file."""


class AudioNotAFileError(NotAFileError, InvalidAudioError):
    """An audio path that names no regular file."""


class VideoNotAFileError(NotAFileError, InvalidVideoError):
    """A video path that names no regular file."""


class TooManyMediaError(InvalidInputError):
    """More media parts in one example than ``MediaLimits.max_media_parts``; refused before decoding any."""


class TooManyTokensError(InvalidInputError):
    """The example cannot fit ``max_tokens`` (nothing is truncated); when known from headers, refused before
    decoding."""


class ChatFormatError(ValueError):
    """Messages that do not follow the chat form, or a template whose placeholders disagree with them."""
