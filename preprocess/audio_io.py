"""Audio decoding: every way a clip can arrive becomes one 16 kHz mono float32 waveform (the input of spec §4.1).

The only module that decodes audio. §4.1 (HF ``Gemma4AudioFeatureExtractor``) expects 16 kHz mono float samples
and does no decoding, downmixing or resampling itself; this module does those three steps:

* Sources: a path, ``bytes``/``bytearray``/``memoryview``, or a binary file object (read from its current
  position), decoded by ``soundfile`` (libsndfile: WAV PCM 8/16/24/32-bit and float, FLAC, OGG/Vorbis and Opus,
  MP3, AIFF, …) as float32, or, for containers libsndfile does not read (M4A/AAC, WebM, the audio track of a video
  …), by FFmpeg through PyAV (first audio stream, as planar float32), so integer PCM lands in [-1, 1] (libsndfile
  divides by 2^(bits-1); the largest 32-bit value rounds up to 1.0 in float32). A file carries its own rate, so
  ``sample_rate`` must not be given. Or an array of samples — a numpy array or a torch tensor (moved to the CPU) —
  for which ``sample_rate`` is required: ``(N,)`` is mono and ``(C, N)`` is channels first (the torchaudio
  convention). Float16/32/64 (and bfloat16 tensors) keep their values; integer PCM is scaled as libsndfile does:
  int8 ``x/128``, uint8 ``(x-128)/128``, int16 ``x/32768``, int32 ``x/2^31``. No clipping and no peak
  normalisation: float input outside [-1, 1] stays outside.
* Downmix: the mean over channels, before resampling (C times cheaper, and both steps are linear).
* Resampling to 16 kHz with ``torchaudio.functional.resample`` and its defaults: windowed sinc with a Hann
  window, ``lowpass_filter_width=6`` zero crossings, ``rolloff=0.99`` (cut-off at 0.99 of the lower Nyquist
  frequency). The rate ratio is first reduced by the gcd, ``rate/g → 16000/g``, which is exact for integer
  rates (44.1 kHz becomes 441 → 160). A clip already at 16 kHz is not resampled: its values come back unchanged.
  Rates sharing few factors with 16 000 (e.g. 11 127 Hz) would need a torchaudio filter of hundreds of millions
  of values; those go through FFmpeg's swresample (PyAV) instead.
* Precision: all of the above runs in float32, or in float64 for float64 input; one cast to float32 at the end.

**Deviations.** (1) HF ``transformers.audio_utils.load_audio`` decodes with torchcodec, or with soundfile and
resamples with soxr (``soxr_hq``); we match its ``backend="torchaudio"`` path (mean over channels, then
``torchaudio.functional.resample`` with defaults): same samples, except for (2). (2) The output length is
exactly ``ceil(N · 16000 / rate)``, computed in integers. torchaudio evaluates that ceiling in float32 and comes
out one sample short for some lengths (first at 180 697 samples of 44.1 kHz audio, about 4.1 s); when that
happens we resample again with the clip zero-padded, which adds output samples only after the ones we keep.

Not checked here: the minimum length (feature extraction does that). Not detectable here: a WAV file cut inside
its sample data — libsndfile trusts the file length over the header and returns the samples that are there.

Bad input raises a subclass of :class:`preprocess.errors.InvalidAudioError` (a ``ValueError``) whose message
starts with a description of the source (or ``name``); a missing file raises ``FileNotFoundError``. Inputs are
never modified and the result never shares memory with them; a file object's position is restored.

Shapes: C channels, N samples at the input rate, M = ceil(N · 16000 / rate) samples at 16 kHz.
"""

from __future__ import annotations

import io
import math
import os
from typing import BinaryIO

import numpy as np
import soundfile
import torch
import torchaudio.functional

from .errors import CorruptAudioError, EmptyAudioError, NonFiniteAudioError, UnsupportedAudioError
from .sources import describe, read_stream

__all__ = ["SAMPLE_RATE", "AudioSource", "describe_audio_source", "load_audio"]

SAMPLE_RATE = 16_000

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | np.ndarray | torch.Tensor

# A (C, N) array with more rows than this is almost surely (N, C): real multichannel audio is at most 7.1.4 etc.
_MAX_CHANNELS = 16
# Above this many filter values (64 MB in float32) torchaudio's kernel is too big to build per call: rates that
# share few factors with 16 000 (e.g. 11 127 Hz) go through FFmpeg's swresample instead.
MAX_FILTER_VALUES = 16_000_000

# Integer PCM: (kind, bytes per sample) → (offset, scale), value = (x - offset) / scale, as libsndfile reads it.
_INT_SCALE = {("i", 1): (0, 128), ("u", 1): (128, 128), ("i", 2): (0, 32768), ("i", 4): (0, 2**31)}


