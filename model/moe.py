"""The Mixture-of-Experts block of 26B-A4B (spec §2.8): router, experts, grouped dispatch.

The router sees the raw residual (as the HF reference; GM feeds the experts' pre-norm output), normalises it
without scale, multiplies by a learned scale and ``D^(−1/2)``, projects to expert logits, takes a float32
softmax, keeps the top-k probabilities renormalised to sum 1 and multiplies each by its expert's learned scale.
Dispatch sorts the (token, expert) pairs by expert and runs every selected expert once on all of its tokens:
a loop over experts, never over tokens.

Shapes: N tokens (batch and time flattened), D model dim, E experts, k experts per token, F expert width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import gelu

from .norm import rms_norm

__all__ = ["Router", "Experts"]


class Router(nn.Module):
    def __init__(self, d_model: int, n_experts: int, top_k: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.top_k, self.eps = top_k, eps
        self.scale = nn.Parameter(torch.ones(d_model))
        self.per_expert_scale = nn.Parameter(torch.ones(n_experts))
        self.proj = nn.Linear(d_model, n_experts, bias=False)

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r (N, D) → weights (N, k) in r's dtype, expert ids (N, k) int64."""
        z = rms_norm(r, None, self.eps) * self.scale * r.shape[-1] ** -0.5  # (N, D)
        probabilities = torch.softmax(self.proj(z).float(), dim=-1)  # (N, E)
        weights, experts = torch.topk(probabilities, self.top_k, dim=-1)  # (N, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights * self.per_expert_scale[experts].float()
        return weights.to(r.dtype), experts


class Experts(nn.Module):
    def __init__(self, d_model: int, n_experts: int, d_ff: int) -> None:
        super().__init__()
        self.d_ff = d_ff
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * d_ff, d_model))  # (E, 2F, D)
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, d_ff))  # (E, D, F)
        nn.init.normal_(self.gate_up_proj, std=0.02)
        nn.init.normal_(self.down_proj, std=0.02)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """x (N, D), weights/experts (N, k) → Σ_j w_j · expert_j(x) (N, D)."""
        n, k = experts.shape
        flat = experts.reshape(-1)  # (N·k,)
        order = torch.argsort(flat, stable=True)  # pairs grouped by expert
        tokens = order // k  # (N·k,) token of each pair, in expert order
        counts = torch.bincount(flat, minlength=self.gate_up_proj.shape[0]).tolist()
        pair_weights = weights.reshape(-1)[order]  # (N·k,)
        out = torch.zeros_like(x)
        start = 0
        for expert, count in enumerate(counts):
            if not count:
                continue
            rows = tokens[start : start + count]
            gate, up = (x[rows] @ self.gate_up_proj[expert].T).split(self.d_ff, dim=-1)  # (c, F) each
            y = (gelu(gate, approximate="tanh") * up) @ self.down_proj[expert].T  # (c, D)
            out.index_add_(0, rows, y * pair_weights[start : start + count, None])
            start += count
        return out
