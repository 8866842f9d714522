"""MediaLimits: one frozen, validated settings object; its defaults are the documented ones."""

from __future__ import annotations

import dataclasses

import pytest

from preprocess.limits import DEFAULT_LIMITS, MediaLimits

FIELDS = (
    "max_pixels",
    "max_video_frames",
    "max_video_frame_pixels",
    "max_video_pixels",
    "max_audio_seconds",
    "max_audio_samples",
    "max_media_parts",
    "max_template_seconds",
    "max_template_chars",
)


def test_field_names_are_stable_and_defaults_documented():
    """The job's settings mirror these names: renaming one is a breaking change."""
    assert tuple(f.name for f in dataclasses.fields(MediaLimits)) == FIELDS
    assert DEFAULT_LIMITS == MediaLimits(
        max_pixels=89_478_485,
        max_video_frames=256,
        max_video_frame_pixels=4096 * 2160,
        max_video_pixels=256 * 1920 * 1080,
        max_audio_seconds=1800.0,
        max_audio_samples=1800 * 48_000 * 2,
        max_media_parts=64,
        max_template_seconds=10.0,
        max_template_chars=10_000_000,
    )


def test_frozen_keyword_only_and_none_lifts_a_limit():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_pixels = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        MediaLimits(1)  # type: ignore[misc]
    unlimited = MediaLimits(**dict.fromkeys(FIELDS))
    assert all(getattr(unlimited, name) is None for name in FIELDS)
    assert dataclasses.replace(DEFAULT_LIMITS, max_media_parts=3).max_media_parts == 3


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("bad", [0, -1, True, "10", float("nan")])
def test_bad_values_are_refused_naming_the_field(name, bad):
    with pytest.raises(ValueError, match=f"MediaLimits.{name}"):
        MediaLimits(**{name: bad})


@pytest.mark.parametrize("name", [n for n in FIELDS if not n.endswith("_seconds")])
def test_counts_must_be_ints(name):
    with pytest.raises(ValueError, match=f"MediaLimits.{name} must be a positive int"):
        MediaLimits(**{name: 2.5})
    assert getattr(MediaLimits(**{name: 7}), name) == 7


def test_seconds_may_be_fractional():
    assert MediaLimits(max_audio_seconds=0.5, max_template_seconds=2).max_audio_seconds == 0.5
    with pytest.raises(ValueError, match="positive number of seconds"):
        MediaLimits(max_audio_seconds=float("inf"))
