"""The minimal hybrid KV cache of the text decoder (spec §1.3, §2.5, §2.7).

What each layer keeps, per sequence:

* a sliding layer: a ring buffer of exactly W positions of keys and values (position p in slot p mod W);
* a full layer: keys and values of the whole context (position p in slot p);
* a full layer with K=V (31B, 26B-A4B): the values only, since its keys are the same raw projection with the
  learned key-norm scale and RoPE applied, which are re-applied when the keys are read;
* a KV-shared layer: nothing (it reads the cache of its source layer).

Buffers are preallocated with fixed shapes and indexed by explicit slots: :meth:`KVCache.update` writes a step's
keys and values with one scatter per tensor at the slots the step's plan (:class:`model.step.StepMeta`) gives, and
returns what the layer attends to as views of the buffers (never a copy of the cached prefix), so a step has the
same shapes every time and reads nothing back. Each buffer has one spare slot past the last readable one: tokens
that must not be stored (padding of a row shorter than the step, or a ring position the same step overwrites)
are written there, and no read ever includes it. Which slots are valid follows from
each row's logical position, never from what a slot holds: rows may have different lengths (left padding), finish
early, or be reset and refilled while the others go on.

Shapes: B batch rows, K KV heads, C slots (W for a sliding layer, the context for a full one), H head dim,
T prompt tokens.
"""

from __future__ import annotations

import copy

import torch

from .config import TextConfig
from .rope import apply_rope
from .step import StepMeta

__all__ = ["KVCache", "cache_bytes", "cache_layout"]


def cache_layout(config: TextConfig, context: int) -> dict[int, tuple[int, int, int, bool]]:
    """For each cache-writing layer: (slots, KV heads, head dim, keeps keys)."""
    layout = {}
    for layer in range(config.n_layers):
        if config.kv_source(layer) != layer:
            continue  # KV-shared: reads its source's cache
        full = config.is_full(layer)
        slots = context if full else min(config.sliding_window, context)
        keeps_keys = config.layer_has_value_proj(layer)  # K=V layers rebuild their keys from the values
        layout[layer] = (slots, config.layer_kv_heads(layer), config.layer_head_dim(layer), keeps_keys)
    return layout


