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

Limits (:class:`preprocess.limits.MediaLimits`): ``max_audio_seconds`` (duration) and ``max_audio_samples``
(samples × channels at the source rate) are checked from the file's header before anything is decoded (from the
shape, for arrays; the 16 kHz length follows from the duration), and again while FFmpeg decodes, for containers
whose header gives no duration. Sample rates must be integers from 1 000 Hz to 768 000 Hz (``16000.0`` is read
as 16 000; ``16000.7`` is an error). A path must name a regular file (a FIFO is refused without being opened).
Error messages never quote the file's bytes. :func:`probe_audio` reads only the header.

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
from dataclasses import dataclass
from numbers import Integral, Real
from typing import BinaryIO

import numpy as np
import soundfile
import torch
import torchaudio.functional

from .errors import (
    AudioNotAFileError,
    AudioTooLargeError,
    CorruptAudioError,
    EmptyAudioError,
    InvalidAudioError,
    NonFiniteAudioError,
    UnsupportedAudioError,
)
from .limits import DEFAULT_LIMITS, MediaLimits
from .sources import describe, open_regular, read_stream, scrub

__all__ = [
    "SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "MAX_SAMPLE_RATE",
    "AudioSource",
    "AudioInfo",
    "describe_audio_source",
    "load_audio",
    "probe_audio",
]

SAMPLE_RATE = 16_000
# Rates outside these are no audio format's: telephony's 8 kHz and DXD's 384 kHz are the usual extremes.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
# libsndfile reports a length this large (SF_COUNT_MAX) when the header gives none (a streamed FLAC).
_UNKNOWN_FRAMES = 2**62
_SO_FAR = "the samples decoded so far"

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | np.ndarray | torch.Tensor

# A (C, N) array with more rows than this is almost surely (N, C): real multichannel audio is at most 7.1.4 etc.
_MAX_CHANNELS = 16
# Above this many filter values (64 MB in float32) torchaudio's kernel is too big to build per call: rates that
# share few factors with 16 000 (e.g. 11 127 Hz) go through FFmpeg's swresample instead.
MAX_FILTER_VALUES = 16_000_000

# Integer PCM: (kind, bytes per sample) → (offset, scale), value = (x - offset) / scale, as libsndfile reads it.
_INT_SCALE = {("i", 1): (0, 128), ("u", 1): (128, 128), ("i", 2): (0, 32768), ("i", 4): (0, 2**31)}


@dataclass(frozen=True)
class AudioInfo:
    """What an audio input's header (or an array's shape) says, before decoding.

    frames: samples per channel at ``sample_rate``, or ``None`` when the header does not say.
    """

    sample_rate: int
    channels: int
    frames: int | None
    source: str

    @property
    def duration_s(self) -> float | None:
        return None if self.frames is None else self.frames / self.sample_rate

    @property
    def samples_16k(self) -> int | None:
        """Samples after resampling to 16 kHz: ``ceil(frames · 16000 / rate)``."""
        return None if self.frames is None else -(-self.frames * SAMPLE_RATE // self.sample_rate)


def describe_audio_source(source: object, name: str | None = None) -> str:
    """A short description of ``source`` for error messages: ``name`` if given, else the path or kind."""
    return describe(source, "audio", name)


def load_audio(
    source: AudioSource,
    sample_rate: int | None = None,
    *,
    name: str | None = None,
    limits: MediaLimits | None = None,
) -> np.ndarray:
    """Decode ``source`` into ``(M,)`` float32 mono samples at :data:`SAMPLE_RATE` (rules: module docstring).

    ``sample_rate`` is the rate of an array or tensor source (required there) and must be ``None`` for encoded
    sources, which carry their own. ``limits`` (default ``MediaLimits()``) bounds the duration and the decoded
    size before decoding. The result is a new C-contiguous array.
    """
    what = describe_audio_source(source, name)
    limits = limits or DEFAULT_LIMITS
    if isinstance(source, np.ndarray | torch.Tensor):
        rate = _array_rate(sample_rate, what)
        samples = _tensor_to_array(source, what) if isinstance(source, torch.Tensor) else source
        wave = _array_to_float(samples, what)
        _check_size(AudioInfo(rate, wave.shape[0], wave.shape[1], what), limits, "its shape")
        return _to_16k_mono(wave, rate, what)
    _check_encoded(source, sample_rate, what)
    with _encoded_stream(source, what) as fp:
        return _from_stream(fp, what, limits)


def probe_audio(
    source: AudioSource,
    sample_rate: int | None = None,
    *,
    name: str | None = None,
    limits: MediaLimits | None = None,
) -> AudioInfo:
    """The rate, channels and length of ``source`` from its header (or shape) alone, with the checks of
    :func:`load_audio` that need no decoding (limits included)."""
    what = describe_audio_source(source, name)
    limits = limits or DEFAULT_LIMITS
    if isinstance(source, np.ndarray | torch.Tensor):
        rate = _array_rate(sample_rate, what)
        shape = tuple(source.shape)
        if len(shape) not in (1, 2):
            raise UnsupportedAudioError(
                what, f"expected (samples,) or (channels, samples), got {len(shape)} dimensions"
            )
        channels, frames = (1, shape[0]) if len(shape) == 1 else shape
        info = AudioInfo(rate, channels, frames, what)
    else:
        _check_encoded(source, sample_rate, what)
        with _encoded_stream(source, what) as fp:
            info = _header(fp, what)
    _check_size(info, limits, "its header" if info.frames is not None else "")
    return info


def _check_encoded(source: object, sample_rate: object, what: str) -> None:
    if not (isinstance(source, str | os.PathLike | bytes | bytearray | memoryview) or hasattr(source, "read")):
        raise UnsupportedAudioError(
            what, "expected a path, bytes, a binary file object, or a numpy array / torch tensor of samples"
        )
    if sample_rate is not None:
        raise UnsupportedAudioError(
            what, f"sample_rate={sample_rate!r} was given, but an audio file carries its own rate: pass None"
        )


def _encoded_stream(source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO, what: str) -> BinaryIO:
    """A seekable binary stream of an encoded source, to use in a ``with`` block."""
    if isinstance(source, str | os.PathLike):
        return open_regular(source, what, AudioNotAFileError)  # a missing file: FileNotFoundError
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)  # BytesIO copies: the caller's buffer is untouched
    return io.BytesIO(read_stream(source, what, UnsupportedAudioError))  # soundfile seeks around: read from here


