"""The projection of tower outputs into the text model's width (spec §3.8, §4.6).

``soft = RMSNorm_without_scale(h) · Wᵀ`` (no bias, ε from the tower's config). The HF order (norm, then
project) is used; GM normalises after projecting, which gives different outputs (spec §4.6 ⚠).
"""

from __future__ import annotations

import torch
from torch import nn

from .norm import rms_norm

__all__ = ["MultimodalEmbedder"]


class MultimodalEmbedder(nn.Module):
    def __init__(self, d_in: int, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.embedding_projection = nn.Linear(d_in, d_model, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., d_in) → (..., d_model), same dtype."""
        return self.embedding_projection(rms_norm(h, None, self.eps))
