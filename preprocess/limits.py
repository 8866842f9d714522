"""Resource limits on untrusted input: one frozen ``MediaLimits`` for every guard the front end applies.

Not part of the spec (../shared/spec/GEMMA4.md sets no limits): these are the decompression-bomb and runaway
guards of a preprocessing job that reads manifests it does not control. Each limit is checked from what is
known *before* the expensive step (an image's header, an audio or video stream's header, the request itself),
so a refusal costs a header read, never the memory it protects. Every refusal raises a subclass of
:class:`preprocess.errors.InvalidInputError` whose message names the input, the limit and the field to raise.

``None`` lifts a limit. The defaults bound one example at roughly 2 GB of peak memory whatever the input, and
leave every ordinary input well inside them:

* ``max_pixels`` 89 478 485 (Pillow's ``MAX_IMAGE_PIXELS``, the size at which Pillow itself starts warning:
  about 9 459² px, 268 MB as RGB). A 200-megapixel phone photo is refused; the model sees at most 1 120 soft
  tokens of 48² px each (about 2.6 MP), so nothing larger is ever needed for quality.
* ``max_video_frames`` 256 sampled frames per video (8 × the reference's 32; 256 × 72 tokens ≈ 18 k tokens
  at the default frame budget of 70).
* ``max_video_frame_pixels`` 8 847 360 (4 096 × 2 160, DCI 4K): the largest frame of ordinary video.
* ``max_video_pixels`` 530 841 600 (256 × 1 920 × 1 080): sampled frames × pixels per frame of one video, the
  RGB frames held at once (1.6 GB). 256 Full-HD frames, or 60 4K frames.
* ``max_audio_seconds`` 1 800 (30 min per audio part): 60 segments of 30 s, 45 000 audio tokens, already
  beyond the longest context that is useful for one example; the 16 kHz waveform is then 115 MB.
* ``max_audio_samples`` 172 800 000 (30 min of 48 kHz stereo): samples × channels decoded at the source rate
  before downmixing and resampling (691 MB as float32), so a many-channel or high-rate file of legal duration
  cannot decode to gigabytes.
* ``max_media_parts`` 64 media parts per example (each decoded one at a time, but their patches are kept).
* ``max_template_seconds`` 10 s and ``max_template_chars`` 10 000 000 for rendering a checkpoint's chat
  template (a template is code: a loop of 10¹⁰ iterations or a string of 10¹⁰ characters must fail, not hang).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Integral, Real

__all__ = ["MediaLimits", "DEFAULT_LIMITS"]


@dataclass(frozen=True, kw_only=True)
class MediaLimits:
    """Limits on one example's inputs (see the module docstring for each default and why); ``None`` lifts one."""

    max_pixels: int | None = 89_478_485
    max_video_frames: int | None = 256
    max_video_frame_pixels: int | None = 4096 * 2160
    max_video_pixels: int | None = 256 * 1920 * 1080
    max_audio_seconds: float | None = 1800.0
    max_audio_samples: int | None = 1800 * 48_000 * 2
    max_media_parts: int | None = 64
    max_template_seconds: float | None = 10.0
    max_template_chars: int | None = 10_000_000

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None:
                continue
            if spec.name in ("max_audio_seconds", "max_template_seconds"):
                ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
                kind = "a positive number of seconds"
            else:
                ok = isinstance(value, Integral) and not isinstance(value, bool) and value > 0
                kind = "a positive int"
            if not ok:
                raise ValueError(f"MediaLimits.{spec.name} must be {kind} or None (no limit), got {value!r}")


DEFAULT_LIMITS = MediaLimits()
