"""``gemma4 bench audio``: our log-mel front end against the reference feature extractor, side by side.

One process runs both on the same fixed-seed set: 32 speech-like clips of 1–30 s and two long recordings
(5 and 20 minutes by default). It prints audio-seconds processed per second for each and the ratio:

* clips, one thread: reference ``Gemma4AudioFeatureExtractor()([clip])`` against our ``log_mel(clip)`` in
  exact mode (numpy's FFT, the reference's) and fast mode (torch's FFT), with the largest |Δ| on valid frames;
* clips batched (8 per batch, grouped by length): ``log_mel_batch`` on all cores against our own one-thread
  figure (target ≥ 0.8 × cores), and the reference fed the same batches, for information;
* long recordings, one thread: ``chunk_audio`` + ``log_mel_batch`` of the segments; the reference, which would
  silently keep only the first 30 s, is fed the same segments one at a time.

"One thread" limits torch and the BLAS/OpenMP pools (threadpoolctl) for both sides. Timings are the best of
``repeat`` passes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from pipelines.pool import threads
from pipelines.sample_data import synthetic_speech
from preprocess.audio import chunk_audio, log_mel, log_mel_batch

from .benchmarking import Row, best_time, format_row, reference

TARGET_ONE_THREAD = 2.5
TARGET_SCALING = 0.8
SR = 16_000
UNIT = "audio s/s"


def make_clips(count: int = 32, seed: int = 0) -> list[np.ndarray]:
    """``count`` clips, durations uniform in 1–30 s, the first two pinned to 30 s and 1 s."""
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(1.0, 30.0, size=count)
    seconds[:2] = (30.0, 1.0)[:count]
    return [synthetic_speech(float(s), seed=seed * 1000 + i) for i, s in enumerate(seconds)]


def _windowed_frames(clip: np.ndarray) -> np.ndarray:
    """(F, 320) float32 frames of a clip, as the FFT sees them (for the FFT-only bound)."""
    padded = np.concatenate([np.zeros(160, np.float32), clip, np.zeros(512, np.float32)])
    count = (len(clip) + 127) // 128 * 128 // 160 + 1
    return np.lib.stride_tricks.sliding_window_view(padded, 320)[::160][:count].astype(np.float32)


def _max_error(extractor, clips: Sequence[np.ndarray], exact: bool) -> float:
    worst = 0.0
    for clip in clips:
        ref = extractor([clip], return_tensors="np")
        features, mask = log_mel(clip, exact=exact)
        worst = max(worst, float(np.abs(ref["input_features"][0] - features)[mask].max(initial=0.0)))
    return worst


def run(
    *,
    count: int = 32,
    long_minutes: Sequence[float] = (5, 20),
    repeat: int = 3,
    cores: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    emit: Callable[[str], None] = print,
) -> list[Row]:
    cores = cores or os.cpu_count() or 1
    oracle = reference("hf_audio")
    extractor = oracle.feature_extractor() if oracle else None
    if extractor is None:
        emit("reference: transformers is not installed; printing our figures alone")
    clips = make_clips(count, seed)
    seconds = sum(len(c) for c in clips) / SR
    recordings = f"recordings of {', '.join(f'{m:g}' for m in long_minutes)} min" if long_minutes else "no recordings"
    emit(
        f"gemma4 bench audio: {count} clips ({seconds:.0f} s of audio, 1–30 s each) and {recordings}, "
        f"seed {seed}, best of {repeat}"
    )
    rows: list[Row] = []

    def rate(fn: Callable, items: Sequence, audio_seconds: float) -> float:
        return audio_seconds / best_time(fn, items, repeat)

    with threads(1):
        ref_rate = rate(lambda c: extractor([c], return_tensors="np"), clips, seconds) if extractor else None
        one = {exact: rate(lambda c, e=exact: log_mel(c, exact=e), clips, seconds) for exact in (True, False)}
        frames = [_windowed_frames(c) for c in clips]
        fft_only = rate(lambda f: np.fft.rfft(f, n=512, axis=-1), frames, seconds)
    rows.append(
        Row(
            "clips",
            "bound: numpy FFT alone",
            ref_rate,
            fft_only,
            None,
            unit=UNIT,
            note="the float32 pocketfft both the reference and exact mode run: exact mode's ceiling",
        )
    )
    for exact in (True, False):
        note = ""
        if extractor is not None:
            note = (
                f"largest |Δ| vs reference on valid frames: {_max_error(extractor, clips, exact):.2e} (≤ 1e-4 required)"
            )
        mode = "exact" if exact else "fast"
        rows.append(Row("clips", f"one thread, {mode}", ref_rate, one[exact], TARGET_ONE_THREAD, unit=UNIT, note=note))

    ordered = sorted(clips, key=len)  # batches of similar lengths: little padding
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    if extractor is not None:
        with threads(cores):
            ref_batched = rate(lambda b: extractor(b, return_tensors="np"), batches, seconds)
    # Our clip threads each run torch with one intra-op thread: both at once would oversubscribe the cores.
    with threads(1):
        for exact in (True, False):
            mode = "exact" if exact else "fast"
            batched = rate(lambda b, e=exact: log_mel_batch(b, exact=e, threads=cores), batches, seconds)
            rows.append(
                Row(
                    "clips",
                    f"batched, {cores} threads, {mode}",
                    one[exact],
                    batched,
                    TARGET_SCALING * cores,
                    unit=UNIT,
                    baseline_label="1 thread",
                    ours_label=f"{cores} threads",
                )
            )
            if exact and extractor is not None:
                rows.append(
                    Row(
                        "clips",
                        f"batched, reference vs {mode}",
                        ref_batched,
                        batched,
                        None,
                        unit=UNIT,
                        baseline_label="reference",
                        ours_label=f"{cores} threads",
                    )
                )
    for r in rows:
        emit(format_row(r))

    for minutes in long_minutes:
        recording = synthetic_speech(minutes * 60, seed=seed + 7)
        plan = chunk_audio(recording)
        segments = plan.split(recording)
        with threads(1):
            ref_long = (
                rate(lambda s: extractor([s], return_tensors="np"), segments, minutes * 60) if extractor else None
            )
            for exact in (True, False):
                ours = (
                    minutes
                    * 60
                    / best_time(
                        lambda r, e=exact: log_mel_batch(chunk_audio(r).split(r), exact=e, threads=1),
                        [recording],
                        repeat,
                    )
                )
                mode = "exact" if exact else "fast"
                row = Row(
                    f"{minutes:g} min",
                    f"chunk + features, one thread, {mode}",
                    ref_long,
                    ours,
                    TARGET_ONE_THREAD,
                    unit=UNIT,
                    note=(
                        f"{len(segments)} segments, {plan.num_tokens} audio tokens; the reference is fed our "
                        "segments (alone it keeps the first 30 s)"
                    )
                    if exact
                    else "",
                )
                rows.append(row)
                emit(format_row(row))
    return rows
