"""Tests of ``preprocess.audio_io``: every source kind and format becomes 16 kHz mono float32 samples, bad input
raises a ``ValueError`` subclass naming the input, and inputs are never modified or aliased.

Oracles: exact integer-grid samples written with soundfile (lossless formats), closed-form PCM scaling, explicit
channel means, ``torchaudio.functional.resample`` itself, FFT peak and RMS level of a 1 kHz tone (resampling,
lossy formats), and HF ``transformers.audio_utils.load_audio(backend="torchaudio")`` (test-only parity oracle).
"""

from __future__ import annotations

import io
import math
import pathlib

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
import torchaudio.functional
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from preprocess import errors
from preprocess.audio_io import SAMPLE_RATE, describe_audio_source, load_audio

# ------------------------------------------------------------------------------------------------ helpers


def tone(rate: int, seconds: float = 1.0, freq: float = 1000.0, amplitude: float = 0.5) -> np.ndarray:
    """(N,) float64 sine at ``freq`` Hz sampled at ``rate``."""
    return amplitude * np.sin(2 * np.pi * freq * np.arange(round(rate * seconds)) / rate)


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    """Encode ``(N,)`` or ``(N, C)`` samples (soundfile's frames-first layout) and return the bytes."""
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def write(path: pathlib.Path, samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16"):
    path.write_bytes(encode(samples, rate, fmt, subtype))
    return path


def check_output(out: np.ndarray) -> np.ndarray:
    """Assert the output contract: a new 1-D float32 C-contiguous writeable array."""
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32 and out.ndim == 1
    assert out.flags.c_contiguous and out.flags.owndata and out.flags.writeable
    return out


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(samples, dtype=np.float64) ** 2)))


def exact_length(n: int, rate: int) -> int:
    return -(-n * SAMPLE_RATE // rate)  # ceil(n · 16000 / rate) in integers


def grid(bits: int, n: int = 4000, seed: int = 0, signed: bool = True) -> np.ndarray:
    """(n,) integers covering the full range of ``bits``-bit PCM, both extremes included."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    values = np.random.default_rng(seed).integers(low, high, n, endpoint=True, dtype=np.int64)
    values[:2] = low, high
    return values


class NonSeekable(io.RawIOBase):
    """A pipe-like binary stream: readable, not seekable."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._buf.readinto(b)


def mp3_writable() -> str | None:
    """None when libsndfile here can write (and read back) MP3, else the reason it cannot."""
    if "MP3" not in soundfile.available_formats():
        return "libsndfile was built without MP3"
    try:
        data = encode(tone(16000, 0.1), 16000, "MP3", "MPEG_LAYER_III")
        soundfile.read(io.BytesIO(data))
    except Exception as exc:  # e.g. built with the mpg123 decoder but without the LAME encoder
        return f"libsndfile cannot write MP3 here: {exc}"
    return None


MP3_SKIP = mp3_writable()
PCM_16_SECOND = grid(16, 16000, seed=1)  # (16000,) int64 on the 16-bit grid: one second at 16 kHz
WAV_16 = encode(PCM_16_SECOND.astype(np.int16), 16000)
WAV_16_VALUES = (PCM_16_SECOND / 32768).astype(np.float32)

# ------------------------------------------------------------------------------------------------ sources


@pytest.mark.parametrize("as_type", [str, pathlib.Path])
def test_path(tmp_path, as_type):
    path = tmp_path / "clip.wav"
    path.write_bytes(WAV_16)
    out = check_output(load_audio(as_type(path)))
    np.testing.assert_array_equal(out, WAV_16_VALUES)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_like(wrap):
    data = wrap(WAV_16)
    out = check_output(load_audio(data))
    np.testing.assert_array_equal(out, WAV_16_VALUES)
    assert bytes(data) == WAV_16


def test_seekable_file_object_reads_from_its_position_and_restores_it():
    fp = io.BytesIO(b"junk!" + WAV_16)
    fp.seek(5)
    out = load_audio(fp)
    np.testing.assert_array_equal(out, WAV_16_VALUES)
    assert fp.tell() == 5


def test_real_file_object_at_an_offset(tmp_path):
    path = tmp_path / "prefixed.bin"
    path.write_bytes(b"\x00" * 7 + WAV_16)
    with open(path, "rb") as fp:
        fp.seek(7)
        out = load_audio(fp)
        assert fp.tell() == 7
    np.testing.assert_array_equal(out, WAV_16_VALUES)


def test_position_restored_when_decoding_fails():
    fp = io.BytesIO(b"header" + b"not audio at all " * 10)
    fp.seek(6)
    with pytest.raises(errors.CorruptAudioError):
        load_audio(fp)
    assert fp.tell() == 6


def test_non_seekable_stream():
    stream = NonSeekable(WAV_16)
    assert not stream.seekable()
    np.testing.assert_array_equal(load_audio(stream), WAV_16_VALUES)


def test_buffered_non_seekable_stream():
    np.testing.assert_array_equal(load_audio(io.BufferedReader(NonSeekable(WAV_16))), WAV_16_VALUES)


FLOAT_DTYPES = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_float_array_keeps_values(dtype):
    x = np.random.default_rng(0).uniform(-1.5, 1.5, 1000).astype(dtype)  # outside [-1, 1] too: no clipping
    out = check_output(load_audio(x, 16000))
    np.testing.assert_array_equal(out, x.astype(np.float32))


# dtype → (offset, scale) as libsndfile reads integer PCM: value = (x - offset) / scale
INT_SCALES = {np.int8: (0, 128), np.uint8: (128, 128), np.int16: (0, 32768), np.int32: (0, 2**31)}


@pytest.mark.parametrize("dtype", list(INT_SCALES))
def test_integer_array_full_range(dtype):
    info = np.iinfo(dtype)
    x = np.random.default_rng(0).integers(info.min, info.max, 2000, endpoint=True, dtype=np.int64).astype(dtype)
    x[:2] = info.min, info.max
    offset, scale = INT_SCALES[dtype]
    out = check_output(load_audio(x, 16000))
    np.testing.assert_array_equal(out, ((x.astype(np.float64) - offset) / scale).astype(np.float32))
    assert -1.0 <= out.min() and out.max() <= 1.0  # int32's largest value rounds to 1.0f


@pytest.mark.parametrize(
    "values, dtype, expected",
    [
        ([-32768, 16384, 0, 32767, -1], np.int16, [-1.0, 0.5, 0.0, 32767 / 32768, -1 / 32768]),
        ([-(2**31), 2**30, 0, 2**31 - 1], np.int32, [-1.0, 0.5, 0.0, 1.0]),  # (2^31-1)/2^31 rounds to 1.0f
        ([-128, 64, 0, 127], np.int8, [-1.0, 0.5, 0.0, 127 / 128]),
        ([0, 128, 192, 255, 64], np.uint8, [-1.0, 0.0, 0.5, 127 / 128, -0.5]),
    ],
)
def test_integer_scaling_exact(values, dtype, expected):
    out = load_audio(np.array(values, dtype=dtype), 16000)
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.float32))


