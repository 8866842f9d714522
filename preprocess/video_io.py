"""Video decoding: every way a video can arrive becomes N uniformly sampled upright RGB frames with their times.

The only module that decodes video (PyAV, which bundles FFmpeg). It feeds spec §6.7 (HF ``Gemma4VideoProcessor``:
sampling) and the timestamps of §5.1 (``"MM:SS "`` before each frame's ``<|image>`` group).

* Sources: a path, ``bytes``/``bytearray``/``memoryview``, or a binary file object (read from its current
  position, which is restored). A path is opened by Python, never handed to FFmpeg as a URL, so a "path" such as
  ``http://…`` or ``concat:…`` cannot make FFmpeg fetch or combine anything.
* Stream: the first video stream that is not cover art (an ``attached_pic``; PyAV ≥ 15 tells), as the
  reference takes ``streams.video[0]``.
* Counting: every frame of the stream is decoded (with FFmpeg's frame and slice threads), in presentation
  order, and counted, so ``total_frames`` is exact (a container's frame field can be wrong, and Matroska/WebM
  often have none). Only the sampled frames are converted to RGB (``to_ndarray(format="rgb24")``, the
  reference's conversion). Which frames to keep is chosen before decoding from the container's frame count (or,
  without one, a count of the demuxed packets); when the decoded count differs from it, the stream is decoded a
  second time with the true count, so the result is always as if the true count had been known up front.
* Sampling: ``N = num_frames`` indices ``i · total // N``, ``i = 0 … N−1`` (the reference's
  ``default_sample_indices_fn``). By frame index, also for variable-frame-rate video.
* Timestamps: each sampled frame's real presentation time, ``(pts − start_time) · time_base`` seconds from the
  start of the stream (the first frame's pts when the stream declares no start); ``index / fps`` only for a
  frame without a pts. ``MM:SS`` = ``f"{int(t // 60):02d}:{int(t % 60):02d}"`` (spec §5.1).
* ``fps``: the stream's average frame rate; 24 with a logged warning when the container has none (as the
  reference does).
* Orientation: the display matrix that FFmpeg attaches to every decoded frame (from an MP4 ``tkhd`` matrix /
  ``rotate`` tag, an H.264/HEVC orientation SEI, …) is applied exactly as the ``ffmpeg`` command line's
  autorotate does: 90°/180°/270° rotations and mirror flips, so a phone's portrait video arrives upright. A
  matrix that is not a multiple of 90° (no camera writes one) is ignored with a warning.
* Limits (:class:`preprocess.limits.MediaLimits`), all checked before any frame is decoded: ``num_frames`` at
  most ``max_video_frames``; frames of at most ``max_video_frame_pixels`` pixels (from the stream header, and
  again for every decoded frame); sampled frames × pixels per frame at most ``max_video_pixels`` (the frames held
  at once).
* A still image (a file in an image format: FFmpeg's ``image2`` and ``*_pipe`` demuxers, or a one-frame GIF,
  APNG or WebP) is refused with :class:`preprocess.errors.StillImageAsVideoError`: send it as an image part.
* A path must name a regular file (a FIFO is refused without being opened); messages never quote file bytes.

**Deviations from the reference** (``transformers.video_utils.read_video_pyav`` + ``Gemma4Processor``):
(1) a video with fewer frames than requested gives all its frames and a logged warning (the reference raises
``ValueError``); (2) timestamps are the frames' real presentation times (the reference computes
``index / fps``, the same for a constant-rate stream starting at 0, wrong for variable-rate video); (3) the
display matrix is applied (the reference's PyAV reader returns frames as stored, so phone videos arrive on
their side); (4) ``total_frames`` is the decoded count (the reference trusts the container's field, which is 0
for most Matroska/WebM files and then fails).

Bad input raises a subclass of :class:`preprocess.errors.InvalidVideoError` (a ``ValueError``) whose message
starts with a description of the source (or ``name``); a missing file raises ``FileNotFoundError``.

Shapes: N sampled frames, H × W upright frame size, 3 RGB channels.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fractions import Fraction
from numbers import Integral
from typing import BinaryIO

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from .errors import (
    CorruptVideoError,
    EmptyVideoError,
    StillImageAsVideoError,
    UnsupportedVideoError,
    VideoNotAFileError,
    VideoTooLargeError,
)
from .limits import DEFAULT_LIMITS, MediaLimits
from .sources import describe, open_regular, read_stream, scrub

__all__ = [
    "DEFAULT_NUM_FRAMES",
    "DEFAULT_FPS",
    "VideoSource",
    "VideoFrames",
    "VideoInfo",
    "load_video",
    "probe_video",
    "sample_indices",
    "format_timestamp",
    "describe_video_source",
]

log = logging.getLogger(__name__)

DEFAULT_NUM_FRAMES = 32  # the reference video processor's num_frames
DEFAULT_FPS = 24.0  # the reference's assumption when a video declares no frame rate

VideoSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

# FFmpeg demuxers of still-image formats besides the "*_pipe" family; and animated-image formats, which are a
# still image when they hold one frame.
_IMAGE_DEMUXERS = frozenset({"image2", "image2pipe"})
_ANIMATED_IMAGE_DEMUXERS = frozenset({"gif", "apng", "webp"})


class _FromLimits:
    def __repr__(self) -> str:
        return "FROM_LIMITS"


FROM_LIMITS = _FromLimits()  # max_pixels default: MediaLimits.max_video_frame_pixels


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says, before decoding: the stream's frame size (as stored), the frame count the
    container gives (or a count of its packets), the frames that will be sampled, and the frame rate."""

    width: int
    height: int
    frames: int
    sampled: int
    fps: float
    source: str


