"""RMSNorm, with and without a learned scale (spec §2.1).

``y = x · (mean(x²) + ε)^(−1/2) · w`` computed in float32 and cast back to the input dtype; the weight
multiplies directly (no ``1 + w`` as in Gemma 1–3). The reference's operations in the reference's order (so
results agree bit for bit), with the weight applied in place: a fresh large tensor costs page faults on CPU, and
skipping one makes the norm about 4× faster there.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RMSNorm", "rms_norm"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """x (..., D) any float dtype → same shape and dtype; ``weight`` (D,) or None."""
    # Without autograd, one float32 copy of x scaled in place (x itself is never modified): the same values as
    # x32 * scale, with one full-size float32 temporary fewer (E2B's per-layer inputs: 147 MB per 4096 tokens).
    if torch.is_grad_enabled():  # autograd needs x32 as it was
        x32 = x.float()
        y = x32 * torch.pow(x32.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    else:
        x32 = x.float() if x.dtype != torch.float32 else x.clone()
        y = x32.mul_(torch.pow(x32.pow(2).mean(-1, keepdim=True) + eps, -0.5))
    if weight is not None:
        y.mul_(weight.float())
    return y.type_as(x)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim; ``scale=False`` has no parameter at all (the value norm, the MoE router)."""

    def __init__(self, dim: int, eps: float = 1e-6, *, scale: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
