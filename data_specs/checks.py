"""Checks every layer shares (no imports: model, runtime, preprocess and pipelines all use them)."""

from __future__ import annotations

__all__ = ["check_count", "is_count"]


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