@settings(deadline=None, max_examples=40)
@given(
    data=st.data(),
    dtype=st.sampled_from([np.int8, np.uint8, np.int16, np.int32]),
    channels=st.integers(1, 3),
)
def test_integer_scaling_property(data, dtype, channels):
    shape = (channels, data.draw(st.integers(1, 200)))
    x = data.draw(hnp.arrays(dtype, shape))
    offset, scale = INT_SCALES[dtype]
    reference = ((x.astype(np.float64) - offset) / scale).astype(np.float32)  # exact in float64
    expected = reference[0] if channels == 1 else reference.mean(axis=0, dtype=np.float64)
    out = load_audio(x, 16000)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    if channels == 1:
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "tensor",
    [
        torch.linspace(-1, 1, 1000),
        torch.linspace(-1, 1, 1000, dtype=torch.float64),
        torch.linspace(-1, 1, 1000, dtype=torch.float16),
        torch.linspace(-1, 1, 1000, dtype=torch.bfloat16),
        torch.linspace(-1, 1, 1000).requires_grad_(),
        torch.linspace(-1, 1, 2000).reshape(2, 1000),
    ],
    ids=["float32", "float64", "float16", "bfloat16", "requires_grad", "stereo"],
)
def test_float_tensor(tensor):
    before = tensor.detach().clone()
    out = check_output(load_audio(tensor, 16000))
    expected = before.double().numpy()
    expected = expected.mean(axis=0) if expected.ndim == 2 else expected
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    assert torch.equal(tensor.detach(), before)


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int8, torch.uint8])
def test_integer_tensor(dtype):
    info = torch.iinfo(dtype)
    t = torch.tensor([info.min, 0, info.max], dtype=dtype)
    np_dtype = {torch.int16: np.int16, torch.int32: np.int32, torch.int8: np.int8, torch.uint8: np.uint8}[dtype]
    np.testing.assert_array_equal(load_audio(t, 16000), load_audio(t.numpy().astype(np_dtype), 16000))


def test_int16_tensor_at_48k_matches_array():
    x = (tone(48000) * 32767).astype(np.int16)
    np.testing.assert_array_equal(load_audio(torch.from_numpy(x.copy()), 48000), load_audio(x, 48000))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensor():
    x = torch.linspace(-1, 1, 4410, dtype=torch.float64)
    out = load_audio(x.cuda(), 44100)
    np.testing.assert_array_equal(out, load_audio(x, 44100))


def test_numpy_integer_sample_rate():
    x = tone(44100).astype(np.float32)
    expected = load_audio(x, 44100)
    for rate in (np.int64(44100), np.int32(44100), np.uint16(44100)):
        np.testing.assert_array_equal(load_audio(x, rate), expected)


def test_non_contiguous_and_big_endian_arrays():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 2000))
    strided = x[:, ::2]
    np.testing.assert_array_equal(load_audio(strided, 16000), strided.mean(axis=0).astype(np.float32))
    big = (x[0] * 30000).astype(">i2")
    np.testing.assert_array_equal(load_audio(big, 16000), load_audio(big.astype(np.int16), 16000))


# ------------------------------------------------------------------------------------------------ formats

