"""The Gemma 4 text decoder (spec §2.2–§2.4, §2.9): scaled embeddings, per-layer embeddings, decoder layers,
final norm, tied output embedding with a logit soft-cap, and the MoE block of 26B-A4B (``model.moe``).

Shapes: B batch, T tokens, D model dim, L layers, P per-layer-embedding width, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.functional import gelu

from data_specs.media import Modality

from .attention import Attention
from .cache import KVCache
from .config import TextConfig
from .host import HostEmbedding
from .masks import banded_mask, chunk_masks, full_mask, sliding_mask
from .moe import Experts, Router
from .norm import RMSNorm
from .rope import inverse_frequencies, rope_cos_sin

__all__ = ["MLP", "DecoderLayer", "TextDecoder"]

gelu_ = torch._C._nn.gelu_  # in-place GELU (the functional API has none): the same values as gelu

# Query rows per block of banded sliding attention: each block reads BAND_BLOCK + W − 1 keys, so small
# blocks waste little on the band's corners (64 rows: 1.12× the exact band at W = 512; fastest on CPU).
BAND_BLOCK = 64


class MLP(nn.Module):
    """``(GELU_tanh(x·W_gateᵀ) ⊙ x·W_upᵀ)·W_downᵀ``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GELU in place when no gradient is wanted: one (N, F) temporary fewer, the same values
        gate = self.gate_proj(x)  # (…, F)
        gate = gelu_(gate, approximate="tanh") if not torch.is_grad_enabled() else gelu(gate, approximate="tanh")
        return self.down_proj(gate.mul_(self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig, layer: int) -> None:
        super().__init__()
        d, eps = config.d_model, config.rms_eps
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(d, config.layer_d_ff(layer))
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.pre_feedforward_layernorm = RMSNorm(d, eps)
        self.post_feedforward_layernorm = RMSNorm(d, eps)
        self.moe = config.n_experts > 0
        if self.moe:
            self.router = Router(d, config.n_experts, config.top_k_experts, eps)
            self.experts = Experts(d, config.n_experts, config.moe_d_ff)
            self.post_feedforward_layernorm_1 = RMSNorm(d, eps)
            self.pre_feedforward_layernorm_2 = RMSNorm(d, eps)
            self.post_feedforward_layernorm_2 = RMSNorm(d, eps)
        self.ple = config.ple_dim > 0
        if self.ple:
            self.per_layer_input_gate = nn.Linear(d, config.ple_dim, bias=False)
            self.per_layer_projection = nn.Linear(config.ple_dim, d, bias=False)
            self.post_per_layer_input_norm = RMSNorm(d, eps)
        self.register_buffer("layer_scalar", torch.ones(1))

    def forward(self, h, cos, sin, mask, ple=None, shared_kv=None, rows: int = 0):
        """h (B, S, D), ple (B, T, P) or None → (h (B, T, D), this layer's (k, v)). With ``rows`` > 0 only
        the last ``rows`` positions are computed (T = rows; K/V still cover all S), else T = S."""
        a, kv = self.self_attn(self.input_layernorm(h), cos, sin, mask, shared_kv, rows)
        if rows:
            h = h[:, -rows:]  # (B, T, D)
        return self._feed_forward(h, a, ple), kv

    def decode(self, h, cos, sin, mask, ple, cache, layer: int, positions, shared_kv=None, span=None):
        """One token per row against the cache: h (B, 1, D) → (h (B, 1, D), the (k, v) its attention read)."""
        a, kv = self.self_attn.decode(self.input_layernorm(h), cos, sin, mask, cache, layer, positions, shared_kv, span)
        return self._feed_forward(h, a, ple), kv

    def extend(self, h, cos, sin, mask, ple, cache, layer: int, old: int, write, shared_kv=None, rows: int = 0):
        """A chunk of a prompt against the cache (``Attention.extend``): h (B, T, D) → (h (B, T', D), the (k, v)
        its attention read); T' = ``rows`` (the last ones) when positive, else T."""
        a, kv = self.self_attn.extend(
            self.input_layernorm(h), cos, sin, mask, cache, layer, old, write, shared_kv, rows
        )
        if rows:
            h = h[:, -rows:]  # (B, T', D)
        return self._feed_forward(h, a, ple), kv

    def _feed_forward(self, h: torch.Tensor, a: torch.Tensor, ple: torch.Tensor | None) -> torch.Tensor:
        """The residual stream after attention output ``a``: MLP (and experts), per-layer input, layer scale."""
        h = h + self.post_attention_layernorm(a)  # a new tensor, so later updates may write into it …
        inplace = not torch.is_grad_enabled()  # … unless autograd needs the earlier values
        add, mul = (torch.Tensor.add_, torch.Tensor.mul_) if inplace else (torch.add, torch.mul)
        dense = self.mlp(self.pre_feedforward_layernorm(h))
        if self.moe:
            h = add(h, self.post_feedforward_layernorm(self.post_feedforward_layernorm_1(dense) + self._moe(h)))
        else:
            h = add(h, self.post_feedforward_layernorm(dense))
        if self.ple:
            gated = gelu(self.per_layer_input_gate(h), approximate="tanh").mul_(ple)  # (B, T, P)
            h = add(h, self.post_per_layer_input_norm(self.per_layer_projection(gated)))
        return mul(h, self.layer_scalar)

    def _moe(self, r: torch.Tensor) -> torch.Tensor:
        """r (B, T, D) residual → the experts' branch (B, T, D), before the shared post-norm (spec §2.8)."""
        flat = r.reshape(-1, r.shape[-1])  # (N, D)
        weights, experts = self.router(flat)
        y = self.experts(self.pre_feedforward_layernorm_2(flat), weights, experts)
        return self.post_feedforward_layernorm_2(y).view_as(r)


class TextDecoder(nn.Module):
    """Token ids → logits. ``forward(input_ids, attention_mask, mm_token_type_ids=None, inputs_embeds=None)``.

    ``ple_on_host``: keep the per-layer-embedding table (``embed_tokens_per_layer``) in host memory, a
    :class:`~model.host.HostEmbedding` that ``.to(device)`` does not move, while everything else goes to the
    device; only the rows of the current tokens are sent there (see :meth:`per_layer_inputs`). Ignored by a
    config without per-layer embeddings. The first parameter (``embed_tokens``) is always on the compute device."""

    def __init__(self, config: TextConfig, *, ple_on_host: bool = False) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed_tokens = nn.Embedding(config.vocab_size, d)  # first: next(parameters()) names the device
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(d, config.rms_eps)
        if config.ple_dim:
            p, n = config.ple_dim, config.n_layers
            table = HostEmbedding if ple_on_host else nn.Embedding
            self.embed_tokens_per_layer = table(config.ple_vocab_size, n * p)
            self.per_layer_model_projection = nn.Linear(d, n * p, bias=False)
            self.per_layer_projection_norm = RMSNorm(p, config.rms_eps)
        self._sources = {config.kv_source(i) for i in range(config.first_shared_layer, config.n_layers)}
        self.register_buffer("sliding_freq", torch.empty(config.head_dim // 2), persistent=False)
        self.register_buffer("full_freq", torch.empty(config.global_head_dim // 2), persistent=False)
        self.reset_buffers()

    @property
    def ple_on_host(self) -> bool:
        """Whether the per-layer-embedding table stays in host memory (a :class:`~model.host.HostEmbedding`)."""
        return isinstance(getattr(self, "embed_tokens_per_layer", None), HostEmbedding)

    def reset_buffers(self, device: str | torch.device | None = None) -> None:
        """(Re)compute the non-persistent RoPE frequencies, e.g. after building on the meta device."""
        c, rope = self.config, self.config.rope
        device = torch.device(device) if device is not None else self.sliding_freq.device
        if device.type == "meta":
            return
        self.sliding_freq = inverse_frequencies(c.head_dim, rope.sliding_theta, 1.0, rope.sliding_factor).to(device)
        self.full_freq = inverse_frequencies(
            c.global_head_dim, rope.full_theta, rope.full_partial_rotary, rope.full_factor
        ).to(device)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) → (B, T, D): E[id] · sqrt(D), the scale rounded to the weight dtype first (spec §2.2)."""
        weight = self.embed_tokens.weight
        return self.embed_tokens(input_ids).mul_(torch.tensor(math.sqrt(self.config.d_model), dtype=weight.dtype))

    def per_layer_inputs(self, input_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, T) int64 ids and the final input embeddings (B, T, D) → (B, T, L, P) per-layer embeddings in x's
        dtype (spec §2.3).

        With the table on the host (``ple_on_host``), the ids are copied to the host, which on an accelerator
        waits for the work queued before (the one device→host read this option adds, at every prefill and every
        decode step); the (B, T, L·P) rows gathered there are sent to the device without waiting."""
        c = self.config
        b, t = input_ids.shape
        rows = self.embed_tokens_per_layer(input_ids).to(x.dtype)  # (B, T, L·P); a host table may keep its dtype
        table = rows * math.sqrt(c.ple_dim)  # (B, T, L·P)
        table = table.view(b, t, c.n_layers, c.ple_dim)  # (B, T, L, P)
        context = self.per_layer_model_projection(x) * c.d_model**-0.5  # (B, T, L·P)
        context = self.per_layer_projection_norm(context.view(b, t, c.n_layers, c.ple_dim))  # (B, T, L, P)
        return (context + table) * 2**-0.5

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        *,
        padded: bool | None = None,
        vision_span: int | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) → logits (B, T, V) in the weights' dtype; only the last ``logits_to_keep``
        positions when it is positive. A prefill needs just the last one: the output projection then shrinks
        to one row, the KV-shared layers (which write no cache) run on the kept positions only, as the
        reference does, and so does all but the K/V projection of the last cache-writing layer (the reference
        runs that layer on every position). Positions count real tokens.

        ``padded`` (some row has padding) and ``vision_span`` (the most soft tokens of one image or video frame)
        are host facts a :class:`data_specs.batch.Batch` carries; given, the masks are planned without reading the
        device. Left out, they are read from ``attention_mask`` and ``mm_token_type_ids`` (a synchronisation).

        With ``cache`` (from :meth:`new_cache`, as many rows), the prompt's K/V are stored in it for
        :meth:`decode`, and each row's length becomes its number of real tokens."""
        c = self.config
        if attention_mask is None:
            attention_mask, padded = torch.ones_like(input_ids, dtype=torch.bool), False
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        ple = self.per_layer_inputs(input_ids, x) if c.ple_dim else None  # (B, T, L, P)
        types = mm_token_type_ids if c.bidirectional == "vision" else None
        if padded is None:
            padded = not bool(attention_mask.all())
        if types is None:
            vision_span = 0
        elif vision_span is None:  # a bound: the vision tokens of the fullest row
            vision_span = int(((types == Modality.IMAGE) | (types == Modality.VIDEO)).sum(dim=1).max())
        masks = self._masks(attention_mask, types, padded, vision_span, x.dtype)
        rope = {
            kind: rope_cos_sin(positions, freq, x.dtype)
            for kind, freq in (("full", self.full_freq), ("sliding", self.sliding_freq))
        }
        if cache is not None:
            count = attention_mask.sum(dim=1)  # (B,) real tokens
            first = attention_mask.int().argmax(dim=1)  # (B,) index of the first one (left or right padding)
            cache.lengths.copy_(count)
        keep = logits_to_keep if 0 < logits_to_keep < x.shape[1] else 0
        # With ``keep``, layers after the last cache-writing one need only the kept rows (their K/V come from
        # earlier layers), and that last one needs all rows only for its K/V: it computes the rest on kept rows.
        narrow_from = c.first_shared_layer - 1
        caches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        h = x
        for i, layer in enumerate(self.layers):
            rows = keep if i == narrow_from else 0
            if rows:  # from here on only the kept rows matter (this layer's K/V aside)
                masks = self._masks(attention_mask, types, padded, vision_span, rows=keep)
                ple = None if ple is None else ple[:, -keep:]  # (B, keep, L, P)
            kind = "full" if c.is_full(i) else "sliding"
            source = c.kv_source(i)
            h, kv = layer(h, *rope[kind], masks[kind], None if ple is None else ple[:, :, i], caches.get(source), rows)
            if source == i:
                if i in self._sources:  # kept for the KV-shared layers that read it; the others' are let go
                    caches[i] = kv
                if cache is not None:
                    cache.write(i, *kv, first, count)
            if rows:
                rope = {kind: (cos[:, -keep:], sin[:, -keep:]) for kind, (cos, sin) in rope.items()}
        logits = nn.functional.linear(self.norm(h), self.embed_tokens.weight)  # (B, T', V), tied (h already narrowed)
        if c.final_logit_softcap:
            logits = torch.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
        return logits

    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        bounds: Sequence[int],
        *,
        cache: KVCache,
        mm_token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 1,
    ) -> Iterator[torch.Tensor | None]:
        """A prompt into ``cache`` chunk by chunk: tokens ``bounds[j]`` … ``bounds[j + 1]`` − 1 form chunk j
        (``bounds`` from 0 to T, rising; on the "vision" presets no chunk may split an image's soft tokens, see
        ``model.gemma4.chunk_bounds``). Each chunk attends to the cache and to itself, then is stored, so the
        activations and masks of one chunk at a time are alive, not the whole prompt's. Yields None after each
        chunk but the last, then the logits (B, K, V) of the last K = ``logits_to_keep`` positions (at most the
        last chunk's length). Chunks before the last stop at the last cache-writing layer: KV-shared layers write
        nothing, so only the last chunk runs them. Each row's cache length counts its real tokens so far after
        every chunk (a decode step in between, as the engine runs one, writes where the next chunk overwrites)."""
        c, t = self.config, input_ids.shape[1]
        bounds = list(bounds)
        if bounds[0] != 0 or bounds[-1] != t or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"chunk bounds must rise from 0 to the prompt length {t}, got {bounds}")
        if not 0 < logits_to_keep <= bounds[-1] - bounds[-2]:
            raise ValueError(
                f"a chunked prefill keeps logits of the last chunk only ({bounds[-1] - bounds[-2]} positions), "
                f"got logits_to_keep={logits_to_keep}"
            )
        x_all = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        real_all = attention_mask.bool()  # (B, T)
        seen = real_all.long().cumsum(dim=1)  # (B, T) real tokens up to each index
        positions_all = (seen - 1).clamp(min=0)  # (B, T)
        before_all = seen - real_all.long()  # (B, T) real tokens before each index
        types_all = mm_token_type_ids if c.bidirectional == "vision" else None
        ring = min(c.sliding_window, cache.context)
        narrow_from = c.first_shared_layer - 1  # the last cache-writing layer
        for a, b in zip(bounds, bounds[1:], strict=False):
            last = b == t
            ids, x, real = input_ids[:, a:b], x_all[:, a:b], real_all[:, a:b]  # (B, T_c …)
            positions, start = positions_all[:, a:b], before_all[:, a]  # (B, T_c), (B,)
            count, first = real.sum(dim=1), real.int().argmax(dim=1)  # (B,)
            types = None if types_all is None else types_all[:, a:b]
            masks = chunk_masks(real, positions, start, c.sliding_window, a, ring, types)
            ple = self.per_layer_inputs(ids, x) if c.ple_dim else None  # (B, T_c, L, P)
            rope = {
                kind: rope_cos_sin(positions, freq, x.dtype)
                for kind, freq in (("full", self.full_freq), ("sliding", self.sliding_freq))
            }

            def write(layer, k, v, first=first, count=count, start=start, stop=b):
                cache.write(layer, k, v, first, count, start, stop)

            keep = logits_to_keep if last and logits_to_keep < b - a else 0
            shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            h = x
            for i, layer in enumerate(self.layers):
                kind = "full" if c.is_full(i) else "sliding"
                old = a if kind == "full" else ring
                if not last and i == narrow_from:  # only its K/V matter here
                    attn = layer.self_attn
                    write(i, *attn.key_values(layer.input_layernorm(h), *rope[kind]))
                    break
                rows = keep if i == narrow_from else 0
                if rows:  # from here on only the kept query rows (this layer's K/V aside)
                    masks = {kind: m[:, :, -keep:] for kind, m in masks.items()}
                    ple = None if ple is None else ple[:, -keep:]
                source = c.kv_source(i)
                layer_ple = None if ple is None else ple[:, :, i]
                h, kv = layer.extend(
                    h, *rope[kind], masks[kind], layer_ple, cache, i, old, write, shared.get(source), rows
                )
                if source == i and i in self._sources:
                    shared[i] = kv
                if rows:
                    rope = {kind: (cos[:, -keep:], sin[:, -keep:]) for kind, (cos, sin) in rope.items()}
            cache.lengths.copy_(start + count)
            if not last:
                yield None
                continue
            h = h[:, -logits_to_keep:]  # (B, K, D)
            logits = nn.functional.linear(self.norm(h), self.embed_tokens.weight)  # (B, K, V), tied
            if c.final_logit_softcap:
                logits = torch.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
            yield logits

    def new_cache(
        self, batch: int, context: int, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty cache for ``batch`` rows of up to ``context`` tokens (prompt and generated), on the weights'
        device and in their dtype unless told otherwise."""
        weight = self.embed_tokens.weight
        cache = KVCache(self.config, batch, context, device=device or weight.device, dtype=dtype or weight.dtype)
        slots = torch.arange(context, device=cache.lengths.device)[None]  # (1, C): full layers' slot = position
        cache.full_rope = rope_cos_sin(slots, self.full_freq, dtype or weight.dtype)  # for K=V layers' keys
        return cache

    def decode(self, input_ids: torch.Tensor, cache: KVCache, *, span: int | None = None) -> torch.Tensor:
        """One new token per row after what ``cache`` holds: input_ids (B, 1) → logits (B, 1, V); each row's
        length grows by one. Shapes are the same at every step, and nothing is read back from the device (but
        the ids, when the per-layer-embedding table is on the host: :meth:`per_layer_inputs`).

        ``span`` (from :meth:`KVCache.span`, planned on the host): a bound on every row's position + 1; full
        layers then attend over their first ``span`` slots instead of the whole context (and sliding layers over
        as many, while that is less than the window). Shapes change only when
        the bound crosses a step of ``KVCache.SPAN_STEP`` slots."""
        c = self.config
        positions = cache.lengths  # (B,) the new tokens' positions
        x = self.embed(input_ids)  # (B, 1, D)
        ple = self.per_layer_inputs(input_ids, x) if c.ple_dim else None  # (B, 1, L, P)
        rope = {
            kind: rope_cos_sin(positions[:, None], freq, x.dtype)
            for kind, freq in (("full", self.full_freq), ("sliding", self.sliding_freq))
        }
        masks = {kind: cache.mask(kind == "full", positions, span) for kind in ("full", "sliding")}  # (B, 1, 1, C)
        shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        h = x
        for i, layer in enumerate(self.layers):
            kind = "full" if c.is_full(i) else "sliding"
            source = c.kv_source(i)
            layer_ple = None if ple is None else ple[:, :, i]
            h, kv = layer.decode(h, *rope[kind], masks[kind], layer_ple, cache, i, positions, shared.get(source), span)
            if source == i and i in self._sources:
                shared[i] = kv
        cache.lengths.add_(1)
        logits = nn.functional.linear(self.norm(h), self.embed_tokens.weight)  # (B, 1, V), tied
        if c.final_logit_softcap:
            logits = torch.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
        return logits

    def _masks(
        self,
        attention_mask: torch.Tensor,
        types: torch.Tensor | None,
        padded: bool,
        vision_span: int,
        dtype: torch.dtype | None = None,
        rows: int = 0,
    ) -> dict:
        """Masks per layer kind, (B, 1, T, S) bool. With ``rows`` > 0: the last ``rows`` query rows, as they
        are. Otherwise (T = S) None where SDPA's causal kernel gives the same result (no padding; for sliding
        layers also T ≤ W and no vision block), and long sliding masks cut into blocks in ``dtype``. ``types``
        only on the bidirectional presets; ``padded`` and ``vision_span`` are host facts (see ``forward``)."""
        c = self.config
        t = attention_mask.shape[1]
        if rows:
            return {
                "full": full_mask(attention_mask, rows),
                "sliding": sliding_mask(attention_mask, c.sliding_window, types, rows),
            }
        plain = not padded
        if plain and t <= c.sliding_window and not vision_span:
            sliding = None  # every earlier key is inside the window: plain causal attention
        else:
            sliding = sliding_mask(attention_mask, c.sliding_window, types)
            if t > c.sliding_window + BAND_BLOCK:
                reach = (c.sliding_window - 1, max(vision_span - 1, 0))  # window back; a vision block ahead
                sliding = banded_mask(sliding, BAND_BLOCK, dtype, reach)
        return {"full": None if plain else full_mask(attention_mask), "sliding": sliding}
