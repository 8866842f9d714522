"""The Mixture-of-Experts block of 26B-A4B (spec §2.8): router, experts, grouped dispatch.

The router sees the raw residual (as the HF reference; GM feeds the experts' pre-norm output), normalises it
without scale, multiplies by a learned scale and ``D^(−1/2)``, projects to expert logits, takes a float32
softmax, keeps the top-k probabilities renormalised to sum 1 and multiplies each by its expert's learned scale.
Dispatch sorts the (token, expert) pairs by expert and runs every selected expert once on all of its tokens,
never a loop over tokens: one grouped matmul per projection (``torch._grouped_mm``) takes each expert's rows
as a device tensor of cumulative ends, found by ``searchsorted`` over the sorted expert ids. Nothing is read
back to the host (``torch.bincount`` would read its min and max: two blocking syncs per layer on CUDA, and it has
no meta kernel, so a step using it cannot be captured in a CUDA graph), and the shapes do not depend on the
routing. The same path runs on the CPU, where the grouped kernel gives the per-expert loop's values bit for bit
and is faster (26B-A4B shapes, bf16: 57 vs 67 ms at 8 tokens, 198 vs 239 ms at 256). On CUDA the grouped kernel
takes bf16 only (GPU.md §2): another dtype there loops over the experts, reading the counts (one sync per layer).

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
        ids = torch.arange(self.gate_up_proj.shape[0], device=flat.device, dtype=flat.dtype)  # (E,)
        ends = torch.searchsorted(flat[order], ids, right=True).to(torch.int32)  # (E,) end of each expert's rows
        pair_weights = weights.reshape(-1)[order, None]  # (N·k, 1)
        if x.is_cuda and x.dtype != torch.bfloat16:  # CUDA's grouped kernel is bf16 only: loop (reads the counts)
            counts = torch.diff(ends, prepend=ends.new_zeros(1)).tolist()
            y = self.looped(x[tokens], counts)
        else:
            y = self.grouped(x[tokens], ends)  # (N·k, D)
        return torch.zeros_like(x).index_add_(0, tokens, y.mul_(pair_weights))

    def grouped(self, xs: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """xs (N·k, D) grouped by expert, ends (E,) int32 cumulative ends of each expert's rows, on the device →
        each row through its expert (N·k, D)."""
        gate, up = torch._grouped_mm(xs, self.gate_up_proj.transpose(1, 2), offs=ends).split(self.d_ff, dim=-1)
        return torch._grouped_mm(gelu(gate, approximate="tanh") * up, self.down_proj.transpose(1, 2), offs=ends)

    def looped(self, xs: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """The same with the counts on the host, one matmul pair per expert that has rows: the plain form
        :meth:`grouped` is tested against."""
        out, start = torch.empty_like(xs), 0
        for expert, count in enumerate(counts):
            if count:
                rows = slice(start, start + count)
                gate, up = (xs[rows] @ self.gate_up_proj[expert].T).split(self.d_ff, dim=-1)  # (c, F) each
                out[rows] = (gelu(gate, approximate="tanh") * up) @ self.down_proj[expert].T  # (c, D)
                start += count
        return out
