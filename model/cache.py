"""The minimal hybrid KV cache of the text decoder (spec §1.3, §2.5, §2.7).

What each layer keeps, per sequence:

* a sliding layer: a ring buffer of exactly W positions of keys and values (position p in slot p mod W);
* a full layer: keys and values of the whole context (position p in slot p);
* a full layer with K=V (31B, 26B-A4B): the values only, since its keys are the same raw projection with the
  learned key-norm scale and RoPE applied, which are re-applied when the keys are read;
* a KV-shared layer: nothing (it reads the cache of its source layer).

Buffers are preallocated with fixed shapes and indexed by explicit positions (a decode step scatters one slot per
row and reads the whole buffer), so a step has the same shapes every time. Which slots are valid follows from
each row's logical position, never from what a slot holds: rows may have different lengths (left padding), finish
early, or be reset and refilled while the others go on.

Shapes: B batch rows, K KV heads, C slots (W for a sliding layer, the context for a full one), H head dim,
T prompt tokens.
"""

from __future__ import annotations

import copy

import torch

from .config import TextConfig

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
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        for layer, (slots, heads, dim, keeps_keys) in cache_layout(config, context).items():
            shape = (batch, heads, slots, dim)  # (B, K, C, H)
            self.values[layer] = torch.zeros(shape, device=device, dtype=dtype)
            if keeps_keys:
                self.keys[layer] = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))

    def _slots(self, layer: int, positions: torch.Tensor) -> torch.Tensor:
        return positions if self.config.is_full(layer) else positions % self.window

    # --- prefill ----------------------------------------------------------------------------------------------

    def write(
        self,
        layer: int,
        k: torch.Tensor,
        v: torch.Tensor,
        first: torch.Tensor,
        count: torch.Tensor,
        start: torch.Tensor | None = None,
        stop: int | None = None,
    ) -> None:
        """Store a run of tokens' K/V: k, v (B, K, T, H); row b's real tokens are the ``count[b]`` from index
        ``first[b]`` on (left or right padding), at positions ``start[b]`` … (0 … for a whole prompt). Each slot
        takes the latest of those positions that maps to it; a slot none maps to keeps what it held (earlier
        positions, or nothing valid: it is masked by position). ``stop``: a bound on the positions (a full layer
        then touches slots below it only)."""
        values = self.values[layer]
        full = self.config.is_full(layer)
        n = min(stop, values.shape[2]) if full and stop is not None else values.shape[2]
        slots = torch.arange(n, device=values.device)  # (n,)
        start = torch.zeros_like(count) if start is None else start
        begin, end = start[:, None], (start + count)[:, None]  # (B, 1): positions begin … end − 1
        if full:
            positions = slots[None, :].expand(len(count), -1)  # (B, n)
        else:
            positions = end - 1 - torch.remainder(end - 1 - slots[None, :], self.window)  # latest p ≡ slot (mod W)
        hit = ((positions >= begin) & (positions < end))[:, None, :, None]  # (B, 1, n, 1)
        index = (first[:, None] + positions - begin).clamp(0, k.shape[2] - 1)  # (B, n) token index
        index = index[:, None, :, None].expand(-1, values.shape[1], -1, values.shape[3])  # (B, K, n, H)
        for buffers, new in ((self.values, v), (self.keys, k)):
            if layer in buffers:
                kept = buffers[layer][:, :, :n]  # (B, K, n, H)
                kept.copy_(torch.where(hit, torch.gather(new, 2, index), kept))

    # --- decoding ---------------------------------------------------------------------------------------------

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Write one new token per row (k, v (B, K, 1, H) at ``positions`` (B,)); the layer's whole buffers
        (keys or None, values), (B, K, C, H)."""
        values = self.values[layer]
        index = self._slots(layer, positions)[:, None, None, None].expand(-1, values.shape[1], 1, values.shape[3])
        values.scatter_(2, index, v)
        keys = self.keys.get(layer)
        if keys is not None:
            keys.scatter_(2, index, k)
        return keys, values

    def span(self, longest: int) -> int | None:
        """The ``span`` for a decode step whose rows' positions are all below ``longest`` (a host number):
        rounded up to a multiple of ``SPAN_STEP`` slots so that shapes change rarely; None when that is the
        whole context."""
        span = -(-max(longest, 1) // self.SPAN_STEP) * self.SPAN_STEP
        return span if span < self.context else None

    def read_slots(self, full: bool, span: int | None = None) -> int:
        """How many slots of a full (or sliding) layer a decode step reads: all, or the first ``span``."""
        slots = self.context if full else min(self.window, self.context)
        return slots if span is None else min(span, slots)

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

    def row(self, index: int) -> KVCache:
        """A one-row view of this cache: a prefill through it writes straight into row ``index``'s buffers and
        length (the continuous engine admits a request into a slot this way)."""
        view = copy.copy(self)
        view.batch = 1
        view.keys = {layer: t[index : index + 1] for layer, t in self.keys.items()}  # (1, K, C, H) views
        view.values = {layer: t[index : index + 1] for layer, t in self.values.items()}
        view.lengths = self.lengths[index : index + 1]  # (1,) view
        return view

    def reset(self, rows: torch.Tensor) -> None:
        """Forget rows (bool (B,) or indices): their length becomes 0; their slots are then masked."""
        self.lengths[rows] = 0
