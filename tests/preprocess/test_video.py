"""Tests of ``preprocess.video_io`` and ``preprocess.video``: the right frames are sampled (each test frame carries
its number), timestamps come from the presentation times, the display matrix is applied, every source kind
decodes, bad input raises a ``ValueError`` subclass naming the input, and the patches, positions and token counts
agree with the budget math and the reference video processor.

Videos are encoded with PyAV by tests/preprocess/helpers.py (64×48 px, yuv420p, libx264 when available, else
mpeg4). Oracles: ``transformers.video_utils.default_sample_indices_fn`` / ``VideoMetadata`` (sampling, timestamps),
``get_aspect_ratio_preserving_size`` (frame size), ``preprocess.budget``, ``collate_images``, and, when
torchvision is installed, ``transformers.Gemma4VideoProcessor`` itself (test-only parity oracle).
"""

from __future__ import annotations

import io
import logging
import wave
from fractions import Fraction

import av
import numpy as np
import pytest
from av.sidedata.sidedata import Type as SideDataType
from av.video.stream import VideoStream

from preprocess import budget as budget_math
from preprocess import errors, video_io
from preprocess.image import collate_images, preprocess_image
from preprocess.video import VideoPatches, collate_videos, patch_video, preprocess_video
from preprocess.video_io import VideoFrames, format_timestamp, load_video, sample_indices
from tests.preprocess.helpers import CODEC, HEIGHT, WIDTH, encode_video, frame_number, numbered_frame, unblocking_fifo

# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def video_utils(reference):
    """``transformers.video_utils`` (the reference sampler and metadata); skips the test without it."""
    return pytest.importorskip("transformers.video_utils")


