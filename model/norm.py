"""RMSNorm, with and without a learned scale (spec §2.1).

``y = x · (mean(x²) + ε)^(−1/2) · w`` computed in float32 and cast back to the input dtype; the weight
multiplies directly (no ``1 + w`` as in Gemma 1–3). PyTorch's fused ``rms_norm`` kernel does it in one pass
(about 4× faster on CPU than the reference's four elementwise ops); the tests check it equals the reference.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RMSNorm", "rms_norm"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """x (..., D) any float dtype → same shape and dtype; ``weight`` (D,) or None."""
    y = torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), None if weight is None else weight.float(), eps)
    return y.type_as(x)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim; ``scale=False`` has no parameter at all (the value norm, the MoE router)."""

    def __init__(self, dim: int, eps: float = 1e-6, *, scale: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