@dataclass(frozen=True)
class VideoFrames:
    """Sampled frames of one video.

    frames: (N, H, W, 3) uint8 RGB, upright (display matrix applied), in presentation order.
    indices: the N sampled frame indices (0-based, presentation order), increasing.
    timestamps_s: presentation time of each sampled frame, in seconds from the start of the stream.
    fps: the stream's average frame rate (24.0 when unknown).
    total_frames: frames decoded from the stream (exact).
    """

    frames: np.ndarray
    indices: tuple[int, ...]
    timestamps_s: tuple[float, ...]
    fps: float
    total_frames: int
    source: str

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in px of every frame."""
        return self.frames.shape[1], self.frames.shape[2]

    @property
    def timestamps(self) -> tuple[str, ...]:
        """``"MM:SS"`` of each sampled frame, as the prompt writes it (spec §5.1)."""
        return tuple(format_timestamp(t) for t in self.timestamps_s)


def format_timestamp(seconds: float) -> str:
    """``"MM:SS"`` for a time in seconds, as the reference processor writes it (minutes are not capped at 59)."""
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def sample_indices(total_frames: int, num_frames: int) -> tuple[int, ...]:
    """Uniform sampling: ``i · total // num_frames`` for ``i < num_frames``; every frame when there are fewer."""
    if num_frames >= total_frames:
        return tuple(range(total_frames))
    return tuple(i * total_frames // num_frames for i in range(num_frames))


def describe_video_source(source: object, name: str | None = None) -> str:
    """A short description of ``source`` for error messages: ``name`` if given, else the path or kind."""
    return describe(source, "video", name)


def load_video(
    source: VideoSource,
    num_frames: int = DEFAULT_NUM_FRAMES,
    *,
    name: str | None = None,
    max_pixels: int | None | _FromLimits = FROM_LIMITS,
    limits: MediaLimits | None = None,
) -> VideoFrames:
    """Decode ``source`` and return ``num_frames`` uniformly sampled upright RGB frames (rules: module docstring).

    Fewer frames than ``num_frames`` in the video: all of them, with a logged warning. ``name`` labels the input
    in error messages and warnings. ``limits`` defaults to ``MediaLimits()``; ``max_pixels``, when given,
    replaces its ``max_video_frame_pixels`` (``None``: no limit per frame).
    """
    what = describe_video_source(source, name)
    limits = _limits(limits, max_pixels)
    num_frames = _check_num_frames(num_frames, what, limits)
    with _stream(source, what) as fp:
        return _from_stream(fp, what, num_frames, limits)


def probe_video(
    source: VideoSource,
    num_frames: int = DEFAULT_NUM_FRAMES,
    *,
    name: str | None = None,
    limits: MediaLimits | None = None,
) -> VideoInfo:
    """What :func:`load_video` would find before decoding (frame size, frame count, sampled frames), with the
    same checks: every limit, still images, streams. Demuxes packets when the container gives no frame count,
    decodes nothing."""
    what = describe_video_source(source, name)
    limits = limits or DEFAULT_LIMITS
    num_frames = _check_num_frames(num_frames, what, limits)
    with _stream(source, what) as fp:
        return _header(fp, what, num_frames, limits)


def _limits(limits: MediaLimits | None, max_pixels: int | None | _FromLimits) -> MediaLimits:
    limits = limits or DEFAULT_LIMITS
    if isinstance(max_pixels, _FromLimits):
        return limits
    return replace(limits, max_video_frame_pixels=max_pixels)


def _check_num_frames(num_frames: object, what: str, limits: MediaLimits) -> int:
    if isinstance(num_frames, bool) or not isinstance(num_frames, Integral) or num_frames < 1:
        raise UnsupportedVideoError(what, f"num_frames must be a positive int, got {num_frames!r}")
    if limits.max_video_frames is not None and num_frames > limits.max_video_frames:
        raise VideoTooLargeError(
            what,
            f"num_frames={num_frames} exceeds the limit of {limits.max_video_frames} sampled frames per video; "
            "raise MediaLimits.max_video_frames to allow it",
        )
    return int(num_frames)


def _stream(source: object, what: str) -> BinaryIO:
    """A seekable binary stream of ``source`` starting at offset 0, to use in a ``with`` block."""
    if isinstance(source, str | os.PathLike):
        return open_regular(source, what, VideoNotAFileError)  # a missing file: FileNotFoundError
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)  # BytesIO copies the buffer
    if hasattr(source, "read"):
        return io.BytesIO(read_stream(source, what, UnsupportedVideoError))  # FFmpeg seeks to absolute offsets
    raise UnsupportedVideoError(what, "expected a path, bytes or a binary file object")


