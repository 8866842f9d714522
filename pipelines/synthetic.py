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


def synthetic_speech(seconds: float, seed: int = 0, sample_rate: int = 16_000) -> np.ndarray:
    """(n,) float32 speech-like audio: voiced "syllables" (harmonics of a gliding 90–260 Hz pitch under a
    smooth envelope and two formant-like emphases) separated by pauses of faint noise."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    out = (0.002 * rng.standard_normal(n)).astype(np.float32)  # room noise
    position = int(rng.integers(0, sample_rate // 5))
    while position < n:
        length = int(rng.uniform(0.08, 0.3) * sample_rate)
        end = min(n, position + length)
        t = np.arange(end - position, dtype=np.float64) / sample_rate
        f0 = rng.uniform(90, 260) * (1 + rng.uniform(-0.15, 0.15) * t / max(t[-1], 1e-3))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        formants = rng.uniform([300, 900], [900, 2500])
        voiced = np.zeros_like(t)
        for k in range(1, 30):
            frequency = k * f0.mean()
            if frequency > 7000:
                break
            gain = sum(np.exp(-(((frequency - f) / 250.0) ** 2)) for f in formants) + 0.05
            voiced += gain / k * np.sin(k * phase)
        envelope = np.sin(np.pi * np.linspace(0, 1, len(t))) ** 2
        out[position:end] += (rng.uniform(0.05, 0.3) * envelope * voiced).astype(np.float32)
        position = end + int(rng.uniform(0.05, 0.5) * sample_rate)
    return out
