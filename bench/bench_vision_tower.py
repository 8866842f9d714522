"""``gemma4 bench encoders`` (vision part): images/s through our vision tower against the reference's.

One small random small-style tower (clipped linears; a few layers at a modest width so the run stays short on
two cores), float32 on the CPU, the same weights in both. Each budget encodes a fixed set of mixed-aspect-ratio
synthetic images, preprocessed once and padded as the reference processor pads (9 × budget patches per image,
positions (−1, −1)) for the reference's ``Gemma4VisionModel``, and packed as ``collate`` packs them (real patches
back to back, with their grids) for our ``VisionEncoder.forward``; the note gives the largest difference between
the two towers' soft tokens. Timings are the best of ``repeat`` passes after a warm-up; without transformers
installed the
reference column is left empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from pipelines.sample_data import synthetic_image

from .benchmarking import Row, best_time, format_row, reference

__all__ = ["run", "bench_config"]

TARGET = 1.3
# max |Δ| between the towers' soft tokens relative to the largest one: float32 rounding (the reference itself is
# 2.7e-6 of the range from a float64 run of the same weights; the towers differ by about 1e-6).
TOLERANCE = 4e-6
# (height, width) in px: landscape, portrait, 4:1 panorama, square; budget → how many of them to encode.
SIZES = ((480, 640), (900, 506), (300, 1200), (800, 800))
COUNTS = {280: 4, 1120: 2}


def bench_config():
    from model.config import VisionConfig

    return replace(VisionConfig(), d_model=256, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=64, d_ff=1024)


def _batch(budget: int, count: int):
    import torch

    from preprocess.budget import max_patches
    from preprocess.image import collate_images, preprocess_image

    images = [preprocess_image(synthetic_image(h, w, seed=i), budget) for i, (h, w) in enumerate(SIZES[:count])]
    batch = collate_images(images, max_patches_per_image=max_patches(budget))  # the reference's padded form
    padded = (torch.from_numpy(batch["pixel_values"]), torch.from_numpy(batch["image_position_ids"]))
    packed = (torch.from_numpy(np.concatenate([im.pixel_values() for im in images])), [im.grid for im in images])
    real = sum(im.num_patches for im in images) / (len(images) * max_patches(budget))
    return padded, packed, real


def run(budgets: Sequence[int] = (280, 1120), *, repeat: int = 3, emit: Callable[[str], None] = print) -> list[Row]:
    import torch

    from model.checkpoint import model_to_hf
    from model.config import PRESETS
    from model.vision import VisionEncoder

    config = bench_config()
    torch.manual_seed(0)
    ours = VisionEncoder(config).eval()
    with torch.no_grad():  # finite clip bounds, as trained towers have, wide enough to keep values sensible
        for name, buffer in ours.named_buffers():
            if name.endswith(("_min", "_max")):
                buffer.fill_((1 if name.endswith("_max") else -1) * 8.0)
    oracle = reference("hf_vision")
    theirs = None
    if oracle is None:
        emit("reference: transformers is not installed; printing our figures alone")
    else:
        hf_config = model_to_hf(replace(PRESETS["tiny-e2b"], vision=config, audio=None))["vision_config"]
        theirs = oracle.build(hf_config, ours.state_dict())
    emit(
        f"gemma4 bench vision tower: {config.num_parameters() / 1e6:.1f} M parameters ({config.n_layers} layers, "
        f"d_model {config.d_model}, {config.n_heads} heads × {config.head_dim}, d_ff {config.d_ff}, clipped "
        f"linears), float32 CPU, {torch.get_num_threads()} threads; the reference padded to 9 × budget, ours packed; "
        f"best of {repeat}"
    )
    rows: list[Row] = []
    for budget in budgets:
        count = COUNTS.get(budget, 2)
        padded, packed, real = _batch(budget, count)  # the reference takes padded images, ours packed ones
        note = f"{real:.0%} of the reference's padded patches are real"
        ok = True
        with torch.no_grad():
            ours_s = best_time(lambda b: ours(*b), [packed], repeat)
            ref_s = best_time(lambda b: oracle.run(theirs, *b), [padded], repeat) if theirs else None
            if theirs:
                expected, got = oracle.run(theirs, *padded), ours(*packed)
                same = expected.shape == got.shape
                error = float((expected - got).abs().max() / expected.abs().max()) if same else float("inf")
                ok = error <= TOLERANCE
                note += f"; max |Δ| of the soft tokens {error:.1e} of their range (bound {TOLERANCE:.0e})"
        row = Row(
            f"budget {budget}",
            f"vision tower, {count} images",
            count / ref_s if ref_s else None,
            count / ours_s,
            TARGET,
            unit="img/s",
            note=note,
            extra_ok=ok,
        )
        rows.append(row)
        emit(format_row(row))
    return rows