def wav_bytes() -> bytes:
    """A 0.1 s 16 kHz mono WAV file: a container with an audio stream and no video stream."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(np.zeros(1600, dtype=np.int16).tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def video37() -> bytes:
    """37 numbered frames at 25 fps."""
    return encode_video(37)


@pytest.fixture
def video_file(tmp_path, video37):
    path = tmp_path / "clip.mp4"
    path.write_bytes(video37)
    return path


# ------------------------------------------------------------------------------------------------ sampling


def test_sample_indices_match_reference_sampler(video_utils):
    sampler, metadata = video_utils.default_sample_indices_fn, video_utils.VideoMetadata
    for total in range(1, 70):
        for num in range(1, total + 1):
            reference = sampler(metadata(total_num_frames=total, fps=25.0), num_frames=num)
            assert (
                sample_indices(total, num)
                == tuple(int(i) for i in reference)
                == tuple(i * total // num for i in range(num))
            )
    assert sample_indices(5, 32) == (0, 1, 2, 3, 4)  # the reference raises here; we take every frame
    with pytest.raises(ValueError):
        sampler(metadata(total_num_frames=5, fps=25.0), num_frames=32)


@pytest.mark.parametrize("codec", sorted({CODEC, "mpeg4"}))
def test_sampled_frames_are_the_right_frames(codec):
    data = encode_video(37, codec=codec)
    video = load_video(data, 8)
    expected = tuple(i * 37 // 8 for i in range(8))
    assert video.indices == expected
    assert [frame_number(f) for f in video.frames] == list(expected)
    assert video.frames.shape == (8, HEIGHT, WIDTH, 3) and video.frames.dtype == np.uint8
    assert video.total_frames == 37 and video.fps == 25.0 and video.num_frames == 8
    assert video.size == (HEIGHT, WIDTH)


def test_default_is_32_frames(video37):
    video = load_video(video37)
    assert video.indices == tuple(i * 37 // 32 for i in range(32))
    assert [frame_number(f) for f in video.frames] == list(video.indices)


def test_container_without_frame_count_is_counted():
    data = encode_video(37, fmt="matroska")
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no count: the packets are counted
    video = load_video(data, 8)
    assert video.total_frames == 37
    assert [frame_number(f) for f in video.frames] == [i * 37 // 8 for i in range(8)]


@pytest.mark.parametrize("error", [-5, 5])
def test_wrong_container_count_is_corrected(monkeypatch, caplog, video37, error):
    """A container whose frame count is wrong: the frames decoded decide, through a second pass."""
    expected = load_video(video37, 8)
    monkeypatch.setattr(video_io, "_frame_estimate", lambda stream: 37 + error)
    with caplog.at_level(logging.INFO, logger="preprocess.video_io"):
        video = load_video(video37, 8)
    assert "announces 32 frames but 37 decode" in caplog.text or "announces 42 frames but 37 decode" in caplog.text
    assert video.indices == expected.indices and video.total_frames == 37
    np.testing.assert_array_equal(video.frames, expected.frames)


def test_fewer_frames_than_requested_gives_all_with_warning(caplog):
    data = encode_video(5)
    with caplog.at_level(logging.WARNING, logger="preprocess.video_io"):
        video = load_video(data, 32, name="short clip")
    assert video.indices == (0, 1, 2, 3, 4) and video.total_frames == 5
    assert [frame_number(f) for f in video.frames] == [0, 1, 2, 3, 4]
    assert "short clip" in caplog.text and "5 frames, fewer than the 32 requested" in caplog.text


# ------------------------------------------------------------------------------------------------ timestamps


def test_constant_rate_timestamps_match_reference(video37, video_utils):
    video = load_video(video37, 8)
    reference = video_utils.VideoMetadata(total_num_frames=37, fps=25.0, frames_indices=list(video.indices)).timestamps
    assert video.timestamps_s == pytest.approx(reference, abs=1e-12)
    assert video.timestamps_s == pytest.approx([i / 25 for i in video.indices], abs=1e-12)


@pytest.mark.parametrize("fmt", ["mp4", "matroska"])
def test_variable_rate_timestamps_are_presentation_times(fmt):
    pts_ms = [0, 40, 80, 200, 210, 220, 900, 1000, 1500, 1510, 2750, 2760]
    data = encode_video(len(pts_ms), fmt=fmt, pts=pts_ms, time_base=Fraction(1, 1000))
    video = load_video(data, 6)
    assert video.indices == (0, 2, 4, 6, 8, 10)  # by frame count, not by time
    assert [frame_number(f) for f in video.frames] == list(video.indices)
    assert video.timestamps_s == pytest.approx([pts_ms[i] / 1000 for i in video.indices], abs=1e-9)
    assert video.timestamps == ("00:00", "00:00", "00:00", "00:00", "00:01", "00:02")


def test_timestamps_past_a_minute():
    data = encode_video(70, rate=1)  # 1 fps: frame i is shown at i seconds
    video = load_video(data, 7)
    assert video.indices == (0, 10, 20, 30, 40, 50, 60)
    assert video.timestamps == ("00:00", "00:10", "00:20", "00:30", "00:40", "00:50", "01:00")
    assert load_video(data, 70).timestamps[-1] == "01:09"


@pytest.mark.parametrize(
    ("offset", "text"),
    [
        (0.0, "00:00"),
        (0.999, "00:00"),
        (59.999, "00:59"),
        (60.0, "01:00"),
        (61.5, "01:01"),
        (3599.9, "59:59"),
        (3600.0, "60:00"),
        (6000.0, "100:00"),
    ],
)
def test_format_timestamp(offset, text):
    # The reference processor's expression (processing_gemma4.py), written out.
    assert format_timestamp(offset) == text == f"{int(offset // 60):02d}:{int(offset % 60):02d}"


def test_timestamps_property():
    video = VideoFrames(
        frames=np.zeros((3, 2, 2, 3), np.uint8),
        indices=(0, 1, 2),
        timestamps_s=(0.5, 75.2, 3601.0),
        fps=1.0,
        total_frames=3,
        source="s",
    )
    assert video.timestamps == ("00:00", "01:15", "60:01")


# ------------------------------------------------------------------------------------------------ rotation

ROTATIONS = {
    # (degrees counter-clockwise, hflip, vflip): what the upright frame must be, from the stored one
    (90, False, False): lambda x: np.rot90(x, 1),
    (-90, False, False): lambda x: np.rot90(x, -1),  # a phone's "rotate=90" portrait video
    (180, False, False): lambda x: np.rot90(x, 2),
    (0, True, False): lambda x: x[:, ::-1],
    (0, False, True): lambda x: x[::-1],
    (90, True, False): lambda x: np.rot90(x, 1)[:, ::-1],
    (-90, True, False): lambda x: np.rot90(x, -1)[:, ::-1],
}


@pytest.mark.parametrize("rotation", list(ROTATIONS), ids=str)
def test_display_matrix_is_applied(rotation):
    if not hasattr(VideoStream, "set_display_rotation"):
        pytest.skip(f"PyAV {av.__version__} cannot write a display matrix (VideoStream.set_display_rotation)")
    data = encode_video(6, rotation=rotation)
    with av.open(io.BytesIO(data)) as container:  # the matrix really is in the file and reaches the frames
        side_data = next(container.decode(video=0)).side_data
        assert any(s.type == SideDataType.DISPLAYMATRIX for s in side_data)
    video = load_video(data, 3)
    for index, frame in zip(video.indices, video.frames, strict=True):
        expected = ROTATIONS[rotation](numbered_frame(index))
        assert frame.shape == expected.shape
        assert np.abs(frame.astype(int) - expected).mean() < 8
    assert video.frames.flags.c_contiguous


def with_tkhd_matrix(mp4: bytes, a: int, b: int, c: int, d: int) -> bytes:
    """``mp4`` with the track header's matrix set to [a b 0; c d 0; 0 0 1] (QuickTime layout, as phones write it)."""
    data = bytearray(mp4)
    box = data.index(b"tkhd") + 4
    times = 32 if data[box] == 1 else 20  # version 1 stores 64-bit times and duration
    offset = box + 4 + times + 16  # version/flags, times, then reserved/layer/group/volume/reserved
    fixed = [a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30]  # 16.16, except the last column (2.30)
    data[offset : offset + 36] = b"".join(v.to_bytes(4, "big", signed=True) for v in fixed)
    return bytes(data)


