"""Checks every layer shares (no imports: model, runtime, preprocess and pipelines all use them).

The sampling rules are here, once, so every boundary that takes a sampling value (``runtime.sampler.Sampling``,
a manifest row's options, an OpenAI body) refuses exactly what the engine cannot represent: a value that passes
never fails later. The engine keeps each slot's temperature and top_p in float32 and its top_k and seed in int64.
"""

from __future__ import annotations

__all__ = [
    "MAX_SEED",
    "MAX_TEMPERATURE",
    "MAX_TOP_K",
    "SAMPLING_RULES",
    "check_count",
    "is_count",
    "sampling_problem",
]

MAX_TEMPERATURE = float.fromhex("0x1.fffffep+127")  # float32's largest (torch.finfo(torch.float32).max)
MAX_TOP_K = 2**31 - 1  # far above any vocabulary (a top_k at or above it keeps every token), far below int64's end
MAX_SEED = 2**63 - 1  # seeds are int64 on the device

# sampling value → what it must be (the start of each text is what the messages said before the upper bounds)
SAMPLING_RULES = {
    "temperature": f"a finite number ≥ 0 and ≤ {MAX_TEMPERATURE!r} (float32's largest)",
    "top_k": f"a positive integer ≤ 2**31 − 1 ({MAX_TOP_K})",
    "top_p": "a number in (0, 1]",
    "seed": f"an integer from 0 to 2**63 − 1 ({MAX_SEED})",
}


def is_count(value: object, minimum: int = 1) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_count(value: object, name: str, minimum: int = 1, *, optional: bool = False, what: str = "") -> int | None:
    """``value`` if it is an ``int`` (not a ``bool``) of at least ``minimum`` (or None, when ``optional``); else a
    ``ValueError`` naming ``name``, what it must be and the value given. ``what`` adds what it counts
    (``"tokens"``, …) to the message."""
    if optional and value is None:
        return None
    if not is_count(value, minimum):
        must = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        if what:
            must += f" ({what})"
        raise ValueError(f"{name} must be {must}{' or None' if optional else ''}, got {value!r}")
    return value


def sampling_problem(name: str, value: object) -> bool:
    """Whether ``value`` breaks ``SAMPLING_RULES[name]`` (``name``: temperature, top_k, top_p or seed). A ``bool``
    is never a number here (``temperature=True`` is a mistake, not 1); ints and floats are compared exactly, so an
    int beyond float's range is refused, never converted."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    if name == "top_k":
        return not isinstance(value, int) or not 1 <= value <= MAX_TOP_K
    if name == "seed":
        return not isinstance(value, int) or not 0 <= value <= MAX_SEED
    if name == "temperature":
        return not 0 <= value <= MAX_TEMPERATURE  # NaN compares false: refused; so are ±inf
    if name == "top_p":
        return not 0 < value <= 1
    raise KeyError(f"no sampling rule for {name!r}")