# (format, subtype, bits of the integer grid the samples are drawn from; None: any float32 value)
LOSSLESS = [
    ("WAV", "PCM_U8", 8),
    ("WAV", "PCM_16", 16),
    ("WAV", "PCM_24", 24),
    ("WAV", "PCM_32", 32),
    ("WAV", "FLOAT", None),
    ("WAV", "DOUBLE", None),
    ("FLAC", "PCM_S8", 8),
    ("FLAC", "PCM_16", 16),
    ("FLAC", "PCM_24", 24),
    ("AIFF", "PCM_16", 16),
    ("AU", "PCM_24", 24),
    ("W64", "PCM_32", 32),
    ("CAF", "FLOAT", None),
]


@pytest.mark.parametrize("fmt, subtype, bits", LOSSLESS, ids=[f"{f}-{s}" for f, s, _ in LOSSLESS])
@pytest.mark.parametrize("channels", [1, 2])
def test_lossless_round_trip(tmp_path, fmt, subtype, bits, channels):
    rng = np.random.default_rng(bits or 0)
    if bits is None:
        samples = rng.uniform(-1, 1, (8000, channels)).astype(np.float32)  # (N, C)
        values = samples.astype(np.float64)
    else:
        ints = np.stack([grid(bits, 8000, seed=c) for c in range(channels)], axis=1)  # (N, C)
        values = ints / 2.0 ** (bits - 1)  # exact in float64; the file stores exactly these
        samples = values
    path = write(tmp_path / f"clip.{fmt.lower()}", samples, 16000, fmt, subtype)
    # soundfile reads float32; a 32-bit value rounds to float32 once (the format's quantisation at float32)
    per_channel = values.astype(np.float32)
    expected = per_channel[:, 0] if channels == 1 else (per_channel[:, 0] + per_channel[:, 1]) / np.float32(2)
    out = check_output(load_audio(path))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), out)


LOSSY = [
    pytest.param("OGG", "VORBIS", 16000, id="ogg-vorbis"),
    pytest.param("OGG", "OPUS", 48000, id="ogg-opus-48k"),
    pytest.param(
        "MP3", "MPEG_LAYER_III", 16000, id="mp3-16k", marks=pytest.mark.skipif(bool(MP3_SKIP), reason=str(MP3_SKIP))
    ),
    pytest.param(
        "MP3", "MPEG_LAYER_III", 44100, id="mp3-44k", marks=pytest.mark.skipif(bool(MP3_SKIP), reason=str(MP3_SKIP))
    ),
]


@pytest.mark.parametrize("fmt, subtype, rate", LOSSY)
def test_lossy_tone(fmt, subtype, rate):
    data = encode(tone(rate), rate, fmt, subtype)
    out = check_output(load_audio(data))
    reference = tone(16000)
    assert len(out) == len(reference)  # libsndfile removes the codecs' encoder delay and padding
    inner, ref_inner = out[1600:-1600], reference[1600:-1600]
    assert abs(dominant_frequency(out, 16000) - 1000) <= 5
    assert rms(inner) == pytest.approx(rms(ref_inner), rel=0.05)
    assert rms(inner - ref_inner) < 0.1 * rms(ref_inner)


def test_truncated_wav_decodes_the_samples_that_are_there():
    """Documents a libsndfile behaviour this module cannot detect: a WAV cut inside its sample data is not an
    error; the header's data length is overridden by the file length."""
    out = load_audio(WAV_16[: 44 + 2 * 1000 + 1])  # 44-byte header, 1000 whole samples and half of one more
    np.testing.assert_array_equal(out, WAV_16_VALUES[:1000])


# ------------------------------------------------------------------------------------------------ downmix


def test_stereo_file_is_averaged(tmp_path):
    left, right = grid(16, 5000, seed=2), grid(16, 5000, seed=3)
    path = write(tmp_path / "stereo.wav", np.stack([left, right], axis=1).astype(np.int16), 16000)
    expected = (left.astype(np.float32) / 32768 + right.astype(np.float32) / 32768) / np.float32(2)
    np.testing.assert_array_equal(load_audio(path), expected)


@pytest.mark.parametrize("channels", [2, 3, 6, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multichannel_array_is_averaged(channels, dtype):
    x = np.random.default_rng(channels).uniform(-1, 1, (channels, 3000)).astype(dtype)
    explicit = x[0].astype(np.float64)
    for c in range(1, channels):
        explicit = explicit + x[c]
    explicit /= channels
    np.testing.assert_allclose(load_audio(x, 16000), explicit.astype(np.float32), rtol=0, atol=2e-7)


def test_multichannel_file_with_many_channels(tmp_path):
    """The 16-row guard is for arrays only (a transposed array); a file states its own layout."""
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2000, 20)).astype(np.float32)  # (N, C)
    path = write(tmp_path / "many.wav", x, 16000, "WAV", "FLOAT")
    np.testing.assert_allclose(load_audio(path), x.astype(np.float64).mean(axis=1), rtol=0, atol=1e-7)


def test_mono_2d_equals_1d():
    x = np.random.default_rng(0).uniform(-1, 1, 3000).astype(np.float32)
    np.testing.assert_array_equal(load_audio(x[None], 22050), load_audio(x, 22050))


# ------------------------------------------------------------------------------------------------ resampling