@pytest.mark.parametrize(
    ("matrix", "upright"),
    [
        ((0, 1, -1, 0), lambda x: np.rot90(x, -1)),  # "rotate=90": a phone held upright, shown turned clockwise
        ((-1, 0, 0, -1), lambda x: np.rot90(x, 2)),  # "rotate=180"
        ((0, -1, 1, 0), lambda x: np.rot90(x, 1)),  # "rotate=270"
        ((-1, 0, 0, 1), lambda x: x[:, ::-1]),  # mirrored (a front camera)
    ],
    ids=["rotate90", "rotate180", "rotate270", "mirror"],
)
def test_mp4_track_matrix_is_applied(video37, matrix, upright):
    """Works with every PyAV version: the matrix is written into the MP4 track header, as a camera writes it."""
    video = load_video(with_tkhd_matrix(video37, *matrix), 4)
    for index, frame in zip(video.indices, video.frames, strict=True):
        expected = upright(numbered_frame(index))
        assert frame.shape == expected.shape
        assert np.abs(frame.astype(int) - expected).mean() < 8


def test_identity_matrix_means_as_stored(video37):
    with av.open(io.BytesIO(video37)) as container:
        side_data = next(container.decode(video=0)).side_data
        assert not any(s.type == SideDataType.DISPLAYMATRIX for s in side_data)
    same = with_tkhd_matrix(video37, 1, 0, 0, 1)
    np.testing.assert_array_equal(load_video(same, 4).frames, load_video(video37, 4).frames)
    assert [frame_number(f) for f in load_video(video37, 4).frames] == [0, 9, 18, 27]


# ------------------------------------------------------------------------------------------------ sources


