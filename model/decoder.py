"""The Gemma 4 text decoder (spec §2.2–§2.4, §2.9): scaled embeddings, per-layer embeddings, decoder layers,
final norm, tied output embedding with a logit soft-cap, and the MoE block of 26B-A4B (``model.moe``).

Every call — a whole prompt (``forward``), a chunk after what the cache holds (``extend``, which the chunks of
``prefill`` and the runtime's mixed steps use), one token per row (``decode``) — is planned once on the host into a
:class:`~model.step.StepMeta` and runs the one layer loop (``run``); ``compute_logits`` holds the soft-cap. The
residual stream is flat, (B·T, D): a decode step's projections are plain matrix products, no reshapes.

Shapes: B batch, T tokens, D model dim, L layers, P per-layer-embedding width, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace

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
from .rope import Float32Frequencies, inverse_frequencies, rope_cos_sin, signed_sin
from .step import KINDS, StepMeta, additive

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
        self.index = layer

    def forward(
        self,
        h: torch.Tensor,
        meta: StepMeta,
        cache: KVCache | None = None,
        shared_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        queries: StepMeta | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """h (B·T, D) → (h (B·T', D), the (k, v) its attention read). With ``queries`` (the plan of each row's last
        T' tokens) only those are computed past the K/V projection, else T' = T."""
        a, kv = self.self_attn(self.input_layernorm(h), meta, cache, shared_kv, queries)
        if queries is not None:
            h, meta = queries.take(h), queries  # (B·T', D)
        ple = None if meta.ple is None else meta.ple[:, self.index]  # (B·T', P)
        return self._feed_forward(h, a, ple), kv

    def store(self, h: torch.Tensor, meta: StepMeta, cache: KVCache) -> None:
        """Only this layer's K/V of h (B·T, D) into ``cache``: what a prompt chunk before the last needs of the last
        cache-writing layer."""
        attention = self.self_attn
        cache.write(attention.layer, *attention.key_values(self.input_layernorm(h), meta), meta)

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
            gated = gelu(self.per_layer_input_gate(h), approximate="tanh").mul_(ple)  # (B·T, P)
            h = add(h, self.post_per_layer_input_norm(self.per_layer_projection(gated)))
        return mul(h, self.layer_scalar)

    def _moe(self, r: torch.Tensor) -> torch.Tensor:
        """r (B·T, D) residual → the experts' branch (B·T, D), before the shared post-norm (spec §2.8)."""
        weights, experts = self.router(r)
        return self.post_feedforward_layernorm_2(self.experts(self.pre_feedforward_layernorm_2(r), weights, experts))


class TextDecoder(Float32Frequencies, nn.Module):
    """Token ids → logits. ``forward(input_ids, attention_mask, mm_token_type_ids=None, inputs_embeds=None)``.

    ``ple_on_host``: keep the per-layer-embedding table (``embed_tokens_per_layer``) in host memory, a
    :class:`~model.host.HostEmbedding` that ``.to(device)`` does not move, while everything else goes to the
    device; only the rows of the current tokens are sent there (see :meth:`per_layer_inputs`). Ignored by a
    config without per-layer embeddings. The first parameter (``embed_tokens``) is always on the compute device."""

    FREQUENCY_BUFFERS = ("sliding_freq", "full_freq")

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
        # float32 whatever the model is cast to (model.rope.Float32Frequencies)
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
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask, padded = torch.ones_like(input_ids, dtype=torch.bool), False
        if cache is not None and t > cache.context:
            raise ValueError(f"a prompt of {t} tokens does not fit a cache of {cache.context} positions")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        types = mm_token_type_ids if c.bidirectional == "vision" else None
        if padded is None:
            padded = not bool(attention_mask.all())
        if types is None:
            vision_span = 0
        elif vision_span is None:  # a bound: the vision tokens of the fullest row
            vision_span = int(((types == Modality.IMAGE) | (types == Modality.VIDEO)).sum(dim=1).max())
        keep = logits_to_keep if 0 < logits_to_keep < t else 0
        meta = self._plan_prompt(input_ids, x, attention_mask, types, padded, vision_span, keep, cache)
        h = self.run(x.reshape(b * t, -1), meta, cache)  # (B·T', D)
        if cache is not None:
            cache.lengths.copy_(attention_mask.sum(dim=1))
        return self.compute_logits(h).view(b, keep or t, -1)

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
        ``model.gemma4.chunk_bounds``). Each chunk attends to the cache and to itself, so the activations and
        masks of one chunk at a time are alive, not the whole prompt's. Yields None after each chunk but the
        last, then the logits (B, K, V) of the last K = ``logits_to_keep`` positions (at most the last chunk's
        length). Chunks before the last stop at the last cache-writing layer: KV-shared layers write nothing, so
        only the last chunk runs them. Each row's cache length counts its real tokens so far after every chunk."""
        c, t = self.config, input_ids.shape[1]
        bounds = list(bounds)
        if bounds[0] != 0 or bounds[-1] != t or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"chunk bounds must rise from 0 to the prompt length {t}, got {bounds}")
        if not 0 < logits_to_keep <= bounds[-1] - bounds[-2]:
            raise ValueError(
                f"a chunked prefill keeps logits of the last chunk only ({bounds[-1] - bounds[-2]} positions), "
                f"got logits_to_keep={logits_to_keep}"
            )
        if t > cache.context:
            raise ValueError(f"a prompt of {t} tokens does not fit a cache of {cache.context} positions")
        x_all = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        real_all = attention_mask.bool()  # (B, T)
        seen = real_all.long().cumsum(dim=1)  # (B, T) real tokens up to each index
        positions_all = (seen - 1).clamp(min=0)  # (B, T)
        before_all = seen - real_all.long()  # (B, T) real tokens before each index
        types_all = mm_token_type_ids if c.bidirectional == "vision" else None
        for a, b in zip(bounds, bounds[1:], strict=False):
            last = b == t
            ids, x, real = input_ids[:, a:b], x_all[:, a:b], real_all[:, a:b]  # (B, T_c …)
            types = None if types_all is None else types_all[:, a:b]
            keep = logits_to_keep if last else 1
            fresh = (True, b if types is not None else 0) if a == 0 else None  # nothing cached: a prompt of its own
            logits = self.extend(
                ids,
                real,
                before_all[:, a],
                b,
                min(cache.ring, a),
                cache=cache,
                inputs_embeds=x,
                mm_token_type_ids=types,
                logits_to_keep=keep,
                whole=last,
                positions=positions_all[:, a:b],
                fresh=fresh,
            )
            if not last:
                yield None
                continue
            yield logits[:, -logits_to_keep:]

    def extend(
        self,
        input_ids: torch.Tensor,
        real: torch.Tensor,
        start: torch.Tensor,
        stop: int,
        ring_read: int,
        *,
        cache: KVCache,
        inputs_embeds: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        logits_to_keep: int = 1,
        whole: bool = True,
        positions: torch.Tensor | None = None,
        fresh: tuple[bool, int] | None = None,
    ) -> torch.Tensor | None:
        """Tokens after what ``cache`` holds, each row its own: input_ids (B, T) (the pad id at media placeholders
        when ``inputs_embeds`` holds their soft tokens), real (B, T) bool (a row's tokens are contiguous; left
        padding puts every row's last token at T − 1), start (B,) the tokens each row holds already → logits
        (B, K, V) of the last K = ``logits_to_keep`` positions, or None when ``whole`` is False (only the cache is
        filled). Host bounds: every position is below ``stop``; ring slots past ``ring_read`` hold no position
        before the step (``min(ring, most tokens held by a row)``). Each row's cache length becomes start +
        its real tokens. Prompt chunks and one-token decodes of different rows run together this way. ``fresh``:
        every row starts at position 0 (nothing cached before), with the host facts (some row is padded, the
        most soft tokens of one image): then the step is planned as a prompt (its own keys, causal or banded
        masks)."""
        b, t = input_ids.shape
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        if positions is None:
            positions = start[:, None] + (real.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        types = mm_token_type_ids if self.config.bidirectional == "vision" else None
        keep = logits_to_keep if 0 < logits_to_keep < t else 0
        if fresh is not None:
            padded, vision_span = fresh
            meta = self._plan_prompt(
                input_ids, x, real, types, padded, vision_span if types is not None else 0, keep, cache
            )
        else:
            meta = self._plan_chunk(input_ids, x, real, positions, start, stop, ring_read, types, keep, cache)
        h = self.run(x.reshape(b * t, -1), meta, cache, whole=whole)
        cache.lengths.copy_(start + real.sum(dim=1))
        return None if h is None else self.compute_logits(h).view(b, keep or t, -1)

    def new_cache(
        self, batch: int, context: int, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty cache for ``batch`` rows of up to ``context`` tokens (prompt and generated), on the weights'
        device and in their dtype unless told otherwise."""
        weight = self.embed_tokens.weight
        cache = KVCache(self.config, batch, context, device=device or weight.device, dtype=dtype or weight.dtype)
        slots = torch.arange(context, device=cache.lengths.device)[None]  # (1, C): full layers' slot = position
        cos, sin = rope_cos_sin(slots, self.full_freq, dtype or weight.dtype)  # for K=V layers' keys
        cache.full_rope = (cos[0], signed_sin(sin[0]))  # (C, H) each
        return cache

    def decode(self, input_ids: torch.Tensor, cache: KVCache, *, span: int | None = None) -> torch.Tensor:
        """One new token per row after what ``cache`` holds: input_ids (B, 1) → logits (B, 1, V); each row's
        length grows by one. Shapes are the same at every step, and nothing is read back from the device (but
        the ids, when the per-layer-embedding table is on the host: :meth:`per_layer_inputs`).

        ``span`` (from :meth:`KVCache.span`, planned on the host): a bound on every row's position + 1; full
        layers then attend over their first ``span`` slots instead of the whole context (and sliding layers over
        as many, while that is less than the window). Shapes change only when the bound crosses a step of
        ``KVCache.SPAN_STEP`` slots."""
        b = input_ids.shape[0]
        x = self.embed(input_ids)  # (B, 1, D)
        meta = self._plan_decode(input_ids, x, cache.lengths, cache, span)
        h = self.run(x.view(b, -1), meta, cache)  # (B, D)
        cache.lengths.add_(1)
        return self.compute_logits(h).view(b, 1, -1)

    def run(self, h: torch.Tensor, meta: StepMeta, cache: KVCache | None = None, *, whole: bool = True):
        """The one layer loop of every step: h (B·T, D) input embeddings → the final hidden states (B·T', D), T'
        the kept tokens (``meta.narrow``) from the last cache-writing layer on. ``whole`` False (a prompt chunk
        before the last): only the cache is filled, the loop stops at the last cache-writing layer and returns
        None."""
        c = self.config
        narrow_from = c.first_shared_layer - 1  # the last cache-writing layer
        shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, layer in enumerate(self.layers):
            if i == narrow_from and not whole:
                layer.store(h, meta, cache)  # the KV-shared layers after it write nothing
                return None
            queries = meta.narrow if i == narrow_from else None
            source = c.kv_source(i)
            h, kv = layer(h, meta, cache, shared.get(source), queries)
            if queries is not None:
                meta = queries
            if source == i and i in self._sources:  # kept for the KV-shared layers that read it
                shared[i] = kv
        return h

    def compute_logits(self, h: torch.Tensor) -> torch.Tensor:
        """h (…, D) → logits (…, V) through the final norm and the tied embedding, soft-capped (spec §2.9)."""
        logits = nn.functional.linear(self.norm(h), self.embed_tokens.weight)
        cap = self.config.final_logit_softcap
        if not cap:
            return logits
        if torch.is_grad_enabled():
            return torch.tanh(logits / cap) * cap
        return logits.div_(cap).tanh_().mul_(cap)  # in place on the fresh logits: the same values, no temporaries

    # --- step plans ------------------------------------------------------------------------------------------

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """positions (B, T) → kind → (cos, signed sin) (B·T, 1, H)."""
        out = {}
        for kind, freq in (("full", self.full_freq), ("sliding", self.sliding_freq)):
            cos, sin = rope_cos_sin(positions.reshape(-1, 1), freq, dtype)  # (B·T, 1, H)
            out[kind] = (cos, signed_sin(sin))
        return out

    def _ple(self, input_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        if not self.config.ple_dim:
            return None
        return self.per_layer_inputs(input_ids, x).flatten(0, 1)  # (B·T, L, P)

    def _writes(self, cache: KVCache | None, positions: torch.Tensor, real: torch.Tensor, end: torch.Tensor):
        """Cache slots of a step's tokens (B, T) per kind: a real token at position p goes to slot p (full) or
        p mod W (sliding, and only if no later token of the same step maps there: p ≥ end − W); anything else to
        the spare slot. end (B,): each row's position after the step."""
        if cache is None:
            return None
        window = self.config.sliding_window
        ring = real & (positions >= end[:, None] - window)
        return {
            "full": torch.where(real, positions, cache.spare(True)),
            "sliding": torch.where(ring, positions % window, cache.spare(False)),
        }

    def _plan_prompt(self, input_ids, x, attention_mask, types, padded, vision_span, keep, cache) -> StepMeta:
        """A prompt from position 0 (B, T): every layer attends to the step's own keys (a cache stores them)."""
        t = input_ids.shape[1]
        real = attention_mask.bool()
        positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        masks = self._masks(attention_mask, types, padded, vision_span, x.dtype)
        write = self._writes(cache, positions, real, real.sum(dim=1))
        meta = self._meta(input_ids, x, positions, masks, {"full": "own", "sliding": "own"}, write, (t, t))
        if not keep:
            return meta
        narrow = self._masks(attention_mask, types, padded, vision_span, x.dtype, rows=keep)
        return replace(meta, narrow=meta.narrowed(keep, narrow))

    def _plan_chunk(self, input_ids, x, real, positions, start, stop, ring, types, keep, cache) -> StepMeta:
        """A chunk (B, T) after ``start`` (B,) real tokens each in ``cache``; positions below ``stop`` (host):
        full layers write, then read the first ``stop`` slots; sliding layers join the first ``ring`` ring slots,
        read before the write, with the chunk."""
        c = self.config
        masks = chunk_masks(real, positions, start, c.sliding_window, stop, ring, types)
        masks = {kind: additive(m, x.dtype) for kind, m in masks.items()}
        write = self._writes(cache, positions, real, start + real.sum(dim=1))
        meta = self._meta(input_ids, x, positions, masks, {"full": "cache", "sliding": "joined"}, write, (stop, ring))
        if not keep:
            return meta
        return replace(meta, narrow=meta.narrowed(keep, {kind: m[:, :, -keep:] for kind, m in masks.items()}))

    def _plan_decode(self, input_ids, x, positions, cache, span) -> StepMeta:
        """One token per row at ``positions`` (B,): every layer writes, then reads its first slots. A row at
        position ``cache.context`` writes only the spare slots (a runner's idle row)."""
        p = positions[:, None]  # (B, 1)
        masks = {kind: additive(cache.mask(kind == "full", positions, span), x.dtype) for kind in KINDS}
        # a row at position C (the context: a row the step runs but nobody reads) writes the spare slots
        ring = torch.where(p < cache.context, p % self.config.sliding_window, cache.ring)
        spans = tuple(cache.read_slots(kind == "full", span) for kind in KINDS)
        return self._meta(
            input_ids, x, p, masks, {"full": "cache", "sliding": "cache"}, {"full": p, "sliding": ring}, spans
        )

    def _meta(self, input_ids, x, positions, masks, keys, write, spans: tuple[int, int]) -> StepMeta:
        """The plan of a step of tokens input_ids (B, T) with embeddings x (B, T, D) at positions (B, T)."""
        b, t = input_ids.shape
        return StepMeta(
            batch=b,
            tokens=t,
            rope=self._rope(positions, x.dtype),
            masks=masks,
            keys=keys,
            write=write,
            span=dict(zip(KINDS, spans, strict=True)),
            ple=self._ple(input_ids, x),
        )

    def _masks(
        self,
        attention_mask: torch.Tensor,
        types: torch.Tensor | None,
        padded: bool,
        vision_span: int,
        dtype: torch.dtype,
        rows: int = 0,
    ) -> dict:
        """Masks of a prompt per layer kind, additive (B, 1, T, S) in ``dtype``. With ``rows`` > 0: the last
        ``rows`` query rows. Otherwise (T = S) None where SDPA's causal kernel gives the same result (no padding;
        for sliding layers also T ≤ W and no vision block), and long sliding masks cut into blocks. ``types``
        only on the bidirectional presets; ``padded`` and ``vision_span`` are host facts (see ``forward``)."""
        c = self.config
        t = attention_mask.shape[1]
        if rows:
            return {
                "full": additive(full_mask(attention_mask, rows), dtype),
                "sliding": additive(sliding_mask(attention_mask, c.sliding_window, types, rows), dtype),
            }
        plain = not padded
        if plain and t <= c.sliding_window and not vision_span:
            sliding = None  # every earlier key is inside the window: plain causal attention
        else:
            sliding = sliding_mask(attention_mask, c.sliding_window, types)
            if t > c.sliding_window + BAND_BLOCK:
                reach = (c.sliding_window - 1, max(vision_span - 1, 0))  # window back; a vision block ahead
                sliding = banded_mask(sliding, BAND_BLOCK, dtype, reach)
            else:
                sliding = additive(sliding, dtype)
        return {"full": None if plain else additive(full_mask(attention_mask), dtype), "sliding": sliding}