@pytest.mark.parametrize("rate", [44100, 48000, 8000, 22050, 11025, 32000, 96000])
@pytest.mark.parametrize("as_file", [False, True], ids=["array", "wav-float"])
def test_resampled_tone_keeps_frequency_and_level(rate, as_file):
    x = tone(rate, seconds=1.0)
    out = check_output(load_audio(encode(x, rate, "WAV", "FLOAT")) if as_file else load_audio(x, rate))
    assert len(out) == exact_length(len(x), rate) == 16000
    assert abs(dominant_frequency(out, 16000) - 1000) <= 5
    edge = 1600  # 0.1 s: far beyond the filter's reach (a few dozen samples)
    inner = out[edge : edge + 16 * 800]  # 800 whole periods of 1 kHz at 16 kHz
    reference = x[round(edge * rate / 16000) : round(edge * rate / 16000) + rate * 800 // 1000]
    assert rms(inner) == pytest.approx(rms(reference), rel=0.01)  # 1 % ≈ 0.09 dB


@pytest.mark.parametrize("rate", [44100, 48000, 8000, 22050])
def test_resampling_is_torchaudio_with_defaults(rate):
    x = np.random.default_rng(rate).uniform(-1, 1, (2, rate // 2)).astype(np.float32)
    mono = torch.from_numpy(x).mean(dim=0)
    expected = torchaudio.functional.resample(mono, rate, 16000)  # defaults: Hann sinc, width 6, rolloff 0.99
    np.testing.assert_array_equal(load_audio(x, rate), expected.numpy())


def test_float64_input_is_resampled_in_float64():
    x = np.random.default_rng(0).uniform(-1, 1, 44100)
    expected = torchaudio.functional.resample(torch.from_numpy(x), 44100, 16000).numpy().astype(np.float32)
    np.testing.assert_array_equal(load_audio(x, 44100), expected)
    assert not np.array_equal(load_audio(x.astype(np.float32), 44100), expected)  # the precision is used


def test_no_resampling_at_16k_returns_identical_values():
    x = np.random.default_rng(0).standard_normal(12345).astype(np.float32)
    out = load_audio(x, 16000)
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(load_audio(x.astype(np.float64), 16000), x)


def test_torchaudio_length_rule_and_our_fix():
    """torchaudio cuts at ceil(new·n/orig) evaluated in float32 (torch.as_tensor of a Python float), which is one
    short for n = 180 697 at 44.1 kHz; we return ceil(n·16000/rate) exactly."""
    n, rate = 180_697, 44100
    exact = exact_length(n, rate)
    float32_rule = int(np.ceil(np.float32(160 * n / 441)))
    assert (exact, float32_rule) == (65_560, 65_559)
    x = np.random.default_rng(0).uniform(-1, 1, n).astype(np.float32)
    plain = torchaudio.functional.resample(torch.from_numpy(x), rate, 16000).numpy()
    assert len(plain) == float32_rule  # torchaudio's actual rule (canary: fails if torchaudio changes it)
    out = load_audio(x, rate)
    assert len(out) == exact
    # The re-run on the zero-padded clip may sum in another order: equal up to float32 rounding.
    np.testing.assert_allclose(out[: len(plain)], plain, rtol=0, atol=1e-6)


def torchaudio_short_lengths(rate: int, limit: int = 400_000, count: int = 3) -> list[int]:
    """The first ``count`` input lengths below ``limit`` for which torchaudio's float32 ceiling is too small."""
    g = math.gcd(rate, SAMPLE_RATE)
    orig, new = rate // g, SAMPLE_RATE // g
    n = np.arange(1, limit, dtype=np.int64)
    float32_rule = np.ceil((new * n / orig).astype(np.float32)).astype(np.int64)
    return n[float32_rule < -(-n * new // orig)][:count].tolist()


@pytest.mark.parametrize(
    "rate, n", [(rate, n) for rate in (44100, 22050, 11025) for n in torchaudio_short_lengths(rate)], ids=str
)
def test_exact_length_where_torchaudio_is_short(rate, n):
    x = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    plain = torchaudio.functional.resample(torch.from_numpy(x), rate, 16000).numpy()
    out = load_audio(x, rate)
    assert len(out) == exact_length(n, rate) == len(plain) + 1
    np.testing.assert_allclose(out[:-1], plain, rtol=0, atol=1e-6)


@settings(deadline=None, max_examples=60)
@given(
    n=st.integers(1, 200_000),
    rate=st.sampled_from([44100, 22050, 11025, 48000, 8000, 24000, 32000, 12000, 37800, 88200]),
)
def test_output_length_is_exact_ceiling(n, rate):
    x = np.full(n, 0.25, dtype=np.float32)
    out = load_audio(x, rate)
    assert len(out) == exact_length(n, rate) == math.ceil(n * 16000 / rate)
    plain = torchaudio.functional.resample(torch.from_numpy(x), rate, 16000).numpy()
    assert len(plain) in (len(out), len(out) - 1)
    if len(plain) == len(out):  # the usual case: bit-identical to torchaudio
        np.testing.assert_array_equal(out, plain)


def test_hf_torchaudio_backend_parity(tmp_path, monkeypatch):
    """HF ``load_audio(backend="torchaudio")`` (torchaudio.load needs torchcodec, not installed: it is replaced by
    soundfile, the decoder torchaudio used before 2.9) gives the same samples: mean over channels, then resample."""
    from transformers.audio_utils import load_audio as hf_load_audio

    def soundfile_load(source):
        frames, rate = soundfile.read(source, dtype="float32", always_2d=True)
        return torch.from_numpy(frames.T.copy()), rate

    monkeypatch.setattr(torchaudio, "load", soundfile_load)
    rng = np.random.default_rng(0)
    for rate, channels in [(44100, 2), (48000, 1), (8000, 2), (22050, 3)]:
        path = write(tmp_path / f"{rate}.wav", rng.uniform(-1, 1, (rate, channels)), rate, "WAV", "PCM_24")
        expected = hf_load_audio(str(path), sampling_rate=16000, backend="torchaudio")
        np.testing.assert_array_equal(load_audio(path), expected)


# ------------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + list(INT_SCALES))
@pytest.mark.parametrize("shape", [(3000,), (1, 3000), (2, 3000)])
@pytest.mark.parametrize("rate", [16000, 44100])
def test_array_input_not_modified_nor_shared(dtype, shape, rate):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, shape, endpoint=True, dtype=np.int64).astype(dtype)
    else:
        x = rng.uniform(-1, 1, shape).astype(dtype)
    before = x.copy()
    out = check_output(load_audio(x, rate))
    np.testing.assert_array_equal(x, before)
    assert not np.shares_memory(out, x)
    assert x.flags.writeable


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int16])
@pytest.mark.parametrize("rate", [16000, 48000])
def test_tensor_input_not_modified_nor_shared(dtype, rate):
    t = (torch.rand(1, 4800, dtype=torch.float64) * 2 - 1).mul(30000 if dtype == torch.int16 else 1).to(dtype)
    before = t.clone()
    out = load_audio(t, rate)
    assert torch.equal(t, before)
    assert not np.shares_memory(out, t.numpy())


def test_outputs_are_independent():
    a = load_audio(WAV_16)
    b = load_audio(WAV_16)
    a[:] = 0
    np.testing.assert_array_equal(b, WAV_16_VALUES)


def test_describe_audio_source(tmp_path):
    assert describe_audio_source("/p.wav") == "audio file '/p.wav'"
    assert describe_audio_source(pathlib.Path("/p.wav")) == "audio file '/p.wav'"
    assert describe_audio_source(b"abc") == "audio bytes (3 bytes)"
    assert describe_audio_source(memoryview(np.zeros(4, np.float32))) == "audio bytes (16 bytes)"
    assert describe_audio_source(np.zeros((2, 5), np.int16)) == "audio array (shape (2, 5), dtype int16)"
    assert describe_audio_source(torch.zeros(3)) == "audio tensor (shape (3,), dtype torch.float32, device cpu)"
    assert describe_audio_source(io.BytesIO()) == "audio file object (BytesIO)"
    with open(tmp_path / "x.wav", "wb") as fp:
        assert describe_audio_source(fp) == f"audio file object {str(tmp_path / 'x.wav')!r}"
    assert describe_audio_source([1, 2]) == "audio input of type list"
    assert describe_audio_source(b"abc", name="clip 7") == "clip 7"


# ------------------------------------------------------------------------------------------------ bad input


def raises(exc_type, source, *args, names: str, **kwargs):
    """Call load_audio, assert the exception type, that it is a ValueError and that the message starts with
    ``names``; return the exception."""
    with pytest.raises(exc_type) as info:
        load_audio(source, *args, **kwargs)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(names), str(info.value)
    return info.value


def zero_frame_wav() -> bytes:
    return encode(np.zeros((0, 1), np.int16), 16000)


@pytest.mark.parametrize("source", [b"", bytearray(), memoryview(b""), zero_frame_wav()], ids=["b", "ba", "mv", "wav0"])
def test_empty_bytes(source):
    raises(errors.EmptyAudioError, source, names="audio bytes")


def test_empty_files(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    raises(errors.EmptyAudioError, empty, names=f"audio file {str(empty)!r}")
    no_frames = tmp_path / "no_frames.ogg"  # (a 0-frame FLAC is written as 0 bytes by libsndfile)
    no_frames.write_bytes(encode(np.zeros((0, 2), np.float32), 44100, "OGG", "VORBIS"))
    exc = raises(errors.EmptyAudioError, str(no_frames), names=f"audio file {str(no_frames)!r}")
    assert "0 frames" in str(exc)
    fp = io.BytesIO(WAV_16)
    fp.seek(0, io.SEEK_END)  # at EOF: nothing left to read from the current position
    raises(errors.EmptyAudioError, fp, names="audio file object (BytesIO)")


@pytest.mark.parametrize(
    "array", [np.zeros(0, np.float32), np.zeros((2, 0), np.int16), np.zeros((0, 100), np.float32)], ids=str
)
def test_empty_arrays(array):
    raises(errors.EmptyAudioError, array, 16000, names="audio array")


def test_empty_tensor():
    raises(errors.EmptyAudioError, torch.empty(0), 16000, names="audio tensor")


def test_corrupt_bytes_chain_the_decoder_error():
    exc = raises(errors.CorruptAudioError, b"this is not audio " * 20, names="audio bytes")
    assert isinstance(exc.__cause__, soundfile.LibsndfileError)


@pytest.mark.parametrize(
    "data",
    [
        WAV_16[:20],  # cut inside the header
        encode(tone(16000), 16000, "FLAC")[:2000],  # cut inside the compressed stream
        b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100),
        b"fLaC" + bytes(50),
    ],
    ids=["wav-header", "flac-truncated", "riff-junk", "flac-magic-only"],
)
def test_corrupt_data(tmp_path, data):
    raises(errors.CorruptAudioError, data, names="audio bytes")
    path = tmp_path / "bad.audio"
    path.write_bytes(data)
    exc = raises(errors.CorruptAudioError, path, names=f"audio file {str(path)!r}")
    assert exc.__cause__ is not None


def test_text_file_is_corrupt(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is a text file\n" * 10)
    raises(errors.CorruptAudioError, path, names=f"audio file {str(path)!r}")


def test_missing_file(tmp_path):
    path = tmp_path / "missing.wav"
    with pytest.raises(FileNotFoundError) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert not isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "array",
    [np.array(0.5, np.float32), np.zeros((2, 3, 100), np.float32)],
    ids=["0-d", "3-d"],
)
def test_wrong_rank(array):
    exc = raises(errors.UnsupportedAudioError, array, 16000, names="audio array")
    assert "dimensions" in str(exc)


@pytest.mark.parametrize(
    "dtype", [np.bool_, np.complex64, np.int64, np.uint16, np.uint32, np.object_, np.longdouble], ids=str
)
def test_unsupported_dtype(dtype):
    if dtype is np.longdouble and np.dtype(np.longdouble).itemsize == 8:
        pytest.skip("longdouble is float64 on this platform")
    exc = raises(errors.UnsupportedAudioError, np.zeros(10, dtype), 16000, names="audio array")
    assert str(np.dtype(dtype)) in str(exc)


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64, torch.int64, torch.float8_e4m3fn])
def test_unsupported_tensor_dtype(dtype):
    raises(errors.UnsupportedAudioError, torch.zeros(10, dtype=dtype), 16000, names="audio tensor")