def test_path_bytes_and_file_objects_agree(video_file, video37):
    reference = load_video(video_file, 4)
    assert reference.source == f"video file {str(video_file)!r}"
    for source in (str(video_file), video37, bytearray(video37), memoryview(video37)):
        video = load_video(source, 4)
        assert video.indices == reference.indices
        np.testing.assert_array_equal(video.frames, reference.frames)
    assert load_video(video37, 4).source == f"video bytes ({len(video37)} bytes)"
    with open(video_file, "rb") as fp:
        np.testing.assert_array_equal(load_video(fp, 4).frames, reference.frames)
        assert fp.tell() == 0


def test_file_object_read_from_its_position_which_is_restored(video37):
    fp = io.BytesIO(b"junk" + video37)
    fp.seek(4)
    video = load_video(fp, 4)
    assert fp.tell() == 4
    assert [frame_number(f) for f in video.frames] == [0, 9, 18, 27]


def test_name_labels_the_source(video37):
    assert load_video(video37, 2, name="my clip").source == "my clip"


# ------------------------------------------------------------------------------------------------ bad input


def check_error(exc_info, source: str) -> None:
    assert isinstance(exc_info.value, ValueError)
    assert str(exc_info.value).startswith(source + ": ")
    assert exc_info.value.source == source


def test_empty_bytes():
    with pytest.raises(errors.EmptyVideoError) as exc_info:
        load_video(b"")
    check_error(exc_info, "video bytes (0 bytes)")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(errors.EmptyVideoError) as exc_info:
        load_video(path)
    check_error(exc_info, f"video file {str(path)!r}")


def test_random_bytes_are_corrupt():
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(errors.CorruptVideoError) as exc_info:
        load_video(data)
    check_error(exc_info, "video bytes (4096 bytes)")
    assert isinstance(exc_info.value.__cause__, av.FFmpegError)


def test_truncated_video_is_corrupt(video37):
    cut = video37[: len(video37) // 2]  # the MP4 index (moov) is at the end: gone
    with pytest.raises(errors.CorruptVideoError) as exc_info:
        load_video(cut, name="cut.mp4")
    check_error(exc_info, "cut.mp4")


def test_damaged_frames_are_corrupt(video37):
    data = bytearray(video37)
    start = data.find(b"mdat") + 4
    size = int.from_bytes(data[start - 8 : start - 4], "big") - 8
    data[start : start + size] = bytes(size)  # every coded frame zeroed
    with pytest.raises(errors.CorruptVideoError) as exc_info:
        load_video(bytes(data), name="zeroed")
    check_error(exc_info, "zeroed")
    assert isinstance(exc_info.value.__cause__, av.FFmpegError)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "speech.wav"
    path.write_bytes(wav_bytes())
    with pytest.raises(errors.CorruptVideoError) as exc_info:
        load_video(path)
    check_error(exc_info, f"video file {str(path)!r}")
    assert "no video stream" in str(exc_info.value) and "audio" in str(exc_info.value)


def test_video_stream_without_frames_is_empty():
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=16_000, layout="mono")
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.int16), format="s16", layout="mono")
        samples.sample_rate, samples.pts = 16_000, 0
        container.mux(audio.encode(samples))
        container.mux(audio.encode())
    with pytest.raises(errors.EmptyVideoError) as exc_info:
        load_video(buf.getvalue(), name="no frames")
    check_error(exc_info, "no frames")


def test_missing_path(tmp_path):
    path = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_video(path)


@pytest.mark.parametrize("num_frames", [0, -1, 2.0, True, "8", None])
def test_bad_num_frames(video37, num_frames):
    with pytest.raises(errors.UnsupportedVideoError) as exc_info:
        load_video(video37, num_frames)
    check_error(exc_info, f"video bytes ({len(video37)} bytes)")
    assert "num_frames" in str(exc_info.value)


