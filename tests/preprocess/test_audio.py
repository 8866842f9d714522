"""Audio features, token counts and chunking: parity with the reference extractor, properties, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from preprocess import budget as B
from preprocess import errors
from preprocess.audio import chunk_audio, log_mel, log_mel_batch, mel_filterbank

SR = 16_000


@pytest.fixture(scope="module")
def reference_features(reference):
    """The reference extractor through its list form (its bare 1-D call path squeezes the wrong axis).
    Module-scoped, so Hypothesis examples share it."""
    default = reference.Gemma4AudioFeatureExtractor()

    def extract(waveforms: list[np.ndarray], **kwargs) -> tuple[np.ndarray, np.ndarray]:
        extractor = reference.Gemma4AudioFeatureExtractor(**kwargs) if kwargs else default
        out = extractor(waveforms, return_tensors="np")
        return out["input_features"], out["input_features_mask"]

    return extract


def signal(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    if kind == "noise":
        x = rng.uniform(-1, 1, n)
    elif kind == "tone":  # a full-scale pure tone: near-silent bands next to a loud one
        x = np.sin(2 * np.pi * rng.uniform(50, 7900) * t + rng.uniform(0, 6.3))
    elif kind == "speechlike":
        f0 = rng.uniform(90, 250)
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 20)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
        x = 0.3 * x + 0.01 * rng.standard_normal(n)
    elif kind == "silence":
        x = np.zeros(n)
    else:  # clicks
        x = (np.arange(n) % int(rng.integers(100, 4000)) == 0).astype(float)
    return x.astype(np.float32)


KINDS = st.sampled_from(["noise", "tone", "speechlike", "silence", "clicks"])
LENGTHS = st.one_of(
    st.integers(B.AUDIO_MIN_SAMPLES, 2_000),
    st.integers(2_000, B.AUDIO_MAX_SAMPLES),
    st.sampled_from([161, 320, 321, 481, 16_000, 479_999, B.AUDIO_MAX_SAMPLES]),
)


def assert_close(ours_f, ours_m, ref_f, ref_m, tol=1e-4):
    assert ours_f.shape == ref_f.shape and ours_f.dtype == np.float32
    assert np.array_equal(ours_m, ref_m)
    np.testing.assert_allclose(ours_f[ref_m], ref_f[ref_m], rtol=0, atol=tol)
    assert not ours_f[~ours_m].any()  # invalid frames are exactly zero


# --- features ----------------------------------------------------------------------------------------------


def test_filterbank_equals_reference(reference):
    assert mel_filterbank().shape == (257, 128)
    np.testing.assert_allclose(
        mel_filterbank(), reference.Gemma4AudioFeatureExtractor().mel_filters, rtol=0, atol=1e-12
    )


@settings(max_examples=40)
@given(LENGTHS, KINDS, st.integers(0, 2**32 - 1))
def test_single_parity(reference_features, n, kind, seed):
    x = signal(kind, n, seed)
    features, mask = log_mel(x)
    ref_f, ref_m = reference_features([x])
    assert_close(features, mask, ref_f[0], ref_m[0])


@settings(max_examples=15)
@given(st.lists(st.tuples(LENGTHS, KINDS), min_size=1, max_size=4), st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_batch_parity(reference_features, items, seed, threads):
    xs = [signal(kind, n, seed + i) for i, (n, kind) in enumerate(items)]
    features, mask = log_mel_batch(xs, threads=threads)
    ref_f, ref_m = reference_features(xs)
    assert isinstance(features, torch.Tensor) and features.dtype == torch.float32 and mask.dtype == torch.bool
    assert_close(features.numpy(), mask.numpy(), ref_f, ref_m)


@settings(max_examples=20)
@given(LENGTHS, st.sampled_from(["noise", "speechlike", "silence", "clicks"]), st.integers(0, 2**32 - 1))
def test_fast_mode_parity_on_broadband_signals(reference_features, n, kind, seed):
    """Fast mode (torch FFT) matches within 1e-4 wherever no band is near-silent beside a loud one."""
    x = signal(kind, n, seed)
    features, mask = log_mel(x, exact=False)
    ref_f, ref_m = reference_features([x])
    assert_close(features, mask, ref_f[0], ref_m[0])


def test_fast_mode_on_pure_tone_is_close_but_not_exact(reference_features):
    x = signal("tone", 48_000, seed=3)
    features, mask = log_mel(x, exact=False)
    ref_f, ref_m = reference_features([x])
    # The README's bound for fast mode on a full-scale pure tone; measured 6.0e-3 here (2.9e-3–7.3e-3 over seeds 0–11).
    assert_close(features, mask, ref_f[0], ref_m[0], tol=1e-2)


def test_per_bin_normalisation(reference_features):
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=128), rng.uniform(0.5, 2.0, size=128)
    x = signal("speechlike", 20_000, seed=1)
    features, mask = log_mel(x, per_bin_mean=mean, per_bin_stddev=std)
    ref_f, ref_m = reference_features([x], per_bin_mean=list(mean), per_bin_stddev=list(std))
    assert_close(features, mask, ref_f[0], ref_m[0])


def test_batched_equals_one_at_a_time_and_input_untouched():
    xs = [signal("noise", n, i) for i, n in enumerate([5_000, 33_333, 161])]
    copies = [x.copy() for x in xs]
    features, mask = log_mel_batch(xs)
    for i, x in enumerate(xs):
        single_f, single_m = log_mel_batch([x])
        frames = single_f.shape[1]
        assert torch.equal(mask[i, :frames], single_m[0]) and not mask[i, frames:].any()
        torch.testing.assert_close(features[i, :frames], single_f[0], rtol=0, atol=1e-6)
        assert np.array_equal(x, copies[i])


def test_empty_batch_and_tensor_input():
    features, mask = log_mel_batch([])
    assert features.shape == (0, 0, 128) and mask.shape == (0, 0)
    x = signal("noise", 4_000, 0)
    from_tensor, _ = log_mel(torch.from_numpy(x.astype(np.float64)))
    from_array, _ = log_mel(x)
    np.testing.assert_allclose(from_tensor, from_array, rtol=0, atol=1e-6)


def test_mask_matches_valid_frame_formula():
    for n in [161, 320, 321, 480, 481, 16_000, 123_457]:
        _, mask = log_mel(np.zeros(n, np.float32))
        assert mask.sum() == B.audio_valid_frames(n)
        assert mask[: mask.sum()].all()  # a prefix


@pytest.mark.parametrize(
    ("waveform", "exc", "message"),
    [
        (np.zeros(160, np.float32), errors.AudioTooShortError, "160 samples"),
        (np.zeros(480_001, np.float32), errors.AudioTooLongError, "chunk_audio"),
        (np.array([0.0] * 500 + [np.nan], np.float32), errors.NonFiniteAudioError, "index 500"),
        (np.zeros((2, 500), np.float32), errors.UnsupportedAudioError, "1-D"),
        (np.zeros(500, np.int16), errors.UnsupportedAudioError, "float samples"),
        ([0.0] * 500, errors.UnsupportedAudioError, "numpy array or torch tensor"),
    ],
)
def test_bad_waveforms(waveform, exc, message):
    with pytest.raises(exc, match=message) as info:
        log_mel(waveform, name="clip-7")
    assert isinstance(info.value, ValueError) and str(info.value).startswith("clip-7: ")


def test_bad_batch_names_the_element():
    with pytest.raises(errors.AudioTooShortError, match=r"^waveforms\[1\]: "):
        log_mel_batch([np.zeros(1000, np.float32), np.zeros(10, np.float32)])


def test_bad_normalisers():
    x = np.zeros(1000, np.float32)
    with pytest.raises(ValueError, match="128 values"):
        log_mel(x, per_bin_mean=[0.0] * 3)
    with pytest.raises(ValueError, match="positive"):
        log_mel(x, per_bin_stddev=[0.0] * 128)


# --- token counts ------------------------------------------------------------------------------------------


def tokens_by_mask_arithmetic(mask: np.ndarray) -> int:
    """Independent: the reference processor's two stride-2 reductions applied to a frame mask."""
    for _ in range(2):
        t_out = (len(mask) - 1) // 2 + 1
        mask = mask[::2][:t_out]
    return int(mask.sum())


