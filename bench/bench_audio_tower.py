"""``gemma4 bench encoders`` (audio part): our audio conformer against the reference ``Gemma4AudioModel``.

Both run the same random weights, float32 on the CPU, on one fixed-seed batch of speech-like clips
(log-mel features from ``log_mel_batch``). The figure is audio-seconds through the tower per second of wall
time, best of ``repeat`` passes:

* mixed lengths (3–30 s in one batch), the target row: the reference computes every padded frame, ours skips
  them (clips packed in whole attention chunks);
* four 30 s clips, for information: no padding to skip, so this row shows the kernels alone.

Each row also states the largest |Δ| between the two outputs on valid frames (it must stay ≤ 1e-4).

Both sides run on ``threads`` threads (torch and the BLAS/OpenMP pools), by default as many as torch uses (like
the other benchmarks); ``--threads 1`` gives steadier figures on a machine shared with other jobs, where a
multi-threaded pass mostly measures OpenMP barrier waits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from model.audio import AudioEncoder
from model.checkpoint import model_to_hf
from model.config import PRESETS, AudioConfig
from pipelines.sample_data import synthetic_speech
from preprocess.audio import log_mel_batch

from .bench_audio import threads as thread_limit
from .benchmarking import Row, best_time, format_row, reference

__all__ = ["run"]

TARGET = 1.3
UNIT = "audio-s/s"
TOLERANCE = 1e-4
CONFIG = AudioConfig(d_model=256, n_layers=4, n_heads=4, output_dim=512)  # E2B geometry, smaller width/depth


def _perturbed(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights with finite clip bounds and non-default norms, as a state dict."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in model.state_dict().items():
        if key.endswith(("_min", "_max")):
            sign = -1.0 if key.endswith("_min") else 1.0
            tensor = torch.tensor(sign * (4.0 + 4.0 * torch.rand((), generator=generator).item()))
        elif "norm" in key or key.endswith("per_dim_scale"):
            tensor = tensor + 0.1 * torch.randn(tensor.shape, generator=generator)
        state[key] = tensor
    return state


def _batch(seconds: tuple[float, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return log_mel_batch([synthetic_speech(s, seed=seed + i) for i, s in enumerate(seconds)])


def run(
    *,
    repeat: int = 3,
    emit: Callable[[str], object] = print,
    seed: int = 0,
    threads: int | None = None,
    durations: tuple[float, ...] = (3.0, 9.5, 17.0, 30.0),
) -> list[Row]:
    """Time both towers on a mixed-length batch of ``durations`` seconds (target row) and on as many clips of
    the longest duration; emit and return rows."""
    with thread_limit(threads or torch.get_num_threads()):
        return _run(repeat, emit, seed, durations)


def _run(repeat: int, emit: Callable[[str], object], seed: int, durations: tuple[float, ...]) -> list[Row]:
    torch.manual_seed(seed)
    ours = AudioEncoder(CONFIG).eval()
    oracle = reference("hf_audio_tower")
    ref_model = None
    if oracle is not None:
        audio_config = model_to_hf(replace(PRESETS["tiny-e2b"], audio=CONFIG))["audio_config"]
        ref_model = oracle.build(audio_config)
        state = _perturbed(ref_model, seed)
        ref_model.load_state_dict(state, strict=True)
        ours.load_state_dict(state, strict=True)
    emit(
        f"audio tower: {CONFIG.n_layers} layers, d_model {CONFIG.d_model}, {CONFIG.n_heads} heads, "
        f"output {CONFIG.output_dim}, float32 CPU, threads: {torch.get_num_threads()}; best of {repeat}"
    )
    n, low, high = len(durations), min(durations), max(durations)
    cases = [
        (f"{n} clips {low:g}–{high:g} s, mixed", durations, TARGET),
        (f"{n} clips of {high:g} s", (high,) * n, None),
    ]
    rows = []
    for case, seconds, target in cases:
        features, mask = _batch(seconds, seed)  # padded, for the reference
        packed = (features[mask], mask.sum(dim=1).tolist())  # (F, 128) valid frames and counts: what collate gives
        with torch.no_grad():
            ours_s = best_time(lambda batch: ours(*batch), [packed], repeat)
            baseline, note, ok = None, "", True
            if ref_model is not None:
                ref_s = best_time(lambda batch: oracle.run(ref_model, *batch), [(features, mask)], repeat)
                baseline = sum(seconds) / ref_s
                expected, expected_mask = oracle.run(ref_model, features, mask)
                got = ours(*packed)  # (N, E): every clip's valid outputs in order
                same_count = got.shape[0] == int(expected_mask.sum())
                error = float((expected[expected_mask] - got).abs().max()) if same_count else float("inf")
                ok = error <= TOLERANCE and same_count
                note = f"max |Δ| on valid frames {error:.1e} (bound {TOLERANCE:.0e}); token counts equal: {same_count}"
        row = Row("audio tower", case, baseline, sum(seconds) / ours_s, target, UNIT, note=note, extra_ok=ok)
        emit(format_row(row))
        rows.append(row)
    return rows