@pytest.mark.parametrize("source", [42, ["a.mp4"], np.zeros((2, 4, 4, 3), np.uint8)])
def test_bad_source_type(source):
    with pytest.raises(errors.UnsupportedVideoError) as exc_info:
        load_video(source)
    expected = "video array (shape (2, 4, 4, 3), dtype uint8)" if isinstance(source, np.ndarray) else None
    check_error(exc_info, expected or f"video input of type {type(source).__name__}")


def test_text_mode_file_object(video_file):
    with open(video_file, encoding="latin-1") as fp:
        with pytest.raises(errors.UnsupportedVideoError) as exc_info:
            load_video(fp)
    check_error(exc_info, f"video file object {str(video_file)!r}")


def test_frames_over_the_pixel_limit(video37):
    with pytest.raises(errors.VideoTooLargeError) as exc_info:
        load_video(video37, max_pixels=WIDTH * HEIGHT - 1, name="big")
    check_error(exc_info, "big")
    assert load_video(video37, 1, max_pixels=None).num_frames == 1


def test_error_classes():
    for cls in (
        errors.EmptyVideoError,
        errors.CorruptVideoError,
        errors.UnsupportedVideoError,
        errors.VideoTooLargeError,
    ):
        assert issubclass(cls, errors.InvalidVideoError) and cls.__name__ in errors.__all__
    assert issubclass(errors.InvalidVideoError, errors.InvalidInputError)
    assert issubclass(errors.InvalidVideoError, ValueError)


# ------------------------------------------------------------------------------------------------ patches


@pytest.mark.parametrize("budget", [70, 280])
def test_preprocess_video_agrees_with_budget_math(video37, budget, reference):
    pil_gemma4 = pytest.importorskip("transformers.models.gemma4.image_processing_pil_gemma4")
    video = preprocess_video(video37, 8, budget)
    size = budget_math.image_target_size(HEIGHT, WIDTH, budget)
    assert size == pil_gemma4.get_aspect_ratio_preserving_size(HEIGHT, WIDTH, 16, 9 * budget, 3)
    tokens = budget_math.image_soft_tokens(HEIGHT, WIDTH, budget)
    rows, cols = budget_math.image_grid(HEIGHT, WIDTH, budget)
    assert isinstance(video, VideoPatches) and video.budget == budget
    assert video.num_frames == 8 and len(video.timestamps) == 8
    assert video.num_soft_tokens_per_frame == tokens
    assert video.num_soft_tokens == 8 * tokens
    for frame in video.frames:
        assert frame.size == size and frame.original_size == (HEIGHT, WIDTH) and frame.budget == budget
        assert frame.patches.shape == (rows * cols, 768) and frame.patches.dtype == np.uint8


def test_frames_go_through_the_image_front_end(video37):
    frames = load_video(video37, 4)
    video = patch_video(frames, 70)
    assert video.timestamps == frames.timestamps
    for pixels, patches in zip(frames.frames, video.frames, strict=True):
        image = preprocess_image(pixels, 70)
        np.testing.assert_array_equal(patches.patches, image.patches)
        assert patches.size == image.size and patches.original_size == image.original_size


def test_video_patches_validation(video37):
    video = preprocess_video(video37, 2)
    with pytest.raises(ValueError, match="timestamps"):
        VideoPatches(frames=video.frames, timestamps=video.timestamps[:1], budget=70)
    with pytest.raises(ValueError, match="at least one frame"):
        VideoPatches(frames=(), timestamps=(), budget=70)
    with pytest.raises(ValueError, match="budget"):
        VideoPatches(frames=video.frames, timestamps=video.timestamps, budget=140)


def test_bad_budget_fails_before_decoding():
    with pytest.raises(ValueError, match="budget 71"):
        preprocess_video(b"", budget=71)