def test_samples_channels_layout_suggests_transpose():
    x = np.zeros((48000, 2), np.float32)  # (N, C): the soundfile layout, not ours
    exc = raises(errors.UnsupportedAudioError, x, 48000, names="audio array")
    assert "(samples, channels)" in str(exc) and "transpose" in str(exc)
    raises(errors.UnsupportedAudioError, torch.from_numpy(x), 48000, names="audio tensor")


def test_missing_sample_rate_for_arrays():
    exc = raises(errors.UnsupportedAudioError, np.zeros(10, np.float32), names="audio array")
    assert "sample_rate" in str(exc)
    raises(errors.UnsupportedAudioError, torch.zeros(10), names="audio tensor")


@pytest.mark.parametrize(
    "rate", [0, -16000, True, np.bool_(True), "16000", 44100.5, 16000.7, np.float64(16000.7), float("nan"), None]
)
def test_bad_sample_rate(rate):
    exc = raises(errors.UnsupportedAudioError, np.zeros(10, np.float32), rate, names="audio array")
    assert "positive int" in str(exc) or "carries no sample rate" in str(exc)


@pytest.mark.parametrize("rate", [16000.0, np.float64(16000), np.int64(16000)])
def test_whole_number_float_rate_is_that_int(rate):
    samples = tone(16000, 0.05)
    np.testing.assert_array_equal(load_audio(samples, rate), load_audio(samples, 16000))