def _array_rate(sample_rate: object, what: str) -> int:
    if sample_rate is None:
        raise UnsupportedAudioError(what, "an array carries no sample rate: pass sample_rate= (e.g. 16000)")
    return _check_rate(sample_rate, what)


def _check_rate(sample_rate: object, what: str) -> int:
    """An int rate in ``MIN_SAMPLE_RATE … MAX_SAMPLE_RATE``; a float is accepted only when it is a whole number."""
    rate = None
    if isinstance(sample_rate, Integral) and not isinstance(sample_rate, bool | np.bool_):
        rate = int(sample_rate)
    elif isinstance(sample_rate, Real) and not isinstance(sample_rate, bool | np.bool_):
        if math.isfinite(sample_rate) and float(sample_rate).is_integer():
            rate = int(sample_rate)
    if rate is None or rate <= 0:
        raise UnsupportedAudioError(
            what,
            f"sample_rate must be a positive int (Hz), got {sample_rate!r} ({type(sample_rate).__name__}); "
            "a fractional rate is not rounded",
        )
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UnsupportedAudioError(
            what, f"sample_rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE} … {MAX_SAMPLE_RATE} Hz"
        )
    return rate


def _check_size(info: AudioInfo, limits: MediaLimits, found: str) -> None:
    """Refuse audio longer than ``max_audio_seconds`` or with more samples × channels than ``max_audio_samples``."""
    if info.frames is None:
        return
    where = f" (from {found})" if found else ""
    seconds = info.frames / info.sample_rate
    if limits.max_audio_seconds is not None and seconds > limits.max_audio_seconds:
        raise AudioTooLargeError(
            info.source,
            f"lasts {seconds:.1f} s{where}, more than the limit of {limits.max_audio_seconds:g} s per audio part; "
            "raise MediaLimits.max_audio_seconds to allow it, or cut the clip",
        )
    samples = info.frames * info.channels
    if limits.max_audio_samples is not None and samples > limits.max_audio_samples:
        raise AudioTooLargeError(
            info.source,
            f"decodes to {samples} samples ({info.frames} × {info.channels} channel(s) at {info.sample_rate} Hz)"
            f"{where}, more than the limit of {limits.max_audio_samples}; raise MediaLimits.max_audio_samples to "
            "allow it",
        )


def _header(fp: BinaryIO, what: str) -> AudioInfo:
    """Rate, channels and length from the header: libsndfile's, else FFmpeg's (``frames`` may be unknown)."""
    start = fp.tell()
    if not fp.read(1):
        raise EmptyAudioError(what, "the input is empty (0 bytes)")
    fp.seek(start)
    try:
        with soundfile.SoundFile(fp) as sf:
            return _sndfile_info(sf, what)
    except InvalidAudioError:
        raise
    except Exception as exc:
        fp.seek(start)
        try:
            import av

            with av.open(fp, mode="r") as container:
                return _pyav_info(container, what)
        except InvalidAudioError:
            raise
        except Exception as fallback:
            raise _undecodable(what, exc, fallback) from exc


