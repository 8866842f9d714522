"""The video front end: sampled frames through the image front end, one size per video (spec §6.7).

Implements ../shared/spec/GEMMA4.md §6.7 (HF ``Gemma4VideoProcessor``): ``num_frames`` frames sampled uniformly
(decoding and sampling: :mod:`preprocess.video_io`), each resized to the per-video target size of §6.2 at the
frame budget (70 by default), then cut into patches with positions and padding exactly as images are (§6.4),
and the ``"MM:SS"`` timestamp of every frame for the prompt (§5.1). The frames of a video share one size, so
the target size is computed once and every frame goes through the image kernels
(:func:`preprocess.image.resize_to_target`, :func:`preprocess.image.patchify`); :func:`collate_videos` is
:func:`preprocess.image.collate_images` over all frames of all videos, plus the per-video counts.

**Deviation**: the reference resizes frames with torchvision's bicubic filter with antialiasing; we use the
image front end's Pillow bicubic (torchvision is not a dependency), so pixel values differ slightly (only
where a frame is actually resized) while shapes, positions and token counts are identical. Frame sampling and
timestamps differ from the reference as :mod:`preprocess.video_io` documents (short videos are accepted;
timestamps are the real presentation times; rotation is applied).

Shapes: F frames of one video, Σ frames of all videos, P patches per frame, M padded patches (9·budget),
768 = 16·16·3 values per patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from .budget import check_budget, image_target_size
from .image import ImagePatches, collate_images, patchify, resize_to_target
from .limits import MediaLimits
from .video_io import DEFAULT_NUM_FRAMES, FROM_LIMITS, VideoFrames, VideoSource, load_video

__all__ = ["DEFAULT_VIDEO_BUDGET", "VideoPatches", "patch_video", "preprocess_video", "collate_videos"]

DEFAULT_VIDEO_BUDGET = 70  # the reference video processor's max_soft_tokens


@dataclass(frozen=True)
class VideoPatches:
    """One preprocessed video: its sampled frames as images, all of one size and budget.

    frames: F frames; each ``patches`` (P, 768) uint8 with the same ``size``.
    timestamps: F ``"MM:SS"`` strings, one per frame.
    """

    frames: tuple[ImagePatches, ...]
    timestamps: tuple[str, ...]
    budget: int

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError("a video needs at least one frame")
        if len(self.timestamps) != len(self.frames):
            raise ValueError(f"{len(self.frames)} frames but {len(self.timestamps)} timestamps")
        size = self.frames[0].size
        for index, frame in enumerate(self.frames):
            if frame.size != size or frame.budget != self.budget:
                raise ValueError(
                    f"frame {index} is {frame.size} at budget {frame.budget}; frame 0 is {size} and the video's "
                    f"budget is {self.budget}: all frames of a video share one size and budget"
                )

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def num_soft_tokens_per_frame(self) -> int:
        """Soft tokens of each frame (the ``<|video|>`` tokens inside one ``<|image>`` … ``<image|>`` group)."""
        return self.frames[0].num_soft_tokens

    @property
    def num_soft_tokens(self) -> int:
        """Soft tokens of the whole video (timestamps and BOI/EOI not included)."""
        return self.num_frames * self.num_soft_tokens_per_frame


def patch_video(video: VideoFrames, budget: int = DEFAULT_VIDEO_BUDGET) -> VideoPatches:
    """Resize every frame of ``video`` to the budget's target size for its frame size and cut patches."""
    budget = check_budget(budget)
    height, width = video.size
    size = image_target_size(height, width, budget)  # one size for every frame, as the reference resizes
    frames = tuple(
        ImagePatches(
            patches=patchify(resize_to_target(Image.fromarray(pixels), size)),  # (P, 768) uint8
            size=size,
            original_size=(height, width),
            budget=budget,
        )
        for pixels in video.frames  # (H, W, 3) each
    )
    return VideoPatches(frames=frames, timestamps=video.timestamps, budget=budget)


def preprocess_video(
    source: VideoSource,
    num_frames: int = DEFAULT_NUM_FRAMES,
    budget: int = DEFAULT_VIDEO_BUDGET,
    *,
    name: str | None = None,
    max_pixels=FROM_LIMITS,
    limits: MediaLimits | None = None,
) -> VideoPatches:
    """Decode and sample ``source`` (see :func:`preprocess.video_io.load_video`, which also says what
    ``max_pixels`` and ``limits`` bound), then :func:`patch_video`.

    ``name`` labels the input in error messages. The budget is checked before anything is decoded.
    """
    budget = check_budget(budget)
    return patch_video(load_video(source, num_frames, name=name, max_pixels=max_pixels, limits=limits), budget)


def collate_videos(videos: Sequence[VideoPatches]) -> dict:
    """Stack preprocessed videos into the reference video processor's outputs.

    Returns ``pixel_values_videos`` (Σ, M, 768) float32 in [0, 1] (zero rows for padding), ``video_position_ids``
    (Σ, M, 2) int64 ((−1, −1) for padding), both with the frames of all videos concatenated in order;
    ``num_frames_per_video`` (list of ints) and ``num_soft_tokens_per_video`` (list of ints: per video, the soft
    tokens of *one* frame, as the reference returns it). M is 9 × the largest budget among ``videos``.
    """
    images = collate_images([frame for video in videos for frame in video.frames])
    return {
        "pixel_values_videos": images["pixel_values"],  # (Σ, M, 768)
        "video_position_ids": images["image_position_ids"],  # (Σ, M, 2)
        "num_frames_per_video": [video.num_frames for video in videos],
        "num_soft_tokens_per_video": [video.num_soft_tokens_per_frame for video in videos],
    }