def test_collate_videos_concatenates_frames():
    first = preprocess_video(encode_video(12), 3, 70)
    second = preprocess_video(encode_video(9), 5, 70)
    batch = collate_videos([first, second])
    assert set(batch) == {
        "pixel_values_videos",
        "video_position_ids",
        "num_frames_per_video",
        "num_soft_tokens_per_video",
    }
    assert batch["pixel_values_videos"].shape == (8, 630, 768) and batch["pixel_values_videos"].dtype == np.float32
    assert batch["video_position_ids"].shape == (8, 630, 2) and batch["video_position_ids"].dtype == np.int64
    assert batch["num_frames_per_video"] == [3, 5]
    tokens = budget_math.image_soft_tokens(HEIGHT, WIDTH, 70)
    assert batch["num_soft_tokens_per_video"] == [tokens, tokens]  # per frame, as the reference returns it
    parts = [collate_images(list(v.frames)) for v in (first, second)]
    np.testing.assert_array_equal(batch["pixel_values_videos"], np.concatenate([p["pixel_values"] for p in parts]))
    np.testing.assert_array_equal(batch["video_position_ids"], np.concatenate([p["image_position_ids"] for p in parts]))


def test_collate_videos_of_mixed_budgets_pads_to_the_largest():
    small = preprocess_video(encode_video(4), 2, 70)
    large = preprocess_video(encode_video(4), 2, 280)
    batch = collate_videos([small, large])
    assert batch["pixel_values_videos"].shape == (4, 2520, 768)
    rows = small.frames[0].num_patches
    assert (batch["video_position_ids"][:2, rows:] == -1).all() and (batch["pixel_values_videos"][:2, rows:] == 0).all()


def test_collate_no_videos():
    batch = collate_videos([])
    assert batch["pixel_values_videos"].shape[0] == 0 and batch["num_frames_per_video"] == []


