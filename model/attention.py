"""Self-attention of the text decoder (spec §2.5): q/k/v norms, scale 1, GQA, K=V, KV sharing.

Non-shared layers project K (and V, except on K=V layers whose values are the raw keys), norm K with a learned
scale and V without one, rotate Q and K. KV-shared layers take the K/V of their source layer. Attention is
``scaled_dot_product_attention`` with ``scale=1`` and a boolean mask (softmax in float32 inside SDPA).

Shapes: B batch, T tokens, N query heads, K KV heads, H head dim, D model dim.
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

__all__ = ["Attention"]


class Attention(nn.Module):
    def __init__(self, config: TextConfig, layer: int) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.layer_head_dim(layer)
        self.n_kv_heads = config.layer_kv_heads(layer)
        self.eps = config.rms_eps
        self.shared = layer != config.kv_source(layer)
        self.window = None if config.is_full(layer) else config.sliding_window
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

    def key_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) → k, v (B, K, T, H): normed, k rotated."""
        b, t, _ = x.shape
        k_raw = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim)  # (B, T, K, H)
        v_raw = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim) if self.v_proj is not None else k_raw
        k = apply_rope(self.k_norm(k_raw), cos, sin)
        v = rms_norm(v_raw, None, self.eps)  # value norm without scale, on every non-shared layer
        return k.transpose(1, 2), v.transpose(1, 2)  # (B, K, T, H)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | BandedMask | None,
        shared_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        queries: int = 0,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, S, D), cos/sin (B, S, H), mask (B, 1, T, S), a :class:`BandedMask` of it (long sliding
        layers), or None for plain causal attention (no padding; SDPA then skips the masked tiles)
        → (out (B, T, D), (k, v) (B, K, S, H)). Queries are the last ``queries`` positions when that is
        positive (keys and values still cover all S), else all of them (T = S)."""
        k, v = shared_kv if self.shared else self.key_values(x, cos, sin)
        if queries:
            x, cos, sin = x[:, -queries:], cos[:, -queries:], sin[:, -queries:]
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)  # (B, T, N, H)
        q = apply_rope(self.q_norm(q), cos, sin).transpose(1, 2)  # (B, N, T, H)
        gqa = self.n_heads != k.shape[1]
        if mask is None:
            out = scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0, enable_gqa=gqa)
        elif isinstance(mask, BandedMask):
            out = banded_attention(q, k, v, mask, gqa)
        else:
            out = scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # (B, T, N·H)
        return self.o_proj(out), (k, v)

    def decode(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache,
        layer: int,
        positions: torch.Tensor,
        shared_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        span: int | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One new token per row against the cache: x (B, 1, D), cos/sin (B, 1, H), mask (B, 1, 1, C), positions
        (B,) → (out (B, 1, D), (k, v) (B, K, C, H) for the layers that share them). A full layer reads its first
        ``span`` slots only when given (C = span: every row's position is below it), and so does a sliding layer
        while its ring is not yet full."""
        if self.shared:
            k, v = shared_kv
        else:
            k, v = cache.append(layer, *self.key_values(x, cos, sin), positions)
            if span is not None and span < v.shape[2]:  # the slots past ``span`` hold no position yet
                k = None if k is None else k[:, :, :span]
                v = v[:, :, :span]  # (B, K, span, H) views
            if k is None:  # K=V: the keys are the stored values with the key-norm scale and RoPE applied again
                k = self.keys_from_values(v, *(t[:, : v.shape[2]] for t in cache.full_rope))
        b = x.shape[0]
        q = self.q_proj(x).view(b, 1, self.n_heads, self.head_dim)  # (B, 1, N, H)
        q = apply_rope(self.q_norm(q), cos, sin).transpose(1, 2)  # (B, N, 1, H)
        out = scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=1.0, enable_gqa=self.n_heads != k.shape[1]
        )  # (B, N, 1, H)
        return self.o_proj(out.transpose(1, 2).reshape(b, 1, -1)), (k, v)

    def extend(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache,
        layer: int,
        old: int,
        write,
        shared_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        queries: int = 0,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """A chunk of a prompt after what ``cache`` holds: x (B, T, D), cos/sin (B, T, H), mask (B, 1, T', C + T)
        with C = ``old`` cache slots read (``model.masks.chunk_masks``) → (out (B, T', D), (k, v) (B, K, C + T, H)
        for the layers that share them). The chunk's K/V are stored by ``write(layer, k, v)`` once the cache has
        been read. T' = ``queries`` (the last ones) when positive, else T."""
        if self.shared:
            k, v = shared_kv
        else:
            k_new, v_new = self.key_values(x, cos, sin)  # (B, K, T, H)
            v_old = cache.values[layer][:, :, :old]  # (B, K, C, H)
            if layer in cache.keys:
                k_old = cache.keys[layer][:, :, :old]
            else:  # K=V: rebuilt from the values (full layers only: slot = position)
                k_old = self.keys_from_values(v_old, *(t[:, :old] for t in cache.full_rope))
            k, v = torch.cat([k_old, k_new], dim=2), torch.cat([v_old, v_new], dim=2)  # (B, K, C + T, H) copies
            write(layer, k_new, v_new)
        if queries:
            x, cos, sin = x[:, -queries:], cos[:, -queries:], sin[:, -queries:]
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)  # (B, T', N, H)
        q = apply_rope(self.q_norm(q), cos, sin).transpose(1, 2)  # (B, N, T', H)
        out = scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=1.0, enable_gqa=self.n_heads != k.shape[1]
        )  # (B, N, T', H)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), (k, v)

    def keys_from_values(self, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """A K=V layer's keys from its values: v (B, K, C, H) normed without scale, cos/sin (1, C, H) of slots
        0 … C−1 → k (B, K, C, H), as ``key_values`` computes them (the same float32 product, then RoPE)."""
        scaled = (v.float() * self.k_norm.weight.float()).type_as(v)
        return apply_rope(scaled.transpose(1, 2), cos, sin).transpose(1, 2)  # (B, C, K, H) rotated, then back


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BandedMask, gqa: bool) -> torch.Tensor:
    """Sliding attention block by block of query rows, each against only the keys it may see: O(T·W), not
    O(T²). q (B, N, T, H), k/v (B, K, S, H) → (B, N, T, H)."""
    outs = [
        scaled_dot_product_attention(
            q[:, :, start:stop], k[:, :, first:last], v[:, :, first:last], attn_mask=m, scale=1.0, enable_gqa=gqa
        )  # (B, N, rows, H)
        for start, stop, first, last, m in mask.blocks
    ]
    return torch.cat(outs, dim=2)