def _sndfile_info(sf: soundfile.SoundFile, what: str) -> AudioInfo:
    if not sf.samplerate > 0:
        raise CorruptAudioError(what, f"the file declares sample rate {sf.samplerate!r}")
    frames = sf.frames if 0 <= sf.frames < _UNKNOWN_FRAMES else None
    return AudioInfo(_file_rate(sf.samplerate, what), max(sf.channels, 1), frames, what)


def _pyav_info(container, what: str) -> AudioInfo:
    if not container.streams.audio:
        raise ValueError("no audio stream in the container")
    stream = container.streams.audio[0]
    rate = _file_rate(stream.rate or stream.codec_context.sample_rate, what)
    channels = max(int(stream.codec_context.channels or 1), 1)
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    frames = None if seconds is None or seconds < 0 else math.ceil(seconds * rate)
    return AudioInfo(rate, channels, frames, what)


def _file_rate(rate: object, what: str) -> int:
    if not (isinstance(rate, int) and rate > 0):
        raise CorruptAudioError(what, f"the file declares sample rate {rate!r}")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UnsupportedAudioError(
            what, f"the file's sample rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE} … {MAX_SAMPLE_RATE} Hz"
        )
    return rate


def _undecodable(what: str, exc: BaseException, fallback: BaseException) -> CorruptAudioError:
    return CorruptAudioError(
        what,
        f"cannot decode audio: {type(exc).__name__}: {scrub(exc)}; PyAV: {type(fallback).__name__}: {scrub(fallback)}",
    )


def _from_stream(fp: BinaryIO, what: str, limits: MediaLimits) -> np.ndarray:
    start = fp.tell()
    if not fp.read(1):
        raise EmptyAudioError(what, "the input is empty (0 bytes)")
    fp.seek(start)
    try:
        sf = soundfile.SoundFile(fp)
    except Exception as exc:  # LibsndfileError (a RuntimeError) mostly
        channels_first, rate = _pyav_or_error(fp, start, what, limits, exc)
    else:
        with sf:
            info = _sndfile_info(sf, what)
            _check_size(info, limits, "its header")
            try:
                channels_first, rate = _read_sndfile(sf, info, limits), info.sample_rate
            except InvalidAudioError:
                raise
            except MemoryError:
                raise
            except Exception as exc:  # damaged data can surface as other types
                channels_first, rate = _pyav_or_error(fp, start, what, limits, exc)
    if channels_first.shape[1] == 0:
        raise EmptyAudioError(what, f"the file holds no samples (0 frames, {channels_first.shape[0]} channel(s))")
    return _to_16k_mono(channels_first, rate, what)


def _read_sndfile(sf: soundfile.SoundFile, info: AudioInfo, limits: MediaLimits) -> np.ndarray:
    """(C, N) float32; a length the header does not give is read in blocks, within the limits."""
    if info.frames is not None:
        return sf.read(info.frames, dtype="float32", always_2d=True).T  # (C, N), a view
    blocks, total = [], 0
    while block := len(chunk := sf.read(1 << 20, dtype="float32", always_2d=True)):
        total += block
        _check_size(
            AudioInfo(info.sample_rate, info.channels, total, info.source), limits, "the samples decoded so far"
        )
        blocks.append(chunk)
    if not blocks:
        return np.zeros((info.channels, 0), np.float32)
    return np.concatenate(blocks).T  # (C, N)


def _pyav_or_error(
    fp: BinaryIO, start: int, what: str, limits: MediaLimits, exc: BaseException
) -> tuple[np.ndarray, int]:
    """Containers libsndfile does not read (M4A/AAC, WebM/Opus in video containers, …) through FFmpeg."""
    fp.seek(start)
    try:
        return _decode_with_pyav(fp, what, limits)
    except InvalidAudioError:
        raise
    except Exception as fallback:
        raise _undecodable(what, exc, fallback) from exc


def _decode_with_pyav(fp: BinaryIO, what: str, limits: MediaLimits) -> tuple[np.ndarray, int]:
    """(C, N) float32 samples and the rate of the first audio stream, decoded by FFmpeg through PyAV; the
    limits are checked from the header, then on the running count (a header may give no duration)."""
    import av

    with av.open(fp, mode="r") as container:
        info = _pyav_info(container, what)
        _check_size(info, limits, "its header")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")  # planar float32, same layout and rate
        chunks, total = [], 0
        for frame in container.decode(stream):
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]  # (C, n) each
            total += frame.samples
            _check_size(AudioInfo(info.sample_rate, info.channels, total, what), limits, _SO_FAR)
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
    if not chunks:
        return np.zeros((1, 0), dtype=np.float32), info.sample_rate
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), info.sample_rate


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
