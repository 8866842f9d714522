"""Token-budget arithmetic: pure integer math, no I/O, nothing heavier than ``math`` (and the shared media
facts of ``data_specs.media``, themselves pure).

Implements ../shared/spec/GEMMA4.md §6.1 (budgets), §6.2 (aspect-ratio-preserving target size) and §6.5
(soft-token count), plus ``fit_image_budgets``, which no reference offers: choose one budget per image so that a
prompt with several images fits a token limit.

Audio (spec §4.1 step 8, §4.7): a clip of ``n`` samples at 16 kHz has ``V = ⌊(n − 161)/160⌋ + 1`` valid
feature frames (a frame counts when the last sample of its 321-sample window is real audio, after the
160-sample semicausal left pad), and the encoder's two stride-2 reductions leave ``⌈⌈V/2⌉/2⌉`` soft tokens.

Vocabulary: ``budget`` is the reference's ``max_soft_tokens`` (70 … 1120); a *patch* is 16×16 px; a *soft
token* pools 3×3 patches, so every resized side is a multiple of 48 px.

The float operations in ``image_target_size`` are ordered exactly as the spec writes them (``sqrt`` of a
float ratio, multiply, divide by 48, floor) so that sizes on a rounding boundary land where the reference's
land; the property tests compare every sampled size against the reference function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from numbers import Integral

from data_specs.media import PATCH_SIZE, POOLING_KERNEL, audio_tokens_from_frames

__all__ = [
    "SUPPORTED_BUDGETS",
    "PATCH_SIZE",
    "POOLING_KERNEL",
    "SIDE_MULTIPLE",
    "IMAGE_WRAPPER_TOKENS",
    "check_budget",
    "max_patches",
    "image_target_size",
    "image_grid",
    "image_soft_tokens",
    "image_padding_patches",
    "fit_image_budgets",
    "AUDIO_SAMPLE_RATE",
    "AUDIO_HOP",
    "AUDIO_MAX_SAMPLES",
    "AUDIO_MIN_SAMPLES",
    "audio_valid_frames",
    "audio_soft_tokens",
    "audio_tokens_from_frames",
]

SUPPORTED_BUDGETS: tuple[int, ...] = (70, 140, 280, 560, 1120)
SIDE_MULTIPLE = PATCH_SIZE * POOLING_KERNEL  # 48 px: one soft token is 48×48 px
IMAGE_WRAPPER_TOKENS = 2  # <|image> … <image|> around each image's soft tokens


def check_budget(budget: object) -> int:
    """Return ``budget`` as an int if it is one of ``SUPPORTED_BUDGETS``; raise ``ValueError`` otherwise."""
    if isinstance(budget, bool) or not isinstance(budget, Integral) or int(budget) not in SUPPORTED_BUDGETS:
        raise ValueError(f"budget {budget!r} is not supported; choose one of {', '.join(map(str, SUPPORTED_BUDGETS))}")
    return int(budget)


def max_patches(budget: int) -> int:
    """Patches an image may use at ``budget`` soft tokens (9 per soft token); also its padded length."""
    return check_budget(budget) * POOLING_KERNEL**2


def _check_side(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"image {name} must be an integer number of pixels, got {value!r}")
    if value < 1:
        raise ValueError(f"image {name} must be at least 1 px, got {value}")
    return int(value)


def image_target_size(height: int, width: int, budget: int = 280) -> tuple[int, int]:
    """The (height, width) in px an image of ``height × width`` px is resized to at ``budget`` (spec §6.2).

    Both sides are positive multiples of 48, the aspect ratio is kept to within one 48 px step, and the
    patch count ``(h/16)·(w/16)`` never exceeds ``9·budget``. Images so thin that their short side rounds to 0
    get a 48 px short side and a long side of ``⌊ratio⌋·48`` capped at ``48·budget`` (the reference's edge
    branch).
    """
    height = _check_side("height", height)
    width = _check_side("width", width)
    n_patches = max_patches(budget)
    target_px = n_patches * PATCH_SIZE**2
    factor = math.sqrt(target_px / (height * width))
    th = math.floor(factor * height / SIDE_MULTIPLE) * SIDE_MULTIPLE
    tw = math.floor(factor * width / SIDE_MULTIPLE) * SIDE_MULTIPLE
    # th == tw == 0 is unreachable: (f·h)·(f·w) = target_px ≥ 161 280 > 48².
    max_side = (n_patches // POOLING_KERNEL**2) * SIDE_MULTIPLE
    if th == 0:
        th = SIDE_MULTIPLE
        tw = min(math.floor(width / height) * SIDE_MULTIPLE, max_side)
    elif tw == 0:
        tw = SIDE_MULTIPLE
        th = min(math.floor(height / width) * SIDE_MULTIPLE, max_side)
    assert th * tw <= target_px, (height, width, budget, th, tw)
    return th, tw


def image_grid(height: int, width: int, budget: int = 280) -> tuple[int, int]:
    """(patch rows, patch columns) of the resized image: ``(th/16, tw/16)``."""
    th, tw = image_target_size(height, width, budget)
    return th // PATCH_SIZE, tw // PATCH_SIZE


def image_soft_tokens(height: int, width: int, budget: int = 280) -> int:
    """Soft tokens the vision encoder emits for this image: ``(th/48)·(tw/48)`` ≤ ``budget``."""
    th, tw = image_target_size(height, width, budget)
    return (th // SIDE_MULTIPLE) * (tw // SIDE_MULTIPLE)


def image_padding_patches(height: int, width: int, budget: int = 280) -> int:
    """Zero patches appended to reach the padded length ``9·budget``."""
    rows, cols = image_grid(height, width, budget)
    return max_patches(budget) - rows * cols


def _check_size_pair(index: int, size: object) -> tuple[int, int]:
    try:
        height, width = size  # type: ignore[misc]
    except (TypeError, ValueError):
        raise TypeError(f"sizes[{index}] must be a (height, width) pair, got {size!r}") from None
    try:
        return _check_side("height", height), _check_side("width", width)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"sizes[{index}]: {exc}") from None


def fit_image_budgets(
    sizes: Iterable[tuple[int, int]],
    max_tokens: int,
    *,
    budgets: Sequence[int] = SUPPORTED_BUDGETS,
    wrapper_tokens: int = IMAGE_WRAPPER_TOKENS,
) -> list[int]:
    """Choose one budget per image so that all images together fit ``max_tokens``.

    ``sizes`` are the images' original ``(height, width)``; each image costs its soft tokens plus
    ``wrapper_tokens`` (the ``<|image>`` and ``<image|>`` tokens). ``budgets`` restricts the allowed levels
    (for example ``(70, 140, 280)`` to cap every image at 280).

    The choice is, in order of priority:

    1. *as even as possible*: budgets differ by at most one level;
    2. *as large as possible*: the lower level is the largest at which every image fits;
    3. then as many images as fit are raised one level, cheapest extra cost first (ties: earlier image
       first), so the spare tokens go to as many images as possible.

    Returns the budgets in input order (``[]`` for no images). Raises ``ValueError`` when even the smallest
    allowed budget for every image exceeds ``max_tokens``.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, Integral) or max_tokens < 0:
        raise ValueError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
    if isinstance(wrapper_tokens, bool) or not isinstance(wrapper_tokens, Integral) or wrapper_tokens < 0:
        raise ValueError(f"wrapper_tokens must be a non-negative integer, got {wrapper_tokens!r}")
    levels = sorted({check_budget(b) for b in budgets})
    if not levels:
        raise ValueError("budgets must name at least one supported budget")
    checked = [_check_size_pair(i, s) for i, s in enumerate(sizes)]
    if not checked:
        return []

    # cost[i][k]: tokens image i takes at level k, wrapper included.
    cost = [[image_soft_tokens(h, w, b) + wrapper_tokens for b in levels] for h, w in checked]
    base = None
    for k in range(len(levels) - 1, -1, -1):
        if sum(c[k] for c in cost) <= max_tokens:
            base = k
            break
    if base is None:
        need = sum(c[0] for c in cost)
        raise ValueError(
            f"{len(checked)} image(s) need at least {need} tokens at budget {levels[0]} "
            f"(soft tokens + {wrapper_tokens} wrapper tokens each), more than max_tokens={max_tokens}"
        )
    chosen = [base] * len(checked)
    if base + 1 < len(levels):
        spare = max_tokens - sum(c[base] for c in cost)
        extra = sorted(range(len(checked)), key=lambda i: (cost[i][base + 1] - cost[i][base], i))
        for i in extra:
            step = cost[i][base + 1] - cost[i][base]
            if step > spare:
                break  # sorted by step: no later image fits either
            chosen[i] = base + 1
            spare -= step
    return [levels[k] for k in chosen]


