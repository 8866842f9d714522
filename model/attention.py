"""Self-attention of the text decoder (spec §2.5): q/k/v norms, scale 1, GQA, K=V, KV sharing.

Non-shared layers project K (and V, except on K=V layers whose values are the raw keys), norm K with a learned
scale and V without one, rotate Q and K. KV-shared layers take the K/V of their source layer. One ``forward``
serves every step (a prompt, a chunk after the cache, one token per row): the step's :class:`~model.step.StepMeta`
says where the keys come from, and the cache (:meth:`~model.cache.KVCache.update`) owns every read and write.

The attention call itself (:func:`attend`) picks the formulation a fused SDPA kernel accepts (GPU.md §1): on CUDA
the flash kernel takes GQA (``enable_gqa``) only without a mask and with a head dim ≤ 256, and the
memory-efficient kernel (any head dim, a mask) takes no GQA, so every Gemma 4 full layer (head dim 512) and every
masked call would fall to the math kernel (float32 copies of K/V for every head and the whole score matrix).
There, a one-token decode packs each KV head's query group into the query-row axis — q (B, N, 1, H) as
(B, K, G, H) against k, v (B, K, S, H), which the efficient kernel takes — and a multi-token call repeats K/V to
all N heads (a bf16 copy of the keys read). The CPU's flash kernel takes GQA with a mask and any head dim, so there
every call is the plain GQA call.

Shapes: B batch, T tokens, S keys, N query heads, K KV heads, G = N / K, H head dim, D model dim.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention

from .cache import KVCache
from .config import TextConfig
from .masks import BandedMask
from .norm import RMSNorm, rms_norm
from .rope import apply_rope
from .step import StepMeta

__all__ = ["Attention", "attend", "formulation"]

FLASH_HEAD_DIM = 256  # the largest head dim CUDA's flash (and sm90 cuDNN) kernels take


def formulation(n_heads: int, n_kv_heads: int, head_dim: int, queries: int, masked: bool, device_type: str) -> str:
    """How :func:`attend` calls SDPA: "plain" (as many KV heads as query heads), "gqa" (``enable_gqa``),
    "grouped" (query groups packed as rows: one-token decode) or "repeat" (K/V repeated to every head)."""
    if n_heads == n_kv_heads:
        return "plain"
    if device_type != "cuda" or (not masked and head_dim <= FLASH_HEAD_DIM):
        return "gqa"
    return "grouped" if queries == 1 else "repeat"


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    causal: bool = False,
    how: str | None = None,
) -> torch.Tensor:
    """q (B, N, T, H), k/v (B, K, S, H), mask (B, 1, T, S) additive or None (``causal``: T = S, plain causal) →
    (B, N, T, H), scale 1. ``how``: a :func:`formulation` (by default the one for q's device)."""
    b, n, t, h = q.shape
    heads = k.shape[1]
    if how is None:
        how = formulation(n, heads, h, t, mask is not None, q.device.type)  # causal alone is no mask to flash
    if how in ("plain", "gqa"):
        return scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=1.0, enable_gqa=how == "gqa"
        )
    group = n // heads
    if how == "grouped":  # one query row per head: the G rows of a KV head's group become its query rows
        if t != 1:
            raise ValueError(f"the grouped formulation is for one query row, got {t}")
        packed = q.reshape(b, heads, group, h)  # (B, K, G, H)
        out = scaled_dot_product_attention(packed, k, v, attn_mask=mask, scale=1.0)  # (B, K, G, H)
        return out.view(b, n, 1, h)
    s = k.shape[2]
    k = k[:, :, None].expand(b, heads, group, s, h).reshape(b, n, s, h)  # (B, N, S, H) copies
    v = v[:, :, None].expand(b, heads, group, s, v.shape[-1]).reshape(b, n, s, v.shape[-1])
    return scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=1.0)


class Attention(nn.Module):
    def __init__(self, config: TextConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.kind = "full" if config.is_full(layer) else "sliding"
        self.n_heads = config.n_heads
        self.head_dim = config.layer_head_dim(layer)
        self.n_kv_heads = config.layer_kv_heads(layer)
        self.eps = config.rms_eps
        self.shared = layer != config.kv_source(layer)
        d, q_width = config.d_model, config.n_heads * self.head_dim
        self.q_proj = nn.Linear(d, q_width, bias=False)
        self.o_proj = nn.Linear(q_width, d, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_eps)
        if not self.shared:
            self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
            self.k_norm = RMSNorm(self.head_dim, config.rms_eps)
            self.v_proj = (
                nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
                if config.layer_has_value_proj(layer)
                else None
            )

    def key_values(self, x: torch.Tensor, meta: StepMeta) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B·T, D) → k, v (B, K, T, H): normed, k rotated (views of (B, T, K, H) tensors)."""
        shape = (meta.batch, meta.tokens, self.n_kv_heads, self.head_dim)
        k_raw = self.k_proj(x).view(-1, self.n_kv_heads, self.head_dim)  # (B·T, K, H)
        v_raw = self.v_proj(x).view_as(k_raw) if self.v_proj is not None else k_raw
        k = apply_rope(self.k_norm(k_raw), *meta.rope[self.kind])  # (B·T, K, H)
        v = rms_norm(v_raw, None, self.eps)  # value norm without scale, on every non-shared layer
        return k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)  # (B, K, T, H)

    def forward(
        self,
        x: torch.Tensor,
        meta: StepMeta,
        cache: KVCache | None = None,
        shared_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        queries: StepMeta | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B·T, D) → (out (B·T', D), (k, v) (B, K, S, H) attended, for the layers that share them). Queries are
        the tokens of ``queries`` (a narrowed plan: the last T' tokens of each row) when given, else all (T' = T);
        keys and values always cover the whole step."""
        if self.shared:
            k, v = shared_kv
        else:
            k, v = self.key_values(x, meta)
            if cache is not None:
                key_scale = self.k_norm.weight if self.v_proj is None else None  # K=V: the cache rebuilds keys
                k, v = cache.update(self.layer, k, v, meta, key_scale=key_scale)
        plan = meta if queries is None else queries
        if queries is not None:
            x = queries.take(x)  # (B·T', D)
        q = self.q_proj(x).view(-1, self.n_heads, self.head_dim)  # (B·T', N, H)
        q = apply_rope(self.q_norm(q), *plan.rope[self.kind])
        q = q.view(plan.batch, plan.tokens, self.n_heads, self.head_dim).transpose(1, 2)  # (B, N, T', H)
        mask = plan.masks[self.kind]
        if isinstance(mask, BandedMask):
            out = banded_attention(q, k, v, mask)
        else:
            out = attend(q, k, v, mask, causal=mask is None)  # (B, N, T', H)
        out = out.transpose(1, 2).reshape(plan.batch * plan.tokens, -1)  # (B·T', N·H)
        return self.o_proj(out), (k, v)


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BandedMask) -> torch.Tensor:
    """Sliding attention block by block of query rows, each against only the keys it may see: O(T·W), not
    O(T²). q (B, N, T, H), k/v (B, K, S, H) → (B, N, T, H)."""
    outs = [
        attend(q[:, :, start:stop], k[:, :, first:last], v[:, :, first:last], m)  # (B, N, rows, H)
        for start, stop, first, last, m in mask.blocks
    ]
    return torch.cat(outs, dim=2)