def describe_audio_source(source: object, name: str | None = None) -> str:
    """A short description of ``source`` for error messages: ``name`` if given, else the path or kind."""
    return describe(source, "audio", name)


def load_audio(source: AudioSource, sample_rate: int | None = None, *, name: str | None = None) -> np.ndarray:
    """Decode ``source`` into ``(M,)`` float32 mono samples at :data:`SAMPLE_RATE` (rules: module docstring).

    ``sample_rate`` is the rate of an array or tensor source (required there) and must be ``None`` for encoded
    sources, which carry their own. The result is a new C-contiguous array.
    """
    what = describe_audio_source(source, name)
    if isinstance(source, np.ndarray | torch.Tensor):
        if sample_rate is None:
            raise UnsupportedAudioError(what, "an array carries no sample rate: pass sample_rate= (e.g. 16000)")
        rate = _check_rate(sample_rate, what)
        samples = _tensor_to_array(source, what) if isinstance(source, torch.Tensor) else source
        return _to_16k_mono(_array_to_float(samples, what), rate, what)
    if isinstance(source, str | os.PathLike | bytes | bytearray | memoryview) or hasattr(source, "read"):
        if sample_rate is not None:
            raise UnsupportedAudioError(
                what, f"sample_rate={sample_rate!r} was given, but an audio file carries its own rate: pass None"
            )
        return _from_encoded(source, what)
    raise UnsupportedAudioError(
        what, "expected a path, bytes, a binary file object, or a numpy array / torch tensor of samples"
    )


def _from_encoded(source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO, what: str) -> np.ndarray:
    """A path, bytes-like object or binary file object, decoded by soundfile."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as fp:  # a missing file raises FileNotFoundError naming the path
            return _from_stream(fp, what)
    if isinstance(source, bytes | bytearray | memoryview):
        return _from_stream(io.BytesIO(source), what)  # BytesIO copies: the caller's buffer is untouched
    data = read_stream(source, what, UnsupportedAudioError)  # soundfile seeks around: read from here
    return _from_stream(io.BytesIO(data), what)


def _check_rate(sample_rate: object, what: str) -> int:
    if isinstance(sample_rate, bool | np.bool_) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise UnsupportedAudioError(
            what, f"sample_rate must be a positive int (Hz), got {sample_rate!r} ({type(sample_rate).__name__})"
        )
    return int(sample_rate)


def _from_stream(fp: BinaryIO, what: str) -> np.ndarray:
    start = fp.tell()
    if not fp.read(1):
        raise EmptyAudioError(what, "the input is empty (0 bytes)")
    fp.seek(start)
    try:
        frames, rate = soundfile.read(fp, dtype="float32", always_2d=True)  # (N, C)
        channels_first = frames.T  # (C, N), a view
    except MemoryError:
        raise
    except Exception as exc:  # LibsndfileError (a RuntimeError) mostly; damaged data can surface as others
        fp.seek(start)
        try:  # containers libsndfile does not read (M4A/AAC, WebM/Opus in video containers, …)
            channels_first, rate = _decode_with_pyav(fp)
        except Exception as fallback:
            raise CorruptAudioError(
                what, f"cannot decode audio: {type(exc).__name__}: {exc}; PyAV: {type(fallback).__name__}: {fallback}"
            ) from exc
    if channels_first.shape[1] == 0:
        raise EmptyAudioError(what, f"the file holds no samples (0 frames, {channels_first.shape[0]} channel(s))")
    if not (isinstance(rate, int) and rate > 0):
        raise CorruptAudioError(what, f"the file declares sample rate {rate!r}")
    return _to_16k_mono(channels_first, rate, what)


def _decode_with_pyav(fp: BinaryIO) -> tuple[np.ndarray, int]:
    """(C, N) float32 samples and the rate of the first audio stream, decoded by FFmpeg through PyAV."""
    import av

    with av.open(fp, mode="r") as container:
        if not container.streams.audio:
            raise ValueError("no audio stream in the container")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")  # planar float32, same layout and rate
        chunks = []
        for frame in container.decode(stream):
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]  # (C, n) each
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
        rate = int(stream.rate or stream.codec_context.sample_rate)
    if not chunks:
        return np.zeros((1, 0), dtype=np.float32), rate
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), rate


def _tensor_to_array(tensor: torch.Tensor, what: str) -> np.ndarray:
    """The tensor's values as a CPU numpy array (a copy when it was not on the CPU; never written to)."""
    try:
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every value exactly
            tensor = tensor.detach().float()
        return tensor.numpy(force=True)  # detaches, moves to the CPU, resolves conj/neg views
    except (RuntimeError, TypeError) as exc:
        raise UnsupportedAudioError(what, f"cannot read the tensor's values: {exc}") from exc