# --- audio ---------------------------------------------------------------------------------------------

AUDIO_SAMPLE_RATE = 16_000
AUDIO_HOP = 160  # 10 ms
AUDIO_FRAME = 320  # 20 ms window (the reference unfolds 321 samples and keeps 320)
AUDIO_MAX_SAMPLES = 480_000  # 30 s: one segment, one <|audio> … <audio|> group
AUDIO_MIN_SAMPLES = AUDIO_FRAME // 2 + 1  # 161 samples (10.06 ms): the shortest clip with one valid frame
AUDIO_MAX_TOKENS = 750  # the reference's audio_seq_length cap (never reached within 30 s)


def _check_samples(num_samples: object) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, Integral):
        raise TypeError(f"num_samples must be an integer, got {num_samples!r}")
    if num_samples < AUDIO_MIN_SAMPLES:
        raise ValueError(
            f"{num_samples} samples ({num_samples / AUDIO_SAMPLE_RATE * 1000:.2f} ms at 16 kHz) give no valid "
            f"feature frame and so no audio token; the minimum is {AUDIO_MIN_SAMPLES} samples"
        )
    if num_samples > AUDIO_MAX_SAMPLES:
        raise ValueError(
            f"{num_samples} samples is longer than one 30 s segment ({AUDIO_MAX_SAMPLES} samples); "
            "split it with preprocess.audio.chunk_audio and count each segment"
        )
    return int(num_samples)


def audio_valid_frames(num_samples: int) -> int:
    """Valid log-mel frames of a clip of ``num_samples`` 16 kHz samples (161 ≤ n ≤ 480 000)."""
    n = _check_samples(num_samples)
    return (n + AUDIO_HOP - (AUDIO_FRAME + 1)) // AUDIO_HOP + 1


def audio_soft_tokens(num_samples: int) -> int:
    """Audio soft tokens the reference processor inserts for one segment of ``num_samples`` samples.

    Two stride-2 reductions of the valid-frame count ``V``: ``⌈⌈V/2⌉/2⌉`` (1 s → 25, 30 s → 750).
    Raises ``ValueError`` below 161 samples (no token at all) and above 480 000 (chunk first).
    """
    return min(audio_tokens_from_frames(audio_valid_frames(num_samples)), AUDIO_MAX_TOKENS)
