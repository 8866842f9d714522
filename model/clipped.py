"""Linear layers with optional input/output clamps, shared by the vision and audio towers (spec §3.6).

``y = clamp(clamp(x, in_min, in_max) · Wᵀ, out_min, out_max)``; the four bounds are scalar buffers read from the
checkpoint (initialised to ∓inf, so an unloaded layer is a plain linear). Without clipping the layer has no
bounds at all, as the checkpoints of the large vision tower. The weight sits one level down (``.linear.weight``)
in both cases, which is how the checkpoints name it.

Speed: on the CPU the bounds are read as Python numbers (clamping to a 0-dim tensor takes a broadcasting path
about 6× slower there), infinite bound pairs skip their pass, and the output — a fresh tensor — is clamped in
place. On an accelerator the tensors are used as they are (reading them would synchronise).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ClippedLinear"]


def _clamp(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, *, inplace: bool) -> torch.Tensor:
    if low.device.type == "cpu":
        low, high = float(low), float(high)  # exact: a float32 (or bfloat16) value is a double
        if low == -math.inf and high == math.inf:
            return x
    return x.clamp_(low, high) if inplace else x.clamp(low, high)


class ClippedLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int, *, clipped: bool) -> None:
        super().__init__()
        self.clipped = clipped
        self.linear = nn.Linear(d_in, d_out, bias=False)
        if clipped:
            for name, value in (("input_min", -1), ("input_max", 1), ("output_min", -1), ("output_max", 1)):
                self.register_buffer(name, torch.tensor(value * float("inf")))

    def forward(self, x: torch.Tensor, *, scratch: bool = False) -> torch.Tensor:
        """x (..., d_in) → (..., d_out), same dtype. ``scratch``: x is a temporary nobody else reads, so its
        clamp may happen in place."""
        if not self.clipped:
            return self.linear(x)
        x = _clamp(x, self.input_min, self.input_max, inplace=scratch)
        return _clamp(self.linear(x), self.output_min, self.output_max, inplace=True)
