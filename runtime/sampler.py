"""The sampler: each slot's settings kept on the device, and the draw of a step's tokens for the rows it ran.

Sampling is per row and reproducible: a row's random numbers come from a counter-based hash of (its seed, its
step, the token id) (a Gumbel-max draw), never from what else is in the batch: on the CPU in float32, where the
model is bit-exact whatever the batch, a seeded request draws the same tokens whatever its company, slot and
admission time (on CUDA the logits themselves change in their last bits with the batch shape). Two host facts keep the
step cheap: when no row of the step samples (every live row greedy) the draw is the argmax alone, no sort and no
noise; when every sampling row has a ``top_k``, the candidates are the ``max(top_k)`` largest logits
(``torch.topk``) instead of a sort of the whole vocabulary — the same tokens, since a row's survivors are its
first ``top_k`` candidates either way.

Shapes: S slots, R rows of a step (the first R slots), V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from data_specs.checks import SAMPLING_RULES, sampling_problem

__all__ = ["Sampler", "Sampling", "sample", "uniform"]

_M32 = 0xFFFFFFFF


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """One request's sampling settings. ``temperature`` 0 is greedy; ``top_k`` / ``top_p`` None keep every
    token; ``seed`` None draws one (then the request is not reproducible).

    The bounds are ``data_specs.checks.SAMPLING_RULES`` (the manifest's and OpenAI bodies' too), what the sampler
    can hold without overflow: ``temperature`` in [0, float32's largest], ``top_k`` in 1 … 2³¹ − 1, ``top_p`` in
    (0, 1], ``seed`` in 0 … 2⁶³ − 1; a ``bool`` is refused for each. A ``top_k`` at or above the vocabulary is
    valid and keeps every token (no cut), as vLLM and transformers read it: the vocabulary is the model's, not the
    request's, and nothing is clamped. Values are stored in float32 on the device: a temperature below float32's
    smallest (≈ 1e-45) is greedy there, a top_p that small keeps only the likeliest token."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in SAMPLING_RULES:
            value = getattr(self, name)
            if (value is not None or name == "temperature") and sampling_problem(name, value):
                optional = "" if name == "temperature" else " or None"
                raise ValueError(f"{name} must be {SAMPLING_RULES[name]}{optional}, got {value!r}")

    def row(self) -> tuple[float, int, float, int]:
        """This request as one row of :func:`sample`'s settings: (temperature, top_k (0 = all), top_p (1 = all),
        seed). A missing seed is drawn here, once."""
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())
        return self.temperature, self.top_k or 0, 1.0 if self.top_p is None else self.top_p, seed


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix of int64 values in [0, 2³²) (multipliers below 2³¹: no int64 overflow)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


def uniform(seeds: torch.Tensor, step: int | torch.Tensor, vocab: int) -> torch.Tensor:
    """seeds (B,) int64, step an int or (B,) → (B, V) float64 in (0, 1), a function of (seed, step, token id)."""
    key = _hash32(_hash32(seeds & _M32) ^ ((seeds >> 32) & _M32))  # (B,)
    key = _hash32(key ^ step)  # (B,)
    tokens = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    bits = _hash32(_hash32(key[:, None] ^ tokens[None, :]) ^ (tokens[None, :] >> 32))  # (B, V)
    return (bits.double() + 0.5) / 2.0**32


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seeds: torch.Tensor,
    step: int | torch.Tensor,
    candidates: int | None = None,
) -> torch.Tensor:
    """Next tokens (R,) int64 from logits (R, V) and per-row settings (R,): temperature (0 = greedy), top_k
    (0 = all), top_p (1 = all), seeds; ``step``: every row's step, or (R,) one per row. ``candidates``: a host
    bound on every sampling row's top_k (None: some row keeps every token), so only that many are sorted."""
    logits = logits.float()
    vocab = logits.shape[-1]
    greedy = logits.argmax(dim=-1)  # (R,)
    scaled = logits / temperature.clamp(min=1e-6)[:, None]  # (R, V)
    if candidates is not None and candidates < vocab:
        ordered, order = scaled.topk(candidates, dim=-1)  # (R, k) largest first
    else:
        ordered, order = scaled.sort(dim=-1, descending=True)  # (R, V)
    ranks = torch.arange(ordered.shape[-1], device=logits.device)
    keep = ranks[None, :] < torch.where(top_k > 0, top_k, vocab)[:, None]  # (R, k)
    probs = torch.softmax(ordered.masked_fill(~keep, -math.inf), dim=-1)
    keep &= (probs.cumsum(dim=-1) - probs) < top_p[:, None]  # the smallest prefix holding top_p of the mass
    keep[:, 0] = True
    gumbel = -torch.log(-torch.log(uniform(seeds, step, vocab)))  # (R, V), by token id
    noisy = ordered.double().masked_fill(~keep, -math.inf) + gumbel.gather(1, order)  # (R, k), by rank
    sampled = order.gather(1, noisy.argmax(dim=-1, keepdim=True))[:, 0]  # (R,)
    return torch.where(temperature > 0, sampled, greedy)


class Sampler:
    """Per-slot settings (temperature, top_k, top_p, seed) on the device, with a host copy of what decides the
    step's kernel (which slots sample, their largest top_k)."""

    def __init__(self, slots: int, device: torch.device) -> None:
        zeros = torch.zeros(slots, dtype=torch.int64, device=device)
        self.temperature = torch.zeros(slots, dtype=torch.float32, device=device)
        self.top_k, self.seeds = zeros.clone(), zeros.clone()
        self.top_p = torch.ones(slots, dtype=torch.float32, device=device)
        self._host: list[tuple[float, int] | None] = [None] * slots  # (temperature, top_k) of each slot

    def set(self, slot: int, row: tuple[float, int, float, int]) -> None:
        """Slot ``slot`` samples with ``row`` = ``Sampling.row()``: (temperature, top_k (0 = all), top_p, seed)."""
        temperature, top_k, top_p, seed = row
        self.temperature[slot], self.top_k[slot], self.top_p[slot], self.seeds[slot] = temperature, top_k, top_p, seed
        self._host[slot] = (temperature, top_k)

    def kind(self, rows: list[int]) -> int | None:
        """What a step drawing for ``rows`` runs (a host fact, part of a CUDA graph's key): 0 when none of them
        samples (the argmax), the largest top_k when every sampling row has one, else None (a full sort)."""
        sampling = [self._host[i] for i in rows if self._host[i] is not None and self._host[i][0] > 0]
        if not sampling:
            return 0
        return None if any(k == 0 for _, k in sampling) else max(k for _, k in sampling)

    def __call__(self, logits: torch.Tensor, steps: torch.Tensor, kind: int | None) -> torch.Tensor:
        """logits (R, V) of slots 0 … R − 1, steps (R,) each row's sampling step, ``kind`` from :meth:`kind` →
        tokens (R,)."""
        if kind == 0:
            return logits.argmax(dim=-1)
        r = logits.shape[0]
        settings = (self.temperature[:r], self.top_k[:r], self.top_p[:r], self.seeds[:r])
        return sample(logits, *settings, steps, kind)