@pytest.mark.parametrize("rate", [2**63 - 1, 10**30, 999, 768_001, 1])
def test_sample_rate_out_of_range(rate):
    """Huge rates raised OverflowError in the resampler; tiny ones resample a few samples into gigabytes."""
    exc = raises(errors.UnsupportedAudioError, np.zeros(10, np.float32), rate, names="audio array")
    assert "1000" in str(exc) and "768000" in str(exc)


def test_sample_rate_given_for_encoded_source(tmp_path):
    exc = raises(errors.UnsupportedAudioError, WAV_16, 16000, names="audio bytes")
    assert "carries its own rate" in str(exc)
    path = tmp_path / "clip.wav"
    path.write_bytes(WAV_16)
    raises(errors.UnsupportedAudioError, path, 44100, names=f"audio file {str(path)!r}")


@pytest.mark.parametrize("source", [[0.0, 0.1], 42, None, np.float32(0.5)], ids=["list", "int", "None", "scalar"])
@pytest.mark.parametrize("rate", [None, 16000])
def test_unsupported_type(source, rate):
    exc = raises(errors.UnsupportedAudioError, source, rate, names="audio input of type")
    assert "expected a path" in str(exc)


def test_text_mode_file_object(tmp_path):
    path = tmp_path / "clip.wav"
    path.write_bytes(WAV_16)
    with open(path, encoding="latin-1") as fp:
        exc = raises(errors.UnsupportedAudioError, fp, names="audio file object")
    assert "'rb'" in str(exc)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_non_finite_array(bad, dtype):
    x = np.zeros(100, dtype)
    x[[17, 50]] = bad
    exc = raises(errors.NonFiniteAudioError, x, 16000, names="audio array")
    assert "2 of 100 samples" in str(exc) and "sample 17" in str(exc)