@dataclass
class _Pass:
    """What one decoding pass found: the frame count and the kept frames."""

    total: int
    frames: list[np.ndarray]  # each (H, W, 3) uint8, upright
    indices: list[int]
    seconds: list[float]


def _header(fp: BinaryIO, what: str, num_frames: int, limits: MediaLimits) -> VideoInfo:
    """The stream's facts before decoding, every limit checked (a seekable stream that starts at offset 0)."""
    if not fp.read(1):
        raise EmptyVideoError(what, "the input is empty (0 bytes)")
    with _open(fp, what) as container:
        stream = _video_stream(container, what)
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_pixels(width, height, what, limits.max_video_frame_pixels)
        fps = _fps(stream, what)
        estimate = _frame_estimate(stream)
        demuxer = container.format.name
    if demuxer in _IMAGE_DEMUXERS or demuxer.endswith("_pipe"):
        raise StillImageAsVideoError(what, f"is a still image ({demuxer} format); send it as an image part")
    if estimate is None:
        with _open(fp, what) as container:
            estimate = _count_packets(container, _video_stream(container, what), what)
    if demuxer in _ANIMATED_IMAGE_DEMUXERS and estimate <= 1:
        raise StillImageAsVideoError(what, f"is a still image (one frame of {demuxer}); send it as an image part")
    sampled = min(num_frames, estimate)
    _check_total(sampled, sampled * width * height, what, limits, f"{width}x{height} each, from its header")
    return VideoInfo(width=width, height=height, frames=estimate, sampled=sampled, fps=fps, source=what)


