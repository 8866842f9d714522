"""``gemma4 bench images``: our image front end against the reference processor, side by side.

One process runs both on the same fixed-seed set (48 synthetic images, long sides 120–3000 px, ratios 1:1 to
4:1, also JPEG-encoded to files) and prints images/s for each and the ratio:

* decoded images, one thread: reference ``Gemma4ImageProcessorPil(max_soft_tokens=b)([image])`` against our
  ``preprocess_images([image], b)`` (the same outputs: padded float32 pixel values, positions, counts), and
  our ``preprocess_image`` (uint8 patches, what pipelines store); plus the bound: the bicubic resize alone,
  which both must do, against the whole reference;
* JPEG files including decode: the reference through ``transformers.image_utils.load_image``;
* fast mode from JPEG files, with its PSNR against exact mode;
* N worker processes against one, our exact mode from JPEG files.

Timings are the best of ``repeat`` passes over the whole set. Without transformers installed, the reference
columns are left empty.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.sample_data import synthetic_image
from preprocess.budget import image_target_size
from preprocess.image import preprocess_image, preprocess_images, resize_to_target

from .benchmarking import Row, benchmark_sizes, best_time, format_row, reference

log = logging.getLogger(__name__)

TARGET_EXACT = 1.7
TARGET_FAST = 4.0
TARGET_PSNR_DB = 40.0
TARGET_SCALING = 0.8


def _rate(fn: Callable[[object], object], items: Sequence[object], repeat: int) -> float:
    """Images per second, best of ``repeat`` passes."""
    return len(items) / best_time(fn, items, repeat)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _worker_job(args: tuple[str, int]) -> int:
    path, budget = args
    return preprocess_image(path, budget).num_patches


def _pool_rate(paths: Sequence[str], budget: int, workers: int, repeat: int) -> float:
    jobs = [(p, budget) for p in paths]
    ctx = multiprocessing.get_context("spawn" if os.name != "posix" else "forkserver")
    with ctx.Pool(workers, initializer=_worker_init) as pool:
        pool.map(_worker_job, jobs[: workers * 2], chunksize=1)  # start and warm every worker
        best = math.inf
        for _ in range(repeat):
            start = time.perf_counter()
            pool.map(_worker_job, jobs, chunksize=1)
            best = min(best, time.perf_counter() - start)
    return len(jobs) / best


def make_set(directory: Path, count: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    images, paths = [], []
    for index, (height, width) in enumerate(benchmark_sizes(count, seed=seed)):
        image = Image.fromarray(synthetic_image(height, width, seed=seed * 1000 + index))
        path = directory / f"img{index:03d}.jpg"
        image.save(path, quality=90)
        images.append(image)
        paths.append(str(path))
    return images, paths


def run(
    budgets: Sequence[int] = (280, 1120),
    *,
    count: int = 48,
    repeat: int = 3,
    workers: int | None = None,
    seed: int = 0,
    emit: Callable[[str], None] = print,
) -> list[Row]:
    workers = workers or os.cpu_count() or 1
    import torch

    torch.set_num_threads(1)  # "one thread": fast mode's torch resize would otherwise use every core
    oracle = reference("hf_image")
    if oracle is None:
        emit("reference: transformers is not installed; printing our figures alone")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gemma4-bench-") as tmp:
        images, paths = make_set(Path(tmp), count, seed)
        pixels = sum(im.width * im.height for im in images)
        emit(
            f"gemma4 bench images: {count} images ({pixels / 1e6:.0f} MP, long sides "
            f"{min(max(im.size) for im in images)}–{max(max(im.size) for im in images)} px), seed {seed}, "
            f"best of {repeat}; one thread unless stated"
        )
        for budget in budgets:
            first = len(rows)
            group = f"budget {budget}"
            ref = oracle.processor(budget) if oracle else None

            def ref_decoded(im, ref=ref):
                return ref([im], return_tensors="np")

            def ref_file(path, ref=ref):
                return ref([oracle.load_image(path)], return_tensors="np")

            ref_rate = _rate(ref_decoded, images, repeat) if ref else None
            ours = _rate(lambda im, b=budget: preprocess_images([im], b), images, repeat)
            ours_u8 = _rate(lambda im, b=budget: preprocess_image(im, b), images, repeat)
            targets = {id(im): image_target_size(im.height, im.width, budget) for im in images}
            resize_only = _rate(lambda im, t=targets: resize_to_target(im, t[id(im)]), images, repeat)
            rows.append(Row(group, "decoded, float32 outputs", ref_rate, ours, TARGET_EXACT))
            rows.append(Row(group, "decoded, uint8 patches", ref_rate, ours_u8, TARGET_EXACT))
            rows.append(
                Row(
                    group,
                    "bound: bicubic resize alone",
                    ref_rate,
                    resize_only,
                    None,
                    note="Pillow's bicubic resize, shared by exact mode and the reference: exact mode's ceiling",
                )
            )

            ref_file_rate = _rate(ref_file, paths, repeat) if ref else None
            ours_file = _rate(lambda p, b=budget: preprocess_images([p], b), paths, repeat)
            rows.append(Row(group, "JPEG files, float32 outputs", ref_file_rate, ours_file, None))

            fast = _rate(lambda p, b=budget: preprocess_images([p], b, exact=False), paths, repeat)
            fast_u8 = _rate(lambda p, b=budget: preprocess_image(p, b, exact=False), paths, repeat)
            quality = [
                psnr(preprocess_image(p, budget).patches, preprocess_image(p, budget, exact=False).patches)
                for p in paths
            ]
            finite = [q for q in quality if math.isfinite(q)]
            mean_db = float(np.mean(finite)) if finite else math.inf
            worst_db = min(quality)
            psnr_ok = worst_db >= TARGET_PSNR_DB  # judged on the worst image, not the mean
            rows.append(
                Row(
                    group,
                    "JPEG files, fast mode",
                    ref_file_rate,
                    fast,
                    TARGET_FAST,
                    extra_ok=psnr_ok,
                    note=f"PSNR vs exact mode: worst image {worst_db:.1f} dB, mean {mean_db:.1f} dB "
                    f"(target ≥ {TARGET_PSNR_DB:.0f} dB on every image: {'met' if psnr_ok else 'NOT met'})",
                )
            )
            rows.append(
                Row(group, "JPEG files, fast mode, uint8", ref_file_rate, fast_u8, TARGET_FAST, extra_ok=psnr_ok)
            )

            one = _pool_rate(paths, budget, 1, repeat)
            many = _pool_rate(paths, budget, workers, repeat)
            rows.append(
                Row(
                    group,
                    "worker processes, JPEG files",
                    one,
                    many,
                    TARGET_SCALING * workers,
                    baseline_label="1 process",
                    ours_label=f"{workers} processes",
                )
            )
            for r in rows[first:]:
                emit(format_row(r))
    return rows
