"""Linear layers with optional input/output clamps, shared by the vision and audio towers (spec §3.6).

``y = clamp(clamp(x, in_min, in_max) · Wᵀ, out_min, out_max)``; the four bounds are scalar buffers read from the
checkpoint (initialised to ∓inf, so an unloaded layer is a plain linear). Without clipping the layer has no
bounds at all, as the checkpoints of the large vision tower. The weight sits one level down (``.linear.weight``)
in both cases, which is how the checkpoints name it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClippedLinear"]


class ClippedLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int, *, clipped: bool) -> None:
        super().__init__()
        self.clipped = clipped
        self.linear = nn.Linear(d_in, d_out, bias=False)
        if clipped:
            for name, value in (("input_min", -1), ("input_max", 1), ("output_min", -1), ("output_max", 1)):
                self.register_buffer(name, torch.tensor(value * float("inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_in) → (..., d_out), same dtype."""
        if not self.clipped:
            return self.linear(x)
        x = torch.clamp(x, self.input_min, self.input_max)
        return torch.clamp(self.linear(x), self.output_min, self.output_max)