@settings(max_examples=300)
@given(st.integers(B.AUDIO_MIN_SAMPLES, B.AUDIO_MAX_SAMPLES), st.integers(0, 127))
def test_audio_tokens_match_mask_arithmetic(n, pad):
    frames = (n + pad + 160 - 321) // 160 + 1  # padding frames after the valid prefix
    valid = np.arange(frames) * 160 + 160 < n
    assert B.audio_soft_tokens(n) == tokens_by_mask_arithmetic(valid)
    assert B.audio_valid_frames(n) == int(valid.sum())


@settings(max_examples=25)
@given(LENGTHS)
def test_audio_tokens_match_reference_mask(reference_features, n):
    _, ref_m = reference_features([np.zeros(n, np.float32)])
    assert B.audio_soft_tokens(n) == tokens_by_mask_arithmetic(ref_m[0])


def test_audio_token_examples_and_errors():
    assert B.audio_soft_tokens(16_000) == 25 and B.audio_soft_tokens(480_000) == 750  # spec §4.7
    assert B.audio_soft_tokens(161) == 1
    with pytest.raises(ValueError, match="no valid feature frame"):
        B.audio_soft_tokens(160)
    with pytest.raises(ValueError, match="chunk_audio"):
        B.audio_soft_tokens(480_001)
    with pytest.raises(TypeError):
        B.audio_soft_tokens(16000.0)