def _check_total(frames: int, pixels: int, what: str, limits: MediaLimits, found: str) -> None:
    """``frames`` sampled frames of ``pixels`` pixels in all must stay within ``max_video_pixels``."""
    if limits.max_video_pixels is not None and pixels > limits.max_video_pixels:
        raise VideoTooLargeError(
            what,
            f"{frames} sampled frames make {pixels} pixels ({found}), more than the limit of "
            f"{limits.max_video_pixels} per video; sample fewer frames (num_frames) or raise "
            "MediaLimits.max_video_pixels",
        )


def _from_stream(fp: BinaryIO, what: str, num_frames: int, limits: MediaLimits) -> VideoFrames:
    """Decode a seekable binary stream that starts at offset 0."""
    info = _header(fp, what, num_frames, limits)
    fps, estimate = info.fps, info.frames
    found = _decode(fp, what, sample_indices(estimate, num_frames), fps, limits)
    if found.total == 0:
        raise EmptyVideoError(what, "the video stream holds no decodable frame")
    if found.total != estimate:
        log.info("%s: the container announces %d frames but %d decode; decoding again", what, estimate, found.total)
        second = _decode(fp, what, sample_indices(found.total, num_frames), fps, limits)
        if second.total != found.total:
            raise CorruptVideoError(what, f"decoding gave {found.total} frames once and {second.total} the next time")
        found = second
    if found.total < num_frames:
        log.warning(
            "%s: the video has %d frames, fewer than the %d requested; using all of them",
            what,
            found.total,
            num_frames,
        )
    first = found.frames[0].shape
    for index, frame in zip(found.indices, found.frames, strict=True):
        if frame.shape != first:
            raise UnsupportedVideoError(
                what,
                f"the frame size changes within the stream: {first[0]}x{first[1]} at frame {found.indices[0]}, "
                f"{frame.shape[0]}x{frame.shape[1]} at frame {index} (height x width)",
            )
    return VideoFrames(
        frames=np.stack(found.frames, out=np.empty((len(found.frames), *first), np.uint8)),  # (N, H, W, 3), C order
        indices=tuple(found.indices),
        timestamps_s=tuple(found.seconds),
        fps=fps,
        total_frames=found.total,
        source=what,
    )


@contextmanager
def _open(fp: BinaryIO, what: str) -> Iterator[av.container.InputContainer]:
    """``av.open`` from offset 0; FFmpeg's refusal becomes :class:`CorruptVideoError` (the error chained)."""
    fp.seek(0)
    try:
        container = av.open(fp, mode="r")
    except av.FFmpegError as exc:
        raise CorruptVideoError(what, f"not a video container FFmpeg can open: {scrub(exc)}") from exc
    try:
        yield container
    finally:
        container.close()  # PyAV never closes a file object it was given


def _video_stream(container: av.container.InputContainer, what: str) -> av.VideoStream:
    streams = [s for s in container.streams.video if not _is_cover_art(s)]
    if not streams:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        art = " (only cover art)" if container.streams.video else ""
        raise CorruptVideoError(
            what, f"no video stream in the {container.format.name} container{art}; stream kinds: {kinds}"
        )
    return streams[0]


def _is_cover_art(stream: av.VideoStream) -> bool:
    """An embedded picture (album art, a thumbnail) stored as a one-frame video stream."""
    disposition = getattr(stream, "disposition", None)  # PyAV ≥ 15; older versions cannot tell
    return disposition is not None and bool(disposition & av.stream.Disposition.attached_pic)


