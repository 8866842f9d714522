"""The audio front end: log-mel features with their frame mask, and chunking of long audio into 30 s segments.

Implements ../shared/spec/GEMMA4.md §4.1 (the Hugging Face ``Gemma4AudioFeatureExtractor`` algorithm, which is
what HF checkpoints are run with) and the segment rule behind §4.7:

1. pad the batch with zeros to the longest clip, rounded up to a multiple of 128 samples (as the reference);
2. prepend 160 zeros ("semicausal"), cut 321-sample windows every 160 samples and keep the first 320;
3. periodic Hann window, 512-point real FFT, magnitude (not power);
4. HTK mel filterbank, 128 filters over 0–8 kHz, no area normalisation; ``ln(mel + 0.001)``;
5. optional per-bin ``(x − mean) / stddev`` from a checkpoint's processor config;
6. a frame is valid when the last sample of its window is real audio; invalid frames are set to 0.

Numerics: exact mode (the default) runs the reference's FFT, numpy's pocketfft in float32, and then a float32
mel product and log (the reference uses float64 there), which stays within ~1e-6 of the reference on every
signal, pure tones included. Fast mode (``exact=False``) runs torch's FFT on any device; MKL's float32 FFT
rounds differently from pocketfft's, which shows in near-silent bands beside loud ones (see
:func:`log_mel_batch`). On the CPU the magnitude is numpy's vectorised complex ``abs`` (several times faster
than torch's). The mel filterbank has only ~500 non-zero weights, but a dense float32 product is already
cheaper than the FFT, so it stays dense.

Unlike the reference, nothing is truncated: a segment longer than 30 s raises ``AudioTooLongError``;
:func:`chunk_audio` splits long audio at quiet points, and a caller that wants less audio says so
(``max_duration_s``) and gets what was dropped reported back.

Shapes: B batch, N samples, F frames, 320 window, 257 FFT bins, 128 mel bins.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from data_specs.media import MEL_BINS

from .budget import (
    AUDIO_FRAME,
    AUDIO_HOP,
    AUDIO_MAX_SAMPLES,
    AUDIO_MIN_SAMPLES,
    AUDIO_SAMPLE_RATE,
    audio_soft_tokens,
)
from .errors import AudioTooLongError, AudioTooShortError, NonFiniteAudioError, UnsupportedAudioError

__all__ = [
    "N_MELS",
    "mel_filterbank",
    "log_mel",
    "log_mel_batch",
    "frame_count",
    "AudioSegment",
    "ChunkedAudio",
    "chunk_audio",
]

log = logging.getLogger(__name__)

N_MELS = MEL_BINS  # data_specs.media: the width the audio tower takes
FFT_LENGTH = 512
N_BINS = FFT_LENGTH // 2 + 1  # 257
MEL_FLOOR = 1e-3
MAX_FREQUENCY = 8000.0
PAD_MULTIPLE = 128
BLOCK_FRAMES = 512  # CPU work unit: 512 frames keep every temporary (≤ 1 MB) in cache


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """(257, 128) float64 HTK triangular filters over 0–8 kHz, no normalisation (spec §4.1 step 6); read-only."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.float64(0.0)), _hz_to_mel(np.float64(MAX_FREQUENCY)), N_MELS + 2))
    bins = np.linspace(0.0, AUDIO_SAMPLE_RATE / 2, N_BINS)  # (257,) FFT bin frequencies
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # (128,) each
    rising = (bins[:, None] - lower) / (centre - lower)  # (257, 128)
    falling = (upper - bins[:, None]) / (upper - centre)  # (257, 128)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters.flags.writeable = False
    return filters