def cache_bytes(config: TextConfig, batch: int, context: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of the cache for ``batch`` sequences of up to ``context`` tokens: every key and value a layer reads,
    stored once. (A sliding layer holds W positions, the current token's included, since it is written before
    attention so that every step has one shape; a cache that appends the current token at attention time could
    hold W − 1, one position less per sliding layer.)"""
    size = torch.empty((), dtype=dtype).element_size()
    per_row = sum(
        slots * heads * dim * (2 if keys else 1) for slots, heads, dim, keys in cache_layout(config, context).values()
    )
    return batch * per_row * size


class KVCache:
    """Preallocated buffers for ``batch`` rows of up to ``context`` tokens, and each row's length (tokens in its
    context so far, on the device). Built by ``TextDecoder.new_cache``."""

    SPAN_STEP = 256  # a decode step's full layers read a multiple of this many slots (see ``span``)

    def __init__(
        self, config: TextConfig, batch: int, context: int, *, device: torch.device | str, dtype: torch.dtype
    ) -> None:
        if context < 1 or batch < 1:
            raise ValueError(f"a cache needs at least one row and one position, got batch={batch}, context={context}")
        self.config, self.batch, self.context = config, batch, context
        self.window = config.sliding_window
        self.ring = min(self.window, context)  # slots of a sliding layer
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        for layer, (slots, heads, dim, keeps_keys) in cache_layout(config, context).items():
            shape = (batch, heads, slots + 1, dim)  # (B, K, C + 1, H): the last slot is the spare one
            self.values[layer] = torch.zeros(shape, device=device, dtype=dtype)
            if keeps_keys:
                self.keys[layer] = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
        self.full_rope: tuple[torch.Tensor, torch.Tensor] | None = None  # (C, H) cos, signed sin of slot = position

    @property
    def nbytes(self) -> int:
        """Bytes of the slots the cache can hold (``cache_bytes``); the spare slots add one per layer and row."""
        return sum(t[:, :, :-1].numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))

    def update(
        self,
        layer: int,
        k: torch.Tensor,
        v: torch.Tensor,
        meta: StepMeta,
        *,
        key_scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one step's keys and values of ``layer``, k, v (B, K, T, H), at ``meta.write``'s slots, and return
        what the layer attends to (``meta.keys`` of its kind): the step's own k, v ("own"); views of the first
        ``meta.span`` slots, written first ("cache"); or the ring's first ``meta.span`` slots read before the
        write, then k, v ("joined"), (B, K, S, H). A K=V layer keeps no keys: given ``key_scale`` (its key-norm
        weight), its keys are rebuilt from the values read (learned scale, then RoPE of slot = position)."""
        kind = "full" if self.config.is_full(layer) else "sliding"
        how, span = meta.keys[kind], meta.span[kind]
        values, keys = self.values[layer], self.keys.get(layer)
        if how == "joined":  # the ring before this step's writes, then the step's own keys: (B, K, R' + T, H)
            joined_v = torch.cat([values[:, :, :span], v], dim=2)
            joined_k = torch.cat([keys[:, :, :span], k], dim=2) if keys is not None else joined_v
        self.write(layer, k, v, meta)
        if how == "own":
            return k, v
        if how == "joined":
            return joined_k, joined_v
        v_read = values[:, :, :span]  # (B, K, S, H) views
        if keys is not None:
            return keys[:, :, :span], v_read
        if key_scale is None:
            raise ValueError(f"layer {layer} keeps no keys (K=V): its key-norm scale is needed to rebuild them")
        cos, sin = (t[:span] for t in self.full_rope)  # (S, H): full layers' slot = position
        return apply_rope(v_read * key_scale, cos, sin), v_read

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, meta: StepMeta) -> None:
        """Only store k, v (B, K, T, H) at ``meta.write``'s slots: one scatter per tensor."""
        kind = "full" if self.config.is_full(layer) else "sliding"
        values = self.values[layer]
        index = meta.write[kind][:, None, :, None].expand(-1, values.shape[1], -1, values.shape[3])  # (B, K, T, H)
        values.scatter_(2, index, v)
        if layer in self.keys:
            self.keys[layer].scatter_(2, index, k)

    def span(self, longest: int) -> int | None:
        """The ``span`` for a decode step whose rows' positions are all below ``longest`` (a host number):
        rounded up to a multiple of ``SPAN_STEP`` slots so that shapes change rarely; None when that is the
        whole context."""
        span = -(-max(longest, 1) // self.SPAN_STEP) * self.SPAN_STEP
        return span if span < self.context else None

    def read_slots(self, full: bool, span: int | None = None) -> int:
        """How many slots of a full (or sliding) layer a decode step reads: all, or the first ``span``."""
        slots = self.context if full else self.ring
        return slots if span is None else min(span, slots)

    def spare(self, full: bool) -> int:
        """The index of a full (or sliding) layer's spare slot: where tokens that must not be stored go."""
        return self.context if full else self.ring

    def mask(self, full: bool, positions: torch.Tensor, span: int | None = None) -> torch.Tensor:
        """(B, 1, 1, C) bool: the slots a token at ``positions`` (B,) may attend to once it has been written
        (the first ``span`` slots at most when given: every position is below it, so a ring slot past it is
        empty too)."""
        slots = torch.arange(self.read_slots(full, span), device=positions.device)
        p = positions[:, None]  # (B, 1)
        if full:
            valid = slots[None, :] <= p
        else:
            valid = p - torch.remainder(p - slots[None, :], self.window) >= 0  # the slot's position exists
        return valid[:, None, None, :]

    def rows(self, count: int) -> KVCache:
        """A view of this cache's first ``count`` rows (buffers and lengths): a step of those rows reads and
        writes straight into this cache."""
        view = copy.copy(self)
        view.batch = count
        view.keys = {layer: t[:count] for layer, t in self.keys.items()}  # (count, K, C + 1, H) views
        view.values = {layer: t[:count] for layer, t in self.values.items()}
        view.lengths = self.lengths[:count]  # (count,) view
        return view