def test_non_finite_multichannel_names_channel_and_sample():
    x = np.zeros((2, 10), np.float32)
    x[1, 3] = np.nan
    exc = raises(errors.NonFiniteAudioError, x, 44100, names="audio array")
    assert "1 of 20 samples" in str(exc) and "channel 1, sample 3" in str(exc)
    raises(errors.NonFiniteAudioError, torch.from_numpy(x), 44100, names="audio tensor")


def test_non_finite_float_wav(tmp_path):
    x = np.zeros((50, 2), np.float32)  # (N, C)
    x[7, 1] = np.inf
    path = write(tmp_path / "inf.wav", x, 16000, "WAV", "FLOAT")
    exc = raises(errors.NonFiniteAudioError, path, names=f"audio file {str(path)!r}")
    assert "channel 1, sample 7" in str(exc)


def test_float32_overflow_is_non_finite():
    raises(errors.NonFiniteAudioError, np.full(10, 1e300), 16000, names="audio array")
    raises(errors.NonFiniteAudioError, np.full((2, 10), 3e38, np.float32), 16000, names="audio array")


@pytest.mark.parametrize(
    "exc_type, source, rate",
    [
        (errors.EmptyAudioError, b"", None),
        (errors.CorruptAudioError, b"garbage" * 10, None),
        (errors.UnsupportedAudioError, np.zeros(4, np.int64), 16000),
        (errors.UnsupportedAudioError, b"garbage", 16000),
        (errors.NonFiniteAudioError, np.array([np.nan], np.float32), 16000),
    ],
)
def test_custom_name_in_message(exc_type, source, rate):
    exc = raises(exc_type, source, rate, name="request 42 / clip 3", names="request 42 / clip 3: ")
    assert exc.source == "request 42 / clip 3"


def _encode_with_pyav(fmt: str, codec: str, rate: int, seconds: float, with_video: bool = False) -> bytes:
    """A 1 kHz tone encoded by FFmpeg through PyAV (formats libsndfile does not read)."""
    import av

    buf = io.BytesIO()
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[None, :]  # (1, N) planar
    with av.open(buf, "w", format=fmt) as container:
        if with_video:
            video = container.add_stream("mpeg4", rate=10)
            video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        step = 1024
        for start in range(0, tone.shape[1], step):
            frame = av.AudioFrame.from_ndarray(tone[:, start : start + step], format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if with_video:
            picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            container.mux(video.encode(picture))
            container.mux(video.encode())
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "codec", "with_video"), [("mp4", "aac", False), ("mp4", "aac", True)])
def test_containers_libsndfile_cannot_read_go_through_pyav(fmt, codec, with_video):
    data = _encode_with_pyav(fmt, codec, 44_100, 2.0, with_video)
    with pytest.raises(Exception):  # noqa: B017 - precondition: libsndfile itself refuses these bytes
        soundfile.read(io.BytesIO(data))
    wave = load_audio(data)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 32_000) <= 2_048  # the AAC encoder's priming and padding, at most a frame each side
    spectrum = np.abs(np.fft.rfft(wave[4000:-4000]))
    assert abs(np.argmax(spectrum) * 16_000 / len(wave[4000:-4000]) - 1000) < 5
    rms = np.sqrt(np.mean(wave[4000:-4000] ** 2))
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.05 * 0.5 / np.sqrt(2)


def test_undecodable_by_both_names_both():
    with pytest.raises(errors.CorruptAudioError, match="PyAV") as info:
        load_audio(b"\x00\x01garbage" * 100, name="clip.m4a")
    assert str(info.value).startswith("clip.m4a: ")


