"""Rotary position embedding of the text decoder (spec §2.6).

Rotate-half convention: the pair ``(x_i, x_{i+d/2})`` turns by ``φ_i = pos · f_i``. Sliding layers use
``f_i = θ^(−2i/d)`` for all ``d/2`` pairs (θ = 10 000, d = 256). Full layers use *proportional* RoPE: only the
first ``int(p·d // 2)`` frequencies are non-zero (p = 0.25, d = 512 → 64), the rest are 0 so those dims pass
through; the exponent's denominator stays the full ``d``. A ``factor`` divides every frequency.

Angles are computed in float32 from float32 frequencies (:class:`Float32Frequencies` keeps the buffers float32
whatever ``Module.to`` casts the model to: bf16 frequencies put cos off by ≈ 0.5 at position 4000), and cos/sin
cast to the activation dtype before the multiply (as the reference). ``rotate_half(x)·sin`` is computed as
``roll(x, d/2)·sin±`` with the sign folded into the first half of ``sin±`` once per step (``signed_sin``):
the same products bit for bit (``(−x₂)·s = x₂·(−s)``), three operations per tensor instead of five.

Shapes: B batch, T tokens, N heads, H head dim.
"""

from __future__ import annotations

import torch

__all__ = ["Float32Frequencies", "apply_rope", "inverse_frequencies", "rope_cos_sin", "signed_sin"]


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
    angles = positions[..., None].float() * frequencies.to(positions.device, torch.float32)  # (B, T, H/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, T, H)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin (…, H) → (…, H) with the first half negated: what :func:`apply_rope` multiplies ``roll(x)`` by."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x (…, T, N, H), cos and ``signed_sin(sin)`` (…, T, 1, H) or (…, T, H) → rotated x, same shape and dtype:
    ``x·cos + (−x₂, x₁)·sin``."""
    if cos.dim() == x.dim() - 1:
        cos, sin_signed = cos.unsqueeze(-2), sin_signed.unsqueeze(-2)  # (…, T, 1, H) views
    rolled = torch.roll(x, x.shape[-1] // 2, dims=-1)  # (…, T, N, H): (x₂, x₁)
    return (x * cos).addcmul_(rolled, sin_signed)


class Float32Frequencies:
    """A mixin for modules whose RoPE frequency buffers (``FREQUENCY_BUFFERS``) must stay float32: after any
    ``_apply`` (``.to(dtype)``, ``.half()``, ``.cuda()`` …) that left one of them in another dtype, they are
    recomputed by the module's ``reset_buffers`` on their device."""

    FREQUENCY_BUFFERS: tuple[str, ...] = ()

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        buffers = [getattr(self, name) for name in self.FREQUENCY_BUFFERS]
        if any(b.dtype != torch.float32 and b.device.type != "meta" for b in buffers):
            self.reset_buffers()
        return self