# --- chunking ----------------------------------------------------------------------------------------------


@settings(max_examples=40)
@given(
    st.integers(B.AUDIO_MIN_SAMPLES, 2_000_000),
    st.integers(0, 2**32 - 1),
    st.sampled_from([B.AUDIO_MAX_SAMPLES, 100_000, 20_000]),
)
@pytest.mark.slow
def test_chunks_tile_the_input_exactly(n, seed, max_samples):
    x = signal("speechlike", n, seed)
    plan = chunk_audio(x, max_samples=max_samples, search_samples=min(16_000, max_samples - 161))
    pieces = plan.split(x)
    assert np.array_equal(np.concatenate(pieces), x)  # nothing dropped or repeated
    assert plan.segments[0].start == 0 and plan.segments[-1].end == n and plan.dropped_samples == 0
    for a, b in zip(plan.segments, plan.segments[1:], strict=False):
        assert a.end == b.start
    assert all(B.AUDIO_MIN_SAMPLES <= s.num_samples <= max_samples for s in plan.segments)
    assert plan.num_tokens == sum(B.audio_soft_tokens(s.num_samples) for s in plan.segments)
    # Every cut but the last lies within the search window before its limit.
    for s in plan.segments[:-1]:
        assert s.num_samples >= max_samples - min(16_000, max_samples - 161) - 161


def test_cut_lands_in_the_quiet_gap():
    x = signal("speechlike", 40 * SR, seed=0)
    x[int(29.4 * SR) : int(29.5 * SR)] = 0.0  # a 100 ms pause inside the last second before 30 s
    plan = chunk_audio(x)
    cut = plan.segments[0].end
    assert int(29.4 * SR) + 80 <= cut <= int(29.5 * SR) - 80
    assert plan.segments[0].end_s == cut / SR and plan.segments[1].start_s == cut / SR


def test_short_tail_is_never_a_tokenless_segment():
    x = signal("noise", B.AUDIO_MAX_SAMPLES + 50, seed=0)
    plan = chunk_audio(x)
    assert len(plan.segments) == 2 and plan.segments[1].num_samples >= B.AUDIO_MIN_SAMPLES


def test_max_duration_reports_what_was_cut(caplog):
    x = signal("noise", 50 * SR, seed=0)
    plan = chunk_audio(x, max_duration_s=40.0, name="talk.wav")
    assert plan.dropped_samples == 10 * SR and plan.dropped_s == 10.0
    assert plan.segments[-1].end == 40 * SR and plan.total_samples == 50 * SR
    assert "talk.wav" in caplog.text and "40.00 s of 50.00 s" in caplog.text
    assert np.array_equal(np.concatenate(plan.split(x)), x[: 40 * SR])


def test_chunk_errors():
    with pytest.raises(errors.AudioTooShortError, match="^a.wav: 100 samples"):
        chunk_audio(np.zeros(100, np.float32), name="a.wav")
    with pytest.raises(errors.NonFiniteAudioError, match="index 3"):
        chunk_audio(np.array([0, 0, 0, np.inf] + [0] * 500, np.float32))
    with pytest.raises(errors.UnsupportedAudioError, match="1-D"):
        chunk_audio(np.zeros((2, 1000), np.float32))
    with pytest.raises(ValueError, match="max_duration_s"):
        chunk_audio(np.zeros(1000, np.float32), max_duration_s=0)
    with pytest.raises(ValueError, match="max_samples"):
        chunk_audio(np.zeros(1000, np.float32), max_samples=500_000)
    with pytest.raises(ValueError, match="plan was made for"):
        chunk_audio(np.zeros(1000, np.float32)).split(np.zeros(999, np.float32))


@pytest.mark.parametrize("threads", [None, 1, 3])
def test_log_mel_batch_leaves_the_thread_count_alone(monkeypatch, threads):
    """Thread counts are the entry points' to set: the library never calls torch.set_num_threads."""
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    before = torch.get_num_threads()
    xs = [np.random.default_rng(i).standard_normal(16_000 * (i + 1)).astype(np.float32) * 0.1 for i in range(3)]
    batched, _ = log_mel_batch(xs, threads=threads)
    assert calls == [] and torch.get_num_threads() == before
    alone = [log_mel(x)[0] for x in xs]
    for row, features in zip(batched, alone, strict=True):
        torch.testing.assert_close(row[: len(features)], torch.as_tensor(features), rtol=0, atol=0)
