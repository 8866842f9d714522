"""Deterministic synthetic images for demos and benchmarks (no downloads).

Photographs are mostly smooth regions, edges and a little sensor noise; these images imitate that mix so
that JPEG sizes, decode times and resampling errors behave like real photos rather than like white noise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_image", "benchmark_sizes"]


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: gradients, low-frequency waves, a few flat shapes with hard edges, noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]  # (H, 1)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]  # (1, W)
    image = np.empty((height, width, 3), dtype=np.float32)
    for ch in range(3):
        a, b, c = rng.uniform(-80, 80, size=3)
        fy, fx, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
        image[:, :, ch] = 128 + a * y + b * x + c * np.sin(2 * np.pi * (fy * y + fx * x) + phase)
    for _ in range(int(rng.integers(3, 9))):  # flat shapes: ellipses and rectangles
        cy, cx = rng.uniform(0, 1, size=2)
        ry, rx = rng.uniform(0.03, 0.3, size=2)
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if rng.random() < 0.5:
            inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        else:
            inside = (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)
        image[inside] = colour
    image += 4.0 * rng.standard_normal(size=(height, width, 1), dtype=np.float32)  # luminance noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def benchmark_sizes(count: int = 48, low: int = 120, high: int = 3000, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` (height, width) pairs: long side uniform in [low, high], ratios from 1:1 to 4:1, both
    orientations; the first two are pinned to the extremes (``high`` and ``low`` long sides)."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(count):
        long_side = int(rng.integers(low, high + 1))
        ratio = float(rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 2.0, 3.0, 4.0]))
        short_side = max(low, int(round(long_side / ratio)))
        sizes.append((long_side, short_side) if rng.random() < 0.4 else (short_side, long_side))
    if count >= 2:
        sizes[0], sizes[1] = (high, high * 3 // 4), (low, low)
    return sizes[:count]