def test_odd_rate_goes_through_swresample_and_keeps_the_tone(monkeypatch):
    calls = []
    original = torchaudio.functional.resample
    monkeypatch.setattr(torchaudio.functional, "resample", lambda *a, **k: calls.append(a[1:]) or original(*a, **k))
    rate = 11_127  # gcd(11127, 16000) = 1: torchaudio would build a 178 M-value filter
    t = np.arange(rate * 2) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    wave = load_audio(tone, rate)
    assert calls == []  # torchaudio was not asked
    assert len(wave) == -(-len(tone) * 16_000 // rate)
    middle = wave[2000:-2000]
    spectrum = np.abs(np.fft.rfft(middle))
    assert abs(np.argmax(spectrum) * 16_000 / len(middle) - 1000) < 5
    assert abs(np.sqrt(np.mean(middle**2)) - 0.5 / np.sqrt(2)) < 0.01 * 0.5 / np.sqrt(2)
    # A friendly rate still uses torchaudio.
    load_audio(tone, 44_100)
    assert calls == [(441, 160)]


# ------------------------------------------------------------------------------------------------ limits, files


def flac_claiming(frames: int, rate: int = 16_000) -> bytes:
    """A tiny FLAC whose STREAMINFO claims ``frames`` samples (the 36-bit total in bytes 18…25)."""
    data = bytearray(encode(np.zeros(64), rate, "FLAC", "PCM_16"))
    assert data[:4] == b"fLaC"
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | frames
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def test_duration_limit_from_the_header_before_decoding(monkeypatch):
    """A FLAC header claiming 40 min of audio is refused from the header (the claimed length would have been
    allocated by the decoder first); a two-hour silent 48 kHz stereo FLAC is 1.4 MB and needs 10.7 GB."""
    from preprocess import audio_io

    data = flac_claiming(40 * 60 * 16_000)
    assert soundfile.info(io.BytesIO(data)).frames == 40 * 60 * 16_000  # precondition: libsndfile trusts it
    monkeypatch.setattr(soundfile.SoundFile, "read", lambda *a, **k: pytest.fail("decoded past the limit"))
    exc = raises(errors.AudioTooLargeError, data, names="audio bytes")
    assert "2400.0 s" in str(exc) and "1800 s" in str(exc) and "MediaLimits.max_audio_seconds" in str(exc)
    info = audio_io.probe_audio(data, limits=audio_io.MediaLimits(max_audio_seconds=None))
    assert (info.frames, info.sample_rate, info.channels, info.duration_s) == (38_400_000, 16_000, 1, 2400.0)


def test_decoded_samples_limit_counts_channels():
    from preprocess.limits import MediaLimits

    stereo = encode(np.zeros((1000, 2)), 16_000)
    limits = MediaLimits(max_audio_samples=1999)
    exc = raises(errors.AudioTooLargeError, stereo, limits=limits, names="audio bytes")
    assert "1000 × 2 channel(s)" in str(exc) and "max_audio_samples" in str(exc)
    assert load_audio(stereo, limits=MediaLimits(max_audio_samples=2000)).shape == (1000,)


def test_limits_apply_to_arrays_and_tensors():
    from preprocess.limits import MediaLimits

    limits = MediaLimits(max_audio_seconds=1.0)
    raises(errors.AudioTooLargeError, np.zeros(16_001, np.float32), 16_000, limits=limits, names="audio array")
    raises(errors.AudioTooLargeError, torch.zeros(2, 8_001), 8_000, limits=limits, names="audio tensor")
    raises(
        errors.AudioTooLargeError,
        np.zeros((2, 100), np.int16),
        16_000,
        limits=MediaLimits(max_audio_samples=199),
        names="audio array",
    )
    assert load_audio(np.zeros(16_000, np.float32), 16_000, limits=limits).shape == (16_000,)
    # The default: 30 min per part. An array at 1 kHz of 31 min is refused (it would resample to 30 M samples).
    raises(errors.AudioTooLargeError, np.zeros(31 * 60 * 1000, np.int8), 1000, names="audio array")


def test_file_with_an_absurd_rate_is_refused_before_resampling():
    """A 40 KB WAV at 1 Hz would resample to 320 M samples."""
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(1)
        out.writeframes(bytes(2000))
    exc = raises(errors.UnsupportedAudioError, buf.getvalue(), names="audio bytes")
    assert "1 Hz" in str(exc) and "1000" in str(exc)


def test_pyav_limits_from_the_header_and_while_decoding(monkeypatch):
    from preprocess import audio_io
    from preprocess.limits import MediaLimits

    data = _encode_with_pyav("mp4", "aac", 16_000, 2.0)
    limits = MediaLimits(max_audio_seconds=1.0)
    exc = raises(errors.AudioTooLargeError, data, limits=limits, names="audio bytes")
    assert "from its header" in str(exc)
    # A container whose header gives no duration is stopped by the running count.
    unknown = audio_io._pyav_info

    def no_duration(container, what):
        return audio_io.AudioInfo(**{**unknown(container, what).__dict__, "frames": None})

    monkeypatch.setattr(audio_io, "_pyav_info", no_duration)
    assert audio_io.probe_audio(data).frames is None
    exc = raises(errors.AudioTooLargeError, data, limits=limits, names="audio bytes")
    assert "decoded so far" in str(exc)


def test_limits_validation():
    from preprocess.limits import MediaLimits

    for field, bad in [("max_audio_seconds", 0), ("max_audio_seconds", float("inf")), ("max_audio_samples", 1.5)]:
        with pytest.raises(ValueError, match=field):
            MediaLimits(**{field: bad})


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs")
def test_fifo_and_symlink_loop_are_refused(tmp_path):
    import os

    from preprocess.audio_io import probe_audio
    from tests.preprocess.helpers import unblocking_fifo

    with unblocking_fifo(tmp_path / "pipe.wav") as path:
        for load in (load_audio, probe_audio):
            with pytest.raises(errors.AudioNotAFileError, match="FIFO") as info:
                load(path)
            assert str(path) in str(info.value)
    loop = tmp_path / "loop.wav"
    os.symlink(loop, loop)
    raises(errors.AudioNotAFileError, loop, names=f"audio file {str(loop)!r}")


def test_decoder_errors_never_quote_file_bytes():
    secret = b"root:*:0:0:System Administrator:/var/root:/bin/sh\n" * 4
    exc = raises(errors.CorruptAudioError, secret, names="audio bytes")
    assert "root" not in str(exc)