@lru_cache(maxsize=8)
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(window (320,), filterbank (257, 128)) float32 on ``device``."""
    n = torch.arange(AUDIO_FRAME, dtype=torch.float64)
    window = (0.5 - 0.5 * torch.cos(2 * math.pi * n / AUDIO_FRAME)).to(torch.float32)  # periodic Hann
    filters = torch.from_numpy(mel_filterbank().astype(np.float32))
    return window.to(device), filters.to(device)


def _as_waveform(waveform: object, what: str) -> torch.Tensor:
    """A 1-D float32 CPU-or-device tensor view of a mono waveform; validates rank, type, finiteness, length."""
    if isinstance(waveform, np.ndarray):
        if not np.issubdtype(waveform.dtype, np.floating):
            raise UnsupportedAudioError(
                what, f"expected float samples, got dtype {waveform.dtype} (decode with load_audio)"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
    elif isinstance(waveform, torch.Tensor):
        if not waveform.is_floating_point():
            raise UnsupportedAudioError(what, f"expected float samples, got dtype {waveform.dtype}")
        tensor = waveform.detach().to(torch.float32)
    else:
        raise UnsupportedAudioError(what, f"expected a 1-D numpy array or torch tensor, got {type(waveform).__name__}")
    if tensor.ndim != 1:
        raise UnsupportedAudioError(what, f"expected 1-D mono samples, got shape {tuple(tensor.shape)}")
    n = tensor.shape[0]
    if n < AUDIO_MIN_SAMPLES:
        raise AudioTooShortError(
            what,
            f"{n} samples ({n / AUDIO_SAMPLE_RATE * 1000:.2f} ms) give no valid feature frame and so no audio token; "
            f"at least {AUDIO_MIN_SAMPLES} samples at 16 kHz are needed",
        )
    if n > AUDIO_MAX_SAMPLES:
        raise AudioTooLongError(
            what, f"{n} samples ({n / AUDIO_SAMPLE_RATE:.2f} s) exceed one 30 s segment; split it with chunk_audio"
        )
    if not math.isfinite(float(tensor.sum())):  # cheap screen (NaN and ±Inf survive a sum), then the exact scan
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            return tensor  # only the sum overflowed
        bad = (~finite).nonzero()
        raise NonFiniteAudioError(what, f"{bad.numel()} NaN or infinite samples, the first at index {int(bad[0])}")
    return tensor


def frame_count(num_samples: int) -> int:
    """Feature frames (valid or not) of a clip, or a batch whose longest clip, has ``num_samples`` samples: the
    reference pads to a multiple of 128 samples first."""
    width = -(-num_samples // PAD_MULTIPLE) * PAD_MULTIPLE
    return (width + AUDIO_FRAME // 2 - (AUDIO_FRAME + 1)) // AUDIO_HOP + 1


def _log_mel_clip(tensor: torch.Tensor, out: torch.Tensor, exact: bool) -> None:
    """One CPU waveform (n,) → ``out`` (F_i, 128) ← ln(|rfft(frames · window, 512)| · M + 0.001), computed in
    blocks of ``BLOCK_FRAMES`` frames through one reused buffer, so every temporary stays in cache."""
    window, filters = _constants(torch.device("cpu"))
    window = window.numpy()
    n, count = tensor.shape[0], out.shape[0]
    padded = np.zeros(count * AUDIO_HOP + AUDIO_FRAME, dtype=np.float32)  # covers every frame's window
    padded[AUDIO_FRAME // 2 : AUDIO_FRAME // 2 + n] = tensor.numpy()  # semicausal left pad, zero tail
    frames = np.lib.stride_tricks.sliding_window_view(padded, AUDIO_FRAME)[::AUDIO_HOP][:count]  # (F_i, 320)
    buffer = np.zeros((min(count, BLOCK_FRAMES), FFT_LENGTH), dtype=np.float32)  # (K, 512): zero-padded frames
    for start in range(0, count, BLOCK_FRAMES):
        block = frames[start : start + BLOCK_FRAMES]  # (k, 320)
        k = block.shape[0]
        np.multiply(block, window, out=buffer[:k, :AUDIO_FRAME])
        if exact:  # numpy's pocketfft in float32: the FFT the reference runs
            spectrum = np.fft.rfft(buffer[:k], axis=-1)  # (k, 257) complex64
        else:
            spectrum = torch.fft.rfft(torch.from_numpy(buffer[:k])).numpy()  # (k, 257) complex64
        magnitude = torch.from_numpy(np.abs(spectrum))  # numpy's complex abs is vectorised; torch's is slower
        block_out = out[start : start + k]  # (k, 128)
        torch.matmul(magnitude, filters, out=block_out)
        block_out.add_(MEL_FLOOR).log_()  # while the block is still in cache


def _log_mel_cpu(tensors: Sequence[torch.Tensor], exact: bool, threads: int) -> torch.Tensor:
    """(B, F, 128) log-mel of CPU waveforms, F from the longest; rows past each clip's own frames are left
    uninitialised (they are invalid frames, which the caller sets to zero).

    Each clip is padded only to its own length rounded up to 128: the frames after that are invalid, hence
    zero, either way. Clips run on ``threads`` threads (numpy's FFT and torch's kernels release the GIL).
    """
    counts = [frame_count(t.shape[0]) for t in tensors]
    features = torch.empty((len(tensors), max(counts), N_MELS))  # (B, F, 128); the caller zeroes the rest
    jobs = [(tensor, features[row, :count]) for row, (tensor, count) in enumerate(zip(tensors, counts, strict=True))]
    if threads <= 1 or len(jobs) == 1:
        for tensor, out in jobs:
            _log_mel_clip(tensor, out, exact)
        return features
    # torch's intra-op thread count is the process's to set (entry points do), never changed here.
    with ThreadPoolExecutor(min(threads, len(jobs))) as pool:
        list(pool.map(lambda job: _log_mel_clip(*job, exact), jobs))
    return features


def _log_mel_torch(samples: torch.Tensor) -> torch.Tensor:
    """samples (B, N) float32 zero-padded on any device → unmasked log-mel (B, F, 128) with torch's FFT."""
    window, filters = _constants(samples.device)
    padded = torch.nn.functional.pad(samples, (AUDIO_FRAME // 2, 0))  # (B, 160 + N): semicausal left pad
    frames = padded.unfold(-1, AUDIO_FRAME + 1, AUDIO_HOP)[..., :AUDIO_FRAME]  # (B, F, 320), a view
    spectrum = torch.fft.rfft(frames * window, n=FFT_LENGTH)  # (B, F, 257) complex64
    return torch.log(torch.matmul(spectrum.abs(), filters) + MEL_FLOOR)  # (B, F, 128)


def _normaliser(values: Sequence[float] | None, label: str, device: torch.device) -> torch.Tensor | None:
    if values is None:
        return None
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)
    if tensor.shape != (N_MELS,):
        raise ValueError(f"{label} must hold {N_MELS} values (one per mel bin), got shape {tuple(tensor.shape)}")
    if label == "per_bin_stddev" and bool((tensor <= 0).any()):
        raise ValueError("per_bin_stddev must be positive")
    return tensor


def log_mel_batch(
    waveforms: Sequence[np.ndarray | torch.Tensor],
    *,
    device: str | torch.device | None = None,
    exact: bool = True,
    per_bin_mean: Sequence[float] | None = None,
    per_bin_stddev: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel features of several 16 kHz mono segments (each 161 … 480 000 samples), batched.

    Returns ``features`` (B, F, 128) float32 and ``mask`` (B, F) bool on ``device`` (default: CPU), where F
    follows from the longest segment rounded up to a multiple of 128 samples, as the reference pads a batch.
    ``names`` label the segments in error messages (default ``waveforms[i]``).

    ``exact=True`` runs the FFT the reference runs (numpy's pocketfft in float32) on the CPU and moves the result
    to ``device``; ``exact=False`` runs torch's FFT (on ``device`` when it is not the CPU): faster, but its
    float32 rounding differs from the reference's where a band is near silence beside a loud one (up to ~1e-2
    in log-mel for a full-scale pure tone, ~1e-4 on speech-like signals).

    On the CPU, clips are spread over ``threads`` threads (default 1: one after another on the calling thread),
    each computed in blocks of 512 frames so that every temporary stays in cache. torch's own intra-op thread
    count is left as the process set it: a caller spreading clips over N threads should run with one torch
    thread (an entry point's setting, as ``gemma4 bench audio`` does), since both at once oversubscribe the cores.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    labels = list(names) if names is not None else [f"waveforms[{i}]" for i in range(len(waveforms))]
    tensors = [_as_waveform(w, label) for w, label in zip(waveforms, labels, strict=True)]
    mean = _normaliser(per_bin_mean, "per_bin_mean", device)
    std = _normaliser(per_bin_stddev, "per_bin_stddev", device)
    if not tensors:
        return torch.zeros((0, 0, N_MELS), device=device), torch.zeros((0, 0), dtype=torch.bool, device=device)
    lengths = torch.tensor([t.shape[0] for t in tensors], device=device)
    if device.type == "cpu" or exact:  # exact mode's FFT is numpy's: computed on the CPU, then moved
        features = _log_mel_cpu([t.cpu() for t in tensors], exact, threads or 1).to(device)
    else:
        width = -(-int(lengths.max()) // PAD_MULTIPLE) * PAD_MULTIPLE
        samples = torch.zeros((len(tensors), width), dtype=torch.float32, device=device)  # (B, N)
        for row, tensor in zip(samples, tensors, strict=True):
            row[: tensor.shape[0]] = tensor
        features = _log_mel_torch(samples)
    if mean is not None:
        features -= mean
    if std is not None:
        features /= std
    # Frame i ends at padded index 160·i + 320, i.e. real sample 160·i + 160: valid iff that is < length.
    ends = torch.arange(features.shape[1], device=device) * AUDIO_HOP + AUDIO_FRAME // 2  # (F,)
    mask = ends[None, :] < lengths[:, None]  # (B, F): a prefix of each row
    for row, valid in enumerate(mask.sum(dim=1).tolist()):
        features[row, valid:] = 0.0
    return features, mask


def log_mel(
    waveform: np.ndarray | torch.Tensor,
    *,
    exact: bool = True,
    per_bin_mean: Sequence[float] | None = None,
    per_bin_stddev: Sequence[float] | None = None,
    name: str = "waveform",
) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel features of one 16 kHz mono segment of 161 … 480 000 samples (at most 30 s).

    Returns ``features`` (F, 128) float32 and ``mask`` (F,) bool as numpy arrays, identical to the
    reference extractor called with ``[waveform]`` (F counts the padding to a multiple of 128 samples).
    """
    features, mask = log_mel_batch(
        [waveform], exact=exact, per_bin_mean=per_bin_mean, per_bin_stddev=per_bin_stddev, names=[name]
    )
    return features[0].numpy(), mask[0].numpy()


# --- chunking ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioSegment:
    """Samples ``[start, end)`` of the 16 kHz waveform: one ``<|audio> … <audio|>`` group downstream."""

    start: int
    end: int

    @property
    def num_samples(self) -> int:
        return self.end - self.start

    @property
    def start_s(self) -> float:
        return self.start / AUDIO_SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / AUDIO_SAMPLE_RATE

    @property
    def num_tokens(self) -> int:
        return audio_soft_tokens(self.num_samples)


@dataclass(frozen=True)
class ChunkedAudio:
    """How a waveform is split. ``segments`` tile ``[0, total_samples − dropped_samples)`` with no gap or
    overlap; ``dropped_samples`` at the end were cut by ``max_duration_s`` (0 unless asked for)."""

    segments: tuple[AudioSegment, ...]
    total_samples: int
    dropped_samples: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.segments)

    @property
    def dropped_s(self) -> float:
        return self.dropped_samples / AUDIO_SAMPLE_RATE

    def split(self, waveform: np.ndarray | torch.Tensor) -> list:
        """The segments' samples (views of ``waveform``), in order."""
        if waveform.shape[-1] != self.total_samples:
            raise ValueError(f"waveform has {waveform.shape[-1]} samples, the plan was made for {self.total_samples}")
        return [waveform[..., s.start : s.end] for s in self.segments]


def _quietest_cut(samples: np.ndarray, low: int, high: int, half: int) -> int:
    """The cut position c in [low, high] with the least energy in ``samples[c − half : c + half]``; the latest
    such position on ties (fewer, longer segments)."""
    first, last = max(low - half, 0), min(high + half, samples.shape[0])
    prefix = np.concatenate([[0.0], np.cumsum(np.square(samples[first:last], dtype=np.float64))])  # local sums
    candidates = np.arange(low, high + 1)  # (C,)
    left = np.clip(candidates - half, first, last) - first
    right = np.clip(candidates + half, first, last) - first
    energy = prefix[right] - prefix[left]  # (C,)
    return int(candidates[len(candidates) - 1 - int(np.argmin(energy[::-1]))])


def chunk_audio(
    waveform: np.ndarray | torch.Tensor,
    *,
    max_samples: int = AUDIO_MAX_SAMPLES,
    search_samples: int = AUDIO_SAMPLE_RATE,
    max_duration_s: float | None = None,
    name: str = "waveform",
) -> ChunkedAudio:
    """Plan segments of at most ``max_samples`` (30 s) for a 16 kHz mono waveform of any length.

    Each cut is placed at the quietest point (least energy in the 10 ms around it) within the last
    ``search_samples`` (1 s) before the limit, so words are rarely split; every segment is at least 161 samples
    long, so each yields tokens. No sample is dropped or repeated: ``split`` concatenates back to the input.
    With ``max_duration_s``, audio past that duration is left out and reported in ``dropped_samples`` (and
    logged), never silently.
    """
    if not AUDIO_MIN_SAMPLES <= max_samples <= AUDIO_MAX_SAMPLES:
        raise ValueError(f"max_samples must lie in {AUDIO_MIN_SAMPLES}…{AUDIO_MAX_SAMPLES}, got {max_samples}")
    if not 0 < search_samples <= max_samples - AUDIO_MIN_SAMPLES:
        raise ValueError(f"search_samples must lie in 1…{max_samples - AUDIO_MIN_SAMPLES}, got {search_samples}")
    samples = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    if samples.ndim != 1:
        raise UnsupportedAudioError(name, f"expected 1-D mono samples, got shape {samples.shape}")
    total = samples.shape[0]
    kept = total
    if max_duration_s is not None:
        if not max_duration_s > 0:
            raise ValueError(f"max_duration_s must be positive, got {max_duration_s}")
        kept = min(total, round(max_duration_s * AUDIO_SAMPLE_RATE))
    if kept < AUDIO_MIN_SAMPLES:
        raise AudioTooShortError(
            name,
            f"{kept} samples ({kept / AUDIO_SAMPLE_RATE * 1000:.2f} ms) give no audio token; "
            f"at least {AUDIO_MIN_SAMPLES} are needed",
        )
    if not np.isfinite(samples[:kept]).all():
        bad = np.flatnonzero(~np.isfinite(samples[:kept]))
        raise NonFiniteAudioError(name, f"{bad.size} NaN or infinite samples, the first at index {int(bad[0])}")
    if kept < total:
        log.warning(
            "%s: keeping the first %.2f s of %.2f s (max_duration_s)",
            name,
            kept / AUDIO_SAMPLE_RATE,
            total / AUDIO_SAMPLE_RATE,
        )

    segments = []
    start = 0
    while kept - start > max_samples:
        high = min(start + max_samples, kept - AUDIO_MIN_SAMPLES)
        low = max(start + AUDIO_MIN_SAMPLES, high - search_samples)
        cut = _quietest_cut(samples, low, high, AUDIO_HOP // 2)
        segments.append(AudioSegment(start, cut))
        start = cut
    segments.append(AudioSegment(start, kept))
    return ChunkedAudio(segments=tuple(segments), total_samples=total, dropped_samples=total - kept)
