"""What every ``gemma4 bench`` shares: best-of-N timing, one result line, side-by-side formatting, the fixed
set of image sizes."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

__all__ = ["Row", "alternate", "benchmark_sizes", "best_time", "format_row", "reference", "reference_row"]


@dataclass
class Row:
    """One benchmark line: our throughput against a baseline's (``unit``) and the target ratio."""

    group: str  # e.g. "budget 280"
    case: str
    baseline: float | None  # None: the reference is not installed
    ours: float
    target: float | None  # None: an informational line, no target set for it
    unit: str = "img/s"
    baseline_label: str = "reference"
    ours_label: str = "ours"
    note: str = ""
    extra_ok: bool = True  # a second condition of the target (a fidelity bound, say)
    lower_is_better: bool = False  # a cost (bytes): the target is met when ratio ≤ target

    @property
    def ratio(self) -> float | None:
        return None if not self.baseline else self.ours / self.baseline  # None: no reference, or it measured 0

    @property
    def met(self) -> bool | None:
        if self.ratio is None or self.target is None:
            return None
        within = self.ratio <= self.target if self.lower_is_better else self.ratio >= self.target
        return within and self.extra_ok


def best_time(fn: Callable[[object], object], items: Sequence[object], repeat: int) -> float:
    """Seconds for one pass of ``fn`` over ``items``: the best of ``repeat`` passes, after one warm-up call."""
    fn(items[0])
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best


def alternate(measure: Callable[[str], dict], with_reference: bool, rounds: int) -> tuple[dict, dict | None]:
    """``measure("ours")`` and ``measure("reference")`` (when ``with_reference``) in alternation, ``rounds``
    times each (one process's speed on a shared machine varies); each engine's run with the highest
    ``tokens_per_s``."""
    engines = ["ours"] + (["reference"] if with_reference else [])
    runs = [measure(engine) for _ in range(rounds) for engine in engines]
    best = [max(runs[i :: len(engines)], key=lambda r: r["tokens_per_s"]) for i in range(len(engines))]
    return best[0], best[1] if with_reference else None


def format_row(row: Row) -> str:
    base = f"{row.baseline:8.1f}" if row.baseline is not None else "       —"
    ratio = f"{row.ratio:5.2f}×" if row.ratio is not None else "    —"
    if row.target is None:
        target = "(no target)"
    else:
        verdict = {True: "met", False: "NOT met", None: "n/a: no reference"}[row.met]
        target = f"target {'≤' if row.lower_is_better else '≥'} {row.target:.2f}× {verdict}"
    line = (
        f"{row.group:<11} {row.case:<32} {row.baseline_label:>11} {base} {row.unit}  "
        f"{row.ours_label:>11} {row.ours:8.1f} {row.unit}  ratio {ratio}  {target}"
    )
    return line + (f"\n{'':12}{row.note}" if row.note else "")


def reference(name: str) -> ModuleType | None:
    """The reference adapter ``oracles.<name>``, or ``None`` when the reference is not installed."""
    import oracles

    return oracles.load(name)


def benchmark_sizes(count: int = 48, low: int = 120, high: int = 3000, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` (height, width) pairs: long side uniform in [low, high], ratios from 1:1 to 4:1, both
    orientations; the first two are pinned to the extremes (``high`` and ``low`` long sides)."""
    import numpy as np  # here: `gemma4 --help` builds every bench's options without loading numpy

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


REFERENCE_AUDIO_PIECE = 30 * 16_000  # the reference feature extractor's max_length (samples at 16 kHz)


def reference_row(messages: list, base_dir: str) -> dict:
    """One manifest row as the reference processor takes it: ``text`` (the prompt rendered by our chat template,
    each audio placeholder repeated once per piece), ``images``, ``audio`` (16 kHz clips cut into pieces of
    ``REFERENCE_AUDIO_PIECE`` samples: its feature extractor stops there), ``videos`` with their ``metadata``
    (every frame; the processor samples) and ``num_frames`` (the last video part's)."""
    import soundfile

    from oracles.hf_processor import load_image, load_video
    from preprocess.chat import render_chat
    from preprocess.tokenizer import SPECIAL_STRINGS

    row: dict = {"images": [], "audio": [], "videos": [], "metadata": [], "num_frames": None}
    pieces_per_clip = []
    for message in messages:
        for part in message["content"] if isinstance(message["content"], list) else ():
            kind = part["type"]
            if kind == "text":
                continue
            path = os.path.join(base_dir, part[kind])
            if kind == "image":
                row["images"].append(load_image(path))
            elif kind == "audio":
                samples, rate = soundfile.read(path, dtype="float32")
                if rate != 16_000:
                    raise ValueError(f"{path}: {rate} Hz (the sample's clips are 16 kHz)")
                pieces = [samples[i : i + REFERENCE_AUDIO_PIECE] for i in range(0, len(samples), REFERENCE_AUDIO_PIECE)]
                row["audio"] += pieces
                pieces_per_clip.append(len(pieces))
            elif kind == "video":
                frames, meta = load_video(path, backend="pyav")  # every frame; the processor samples
                row["videos"].append(frames)
                row["metadata"].append(meta)
                row["num_frames"] = part.get("num_frames")
            else:
                raise ValueError(f"unknown part type {kind!r}")
    placeholder = SPECIAL_STRINGS["audio"]
    text, counts = render_chat(messages).text, iter(pieces_per_clip)
    row["text"] = "".join(
        piece + (placeholder * next(counts) if i < len(pieces_per_clip) else "")
        for i, piece in enumerate(text.split(placeholder))
    )
    return row