def _check_pixels(width: int, height: int, what: str, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise VideoTooLargeError(
            what,
            f"{width}x{height} = {width * height} pixels per frame exceeds the limit of {max_pixels} "
            "(a decompression-bomb guard; raise MediaLimits.max_video_frame_pixels to allow it)",
        )


def _fps(stream: av.VideoStream, what: str) -> float:
    rate = stream.average_rate
    if rate is None or rate <= 0:
        log.warning("%s: the stream declares no frame rate; assuming %g fps, as the reference does", what, DEFAULT_FPS)
        return DEFAULT_FPS
    return float(rate)


def _frame_estimate(stream: av.VideoStream) -> int | None:
    """The container's frame count, or ``None`` when it gives none. Only chooses what to keep on the first pass."""
    return stream.frames if stream.frames > 0 else None


def _count_packets(container: av.container.InputContainer, stream: av.VideoStream, what: str) -> int:
    """Packets in the video stream (demuxing only, no decoding): the frame count for nearly every codec."""
    try:
        return sum(1 for packet in container.demux(stream) if packet.size)  # the final flush packet is empty
    except av.FFmpegError as exc:
        raise CorruptVideoError(what, f"cannot read the video stream: {scrub(exc)}") from exc


def _decode(fp: BinaryIO, what: str, keep: tuple[int, ...], fps: float, limits: MediaLimits) -> _Pass:
    """Decode every frame once; convert and keep those whose index is in ``keep`` (within the limits: a frame
    may be larger than the stream header said)."""
    wanted = frozenset(keep)
    kept_pixels = 0
    found = _Pass(total=0, frames=[], indices=[], seconds=[])
    with _open(fp, what) as container:
        stream = _video_stream(container, what)
        stream.codec_context.thread_type = "AUTO"  # frame + slice threads; frames still come out in order
        origin = stream.start_time
        try:
            for index, frame in enumerate(container.decode(stream)):
                found.total = index + 1
                if origin is None and frame.pts is not None:
                    origin = frame.pts
                if index not in wanted:
                    continue
                _check_pixels(frame.width, frame.height, what, limits.max_video_frame_pixels)
                kept_pixels += frame.width * frame.height
                _check_total(len(found.frames) + 1, kept_pixels, what, limits, "as decoded")
                found.frames.append(_upright(frame.to_ndarray(format="rgb24"), _display_matrix(frame), what))
                found.indices.append(index)
                found.seconds.append(_seconds(frame, stream, origin, index, fps))
        except av.FFmpegError as exc:
            raise CorruptVideoError(what, f"cannot decode frame {found.total}: {scrub(exc)}") from exc
    return found


def _seconds(frame: av.VideoFrame, stream: av.VideoStream, origin: int | None, index: int, fps: float) -> float:
    """Presentation time from the start of the stream; ``index / fps`` for a frame without a pts."""
    time_base = frame.time_base or stream.time_base
    if frame.pts is None or time_base is None:
        return index / fps
    # Exact rational arithmetic, one rounding; a frame shown before the stream's start (edit lists) counts as 0.
    return max(0.0, float((frame.pts - (origin or 0)) * Fraction(time_base)))


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's 3×3 display matrix (FFmpeg's int32 layout, row major) or ``None``."""
    for side_data in frame.side_data:
        if side_data.type == SideDataType.DISPLAYMATRIX:
            values = np.frombuffer(bytes(side_data), dtype=np.int32)  # native byte order, as FFmpeg stores it
            return values if values.size == 9 else None
    return None


def _upright(pixels: np.ndarray, matrix: np.ndarray | None, what: str) -> np.ndarray:
    """Apply a display matrix to (H, W, 3) pixels, as ``ffmpeg``'s autorotate does; may return a view.

    FFmpeg maps a stored pixel (x, y) to the displayed (a·x + c·y, b·x + d·y) (the matrix is [a b u; c d v;
    x y w], y pointing down); for right angles one of the pairs (a, d) and (b, c) is zero and only signs matter.
    """
    if matrix is None:
        return pixels
    a, b, c, d = (int(v) for v in matrix[[0, 1, 3, 4]])
    if b == 0 and c == 0 and a and d:  # x' = ±x, y' = ±y
        out = pixels
        flip_rows, flip_cols = d < 0, a < 0
    elif a == 0 and d == 0 and b and c:  # x' = ±y, y' = ±x: transpose
        out = pixels.transpose(1, 0, 2)  # (W, H, 3)
        flip_rows, flip_cols = b < 0, c < 0
    else:
        log.warning("%s: display matrix %s is not a right-angle rotation; ignoring it", what, matrix.tolist())
        return pixels
    if flip_rows:
        out = out[::-1]
    if flip_cols:
        out = out[:, ::-1]
    return out
