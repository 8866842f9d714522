"""Rotary position embedding of the text decoder (spec §2.6).

Rotate-half convention: the pair ``(x_i, x_{i+d/2})`` turns by ``φ_i = pos · f_i``. Sliding layers use
``f_i = θ^(−2i/d)`` for all ``d/2`` pairs (θ = 10 000, d = 256). Full layers use *proportional* RoPE: only the
first ``int(p·d // 2)`` frequencies are non-zero (p = 0.25, d = 512 → 64), the rest are 0 so those dims pass
through; the exponent's denominator stays the full ``d``. A ``factor`` divides every frequency.

Angles are computed in float32 and cos/sin cast to the activation dtype before the multiply (as the reference).
Shapes: B batch, T tokens, N heads, H head dim.
"""

from __future__ import annotations

import torch

__all__ = ["inverse_frequencies", "rope_cos_sin", "apply_rope"]


def inverse_frequencies(head_dim: int, theta: float, partial: float = 1.0, factor: float = 1.0) -> torch.Tensor:
    """(H/2,) float32 frequencies; the ones past ``int(partial · H // 2)`` are zero."""
    rotated = int(partial * head_dim // 2)
    exponents = torch.arange(0, 2 * rotated, 2, dtype=torch.float) / head_dim  # (rotated,)
    frequencies = torch.zeros(head_dim // 2, dtype=torch.float)
    frequencies[:rotated] = 1.0 / (theta**exponents)
    return frequencies / factor


def rope_cos_sin(
    positions: torch.Tensor, frequencies: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) int → cos, sin (B, T, H) in ``dtype`` (each half repeats the ``H/2`` angles)."""
    angles = positions[..., None].float() * frequencies.to(positions.device)  # (B, T, H/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, T, H)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, N, H), cos/sin (B, T, H) → rotated x, same shape and dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat((x[..., half:], x[..., :half]), dim=-1)  # (B, T, N, H): (x₂, x₁)
    rotated[..., :half].neg_()  # (−x₂, x₁), in place on the fresh tensor
    return (x * cos[:, :, None, :]).addcmul_(rotated, sin[:, :, None, :])