def gradient_frame(number: int) -> np.ndarray:
    """A numbered frame over a smooth colour gradient, so that resampling filters differ somewhere."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([x * 4, y * 5, (x + y) * 2 + number], axis=-1).astype(np.uint8)
    return np.where(numbered_frame(number) > 0, 255 - base, base)


@pytest.mark.parametrize("budget", [70, 280])
def test_matches_reference_video_processor(budget, reference, video_utils):
    """Against ``Gemma4VideoProcessor`` (needs torchvision): same sampling, shapes, positions, counts; pixels
    differ only by the resampling filter (Pillow bicubic vs torchvision bicubic with antialiasing)."""
    pytest.importorskip("torchvision")
    data = encode_video(37, frame=gradient_frame)
    every = load_video(data, 37)
    theirs = reference.Gemma4VideoProcessor(max_soft_tokens=budget)(
        videos=[every.frames],
        video_metadata=[video_utils.VideoMetadata(total_num_frames=every.total_frames, fps=every.fps)],
        num_frames=8,
        return_tensors="np",
        return_metadata=True,
    )
    video = preprocess_video(data, 8, budget)
    ours = collate_videos([video])
    assert list(theirs["video_metadata"][0].frames_indices) == [i * 37 // 8 for i in range(8)]
    assert list(theirs["num_frames_per_video"]) == ours["num_frames_per_video"]
    assert list(theirs["num_soft_tokens_per_video"]) == ours["num_soft_tokens_per_video"]
    np.testing.assert_array_equal(theirs["video_position_ids"], ours["video_position_ids"])
    assert theirs["pixel_values_videos"].shape == ours["pixel_values_videos"].shape
    # Both filters are Pillow's a = -0.5 bicubic; only the uint8 rounding differs (measured: ≤ 2/255, mean 2e-5).
    np.testing.assert_allclose(ours["pixel_values_videos"], theirs["pixel_values_videos"], rtol=0, atol=2 / 255 + 1e-6)
    assert np.abs(theirs["pixel_values_videos"] - ours["pixel_values_videos"]).mean() < 1e-4


# ------------------------------------------------------------------------------------------------ limits, files


def test_num_frames_over_the_limit_is_refused_before_opening():
    """``num_frames: 100000`` on an 11 MB video took 6.4 GB; now the request itself is refused."""
    with pytest.raises(errors.VideoTooLargeError) as exc_info:
        load_video(b"not even read", 100_000, name="clip")
    check_error(exc_info, "clip")
    assert "256" in str(exc_info.value) and "MediaLimits.max_video_frames" in str(exc_info.value)
    from preprocess.limits import MediaLimits

    with pytest.raises(errors.VideoTooLargeError):
        load_video(b"x", 9, limits=MediaLimits(max_video_frames=8))


def test_sampled_pixels_limit_is_checked_from_the_header(video37, monkeypatch):
    from preprocess.limits import MediaLimits

    limits = MediaLimits(max_video_pixels=8 * WIDTH * HEIGHT)
    assert load_video(video37, 8, limits=limits).num_frames == 8
    monkeypatch.setattr(video_io, "_decode", lambda *a, **k: pytest.fail("decoded past the limit"))
    with pytest.raises(errors.VideoTooLargeError) as exc_info:
        load_video(video37, 9, limits=limits, name="clip")
    check_error(exc_info, "clip")
    assert "max_video_pixels" in str(exc_info.value) and f"{WIDTH}x{HEIGHT}" in str(exc_info.value)
    with pytest.raises(errors.VideoTooLargeError, match="max_video_frame_pixels"):
        load_video(video37, 1, limits=MediaLimits(max_video_frame_pixels=WIDTH * HEIGHT - 1))


def test_frames_larger_than_the_header_said_are_stopped_while_decoding(video37, monkeypatch):
    """The header check can be fooled (frame size changes mid-stream); every kept frame counts against the limit."""
    from preprocess.limits import MediaLimits

    header_check = video_io._header
    monkeypatch.setattr(
        video_io, "_header", lambda fp, what, n, limits: header_check(fp, what, n, MediaLimits(max_video_pixels=None))
    )
    with pytest.raises(errors.VideoTooLargeError, match="as decoded"):
        load_video(video37, 8, limits=MediaLimits(max_video_pixels=3 * WIDTH * HEIGHT))


def test_probe_video_reads_only_headers(video37, monkeypatch):
    monkeypatch.setattr(video_io, "_decode", lambda *a, **k: pytest.fail("probe decoded frames"))
    info = video_io.probe_video(video37, 8)
    assert (info.width, info.height, info.frames, info.sampled, info.fps) == (WIDTH, HEIGHT, 37, 8, 25.0)
    assert video_io.probe_video(video37, 100).sampled == 37


def still(fmt: str, frames: int = 1) -> bytes:
    from PIL import Image

    pictures = [Image.fromarray(numbered_frame(i + 1)) for i in range(frames)]
    buf = io.BytesIO()
    pictures[0].save(buf, fmt, save_all=frames > 1, append_images=pictures[1:])
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "TIFF", "GIF"])
def test_still_image_is_not_a_video(fmt):
    with pytest.raises(errors.StillImageAsVideoError) as exc_info:
        load_video(still(fmt), name="photo")
    check_error(exc_info, "photo")
    assert "image part" in str(exc_info.value)
    assert issubclass(errors.StillImageAsVideoError, errors.InvalidVideoError)


def test_animated_gif_is_a_video():
    video = load_video(still("GIF", 3), 3)
    assert video.num_frames == 3 and [frame_number(f) for f in video.frames] == [1, 2, 3]


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs")
def test_fifo_and_symlink_loop_are_refused(tmp_path):
    import os

    with unblocking_fifo(tmp_path / "pipe.mp4") as path:
        for load in (load_video, video_io.probe_video):
            with pytest.raises(errors.VideoNotAFileError, match="FIFO") as exc_info:
                load(path)
            check_error(exc_info, f"video file {str(path)!r}")
    loop = tmp_path / "loop.mp4"
    os.symlink(loop, loop)
    with pytest.raises(errors.VideoNotAFileError, match="symbolic-link loop"):
        load_video(loop)
    with pytest.raises(IsADirectoryError):
        load_video(tmp_path)
