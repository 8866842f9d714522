"""RMSNorm, with and without a learned scale (spec §2.1).

``y = x · (mean(x²) + ε)^(−1/2) · w`` computed in float32 and cast back to the input dtype; the weight
multiplies directly (no ``1 + w`` as in Gemma 1–3). One fused kernel (``aten::_fused_rms_norm``, which
``torch.nn.functional.rms_norm`` itself calls on CUDA) does it in one dispatched operation on every device,
accumulating in float32 for bf16/fp16 inputs: the same values as the reference's float32 sequence of seven
operations, bit for bit (tests/model/test_norm_rope.py), with no float32 copy of the activations and no
float↔bf16 round trip per norm. A weight of another dtype than x (rare: float32 activations on bf16 weights)
takes the reference's operation sequence.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RMSNorm", "rms_norm"]

_fused_rms_norm = torch.ops.aten._fused_rms_norm


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """x (..., D) any float dtype → same shape and dtype; ``weight`` (D,) or None."""
    if weight is None or weight.dtype == x.dtype:
        return _fused_rms_norm(x, [x.shape[-1]], weight, eps)[0]
    x32 = x.float()
    y = x32 * torch.pow(x32.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    return (y * weight.float()).type_as(x)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim; ``scale=False`` has no parameter at all (the value norm, the MoE router)."""

    def __init__(self, dim: int, eps: float = 1e-6, *, scale: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