def _array_to_float(array: np.ndarray, what: str) -> np.ndarray:
    """``(C, N)`` float32 (float64 for float64 input) samples; may be a view of ``array``, never written to."""
    if array.ndim == 1:
        array = array[None]  # (1, N)
    elif array.ndim != 2:
        raise UnsupportedAudioError(what, f"expected (samples,) or (channels, samples), got {array.ndim} dimensions")
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "f" and size in (2, 4, 8):
        out = array.astype(np.float64 if size == 8 else np.float32, copy=False)
    elif (kind, size) in _INT_SCALE:
        offset, scale = _INT_SCALE[kind, size]
        # Exact: the shift fits float32 and a power-of-two division only moves the exponent (int32's rounding to
        # 24 bits happens in astype, the same rounding float32(x / 2^31) would do).
        out = array.astype(np.float32)
        if offset:
            out -= offset
        out /= scale
    else:
        raise UnsupportedAudioError(
            what, f"dtype {array.dtype} is not audio: expected float16/32/64, int8, uint8, int16 or int32 samples"
        )
    channels, samples = out.shape
    if channels == 0 or samples == 0:
        raise EmptyAudioError(what, f"the input holds no samples (shape {array.shape})")
    if channels > _MAX_CHANNELS:
        raise UnsupportedAudioError(
            what,
            f"a 2-D input is read as (channels, samples) and this one has {channels} channels; it looks like "
            f"(samples, channels): transpose it (array.T) first",
        )
    return out


def _to_16k_mono(wave: np.ndarray, rate: int, what: str) -> np.ndarray:
    """``(C, N)`` float samples at ``rate`` → new ``(M,)`` float32 C-contiguous samples at 16 kHz."""
    bad = ~np.isfinite(wave)
    if bad.any():
        channel, sample = np.unravel_index(int(np.argmax(bad)), bad.shape)
        where = f"channel {channel}, sample {sample}" if wave.shape[0] > 1 else f"sample {sample}"
        raise NonFiniteAudioError(
            what, f"{int(bad.sum())} of {bad.size} samples are NaN or infinite; the first is at {where}"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, as an error
        mono = wave[0] if wave.shape[0] == 1 else wave.mean(axis=0)  # (N,), same precision as wave
        if rate != SAMPLE_RATE:
            mono = _resample(mono, rate)
        out = np.array(mono, dtype=np.float32, order="C", copy=True)  # copy: mono may be a view of the input
    if not np.isfinite(out).all():  # finite input can still overflow float32 (float64 input, or the channel sum)
        raise NonFiniteAudioError(what, "samples overflow float32 after downmixing/resampling (|x| > 3.4e38)")
    return out


def _resample(mono: np.ndarray, rate: int) -> np.ndarray:
    """``(N,)`` samples at ``rate`` → ``(M,)`` at 16 kHz, ``M = ceil(N · 16000 / rate)``, same dtype."""
    gcd = math.gcd(rate, SAMPLE_RATE)
    orig, new = rate // gcd, SAMPLE_RATE // gcd  # exact for integer rates: 44100/16000 → 441/160
    length = -(-mono.shape[0] * new // orig)  # ceil(N · new / orig) in integers
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))  # torchaudio's filter half-width, in input samples
    if new * (2 * width + orig) > MAX_FILTER_VALUES:
        return _resample_swr(mono, rate, length)
    wave = torch.from_numpy(np.ascontiguousarray(mono))  # (N,)
    out = torchaudio.functional.resample(wave, orig, new)
    if out.shape[0] < length:
        # torchaudio cut its output at ceil(N · new / orig) evaluated in float32, which rounded down. Appended
        # zeros only add outputs after the first `length` (torchaudio pads the edge with zeros itself). Each
        # period of `orig` input samples adds `new` outputs to the float32 count, whose rounding error is at most
        # count · 2^-24: two periods, plus one per 2^22 · new outputs, always cover it.
        periods = 2 + length // (new << 22)
        out = torchaudio.functional.resample(torch.nn.functional.pad(wave, (0, periods * orig)), orig, new)
    assert out.shape[0] >= length, (out.shape, length)
    return out[:length].numpy()


def _resample_swr(mono: np.ndarray, rate: int, length: int) -> np.ndarray:
    """FFmpeg's swresample (through PyAV) for rates whose torchaudio filter would be huge (11 127 Hz → 16 kHz
    needs 178 M filter values there); padded or cut to ``length`` (swresample's delay is flushed)."""
    import av

    resampler = av.AudioResampler(format="fltp", layout="mono", rate=SAMPLE_RATE)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(mono, dtype=np.float32)[None, :], format="fltp", layout="mono"
    )
    frame.sample_rate = rate
    frame.pts = 0
    chunks = [f.to_ndarray()[0] for f in resampler.resample(frame)] + [
        f.to_ndarray()[0] for f in resampler.resample(None)
    ]
    out = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    out = np.pad(out, (0, max(0, length - out.shape[0])))[:length]
    return out.astype(mono.dtype, copy=False)
