"""Text generation: one prefill (media encoded once), then one token per row per step against the KV cache
(``model.cache``), until a stop id (spec §1.6) or the token limit.

Sampling is per row and reproducible: a row's random numbers come from a counter-based hash of (its seed, the
step, the token id), never from a shared generator, so a seeded request draws the same tokens whatever else is in
the batch and whichever row it is. Sampling is the Gumbel-max trick over the tokens that survive temperature,
top-k and top-p, all vectorised over rows with per-row settings; temperature 0 is greedy.

The decode loop reads nothing back from the device except whether every row has finished, once every
``check_every`` steps (``stream`` hands each step's tokens over as they come, which is one read per step).

Shapes: B batch rows, T prompt tokens, V vocabulary, N new tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from data_specs.batch import Batch

__all__ = ["PREFILL_CHUNK", "Generation", "Sampling", "generate", "sample", "stream"]

_M32 = 0xFFFFFFFF

# Prompt tokens per prefill chunk by default: long prompts are prefilled in pieces of this size, so a prefill's
# activations and masks stay those of one chunk (the KV cache holds the whole prompt in any case).
PREFILL_CHUNK = 1024


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """One request's sampling settings. ``temperature`` 0 is greedy; ``top_k`` / ``top_p`` None keep every
    token; ``seed`` None draws one (then the request is not reproducible)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (
            isinstance(self.temperature, int | float) and math.isfinite(self.temperature) and self.temperature >= 0
        ):
            raise ValueError(f"temperature must be a finite number ≥ 0, got {self.temperature!r}")
        if self.top_k is not None and (
            not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1
        ):
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")

    def row(self) -> tuple[float, int, float, int]:
        """This request as one row of :func:`sample`'s settings: (temperature, top_k (0 = all), top_p (1 = all),
        seed). A missing seed is drawn here, once."""
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())
        return self.temperature, self.top_k or 0, 1.0 if self.top_p is None else self.top_p, seed


@dataclass(frozen=True)
class Generation:
    """One row's result: the new token ids (the stop id included when it stopped), why it ended, its prompt
    length and the batch's timings (seconds)."""

    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    prefill_s: float
    decode_s: float


def check_chunk(prefill_chunk: int | None) -> None:
    """Refuse a prefill chunk that is not None or a positive number of tokens."""
    if prefill_chunk is not None and (
        isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1
    ):
        raise ValueError(f"prefill_chunk must be a positive number of tokens or None, got {prefill_chunk!r}")


# --- sampling ------------------------------------------------------------------------------------------------


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix of int64 values in [0, 2³²) (multipliers below 2³¹: no int64 overflow)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


def _uniform(seeds: torch.Tensor, step: int | torch.Tensor, vocab: int) -> torch.Tensor:
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
) -> torch.Tensor:
    """Next tokens (B,) int64 from logits (B, V) and per-row settings (B,): temperature (0 = greedy), top_k
    (0 = all), top_p (1 = all), seeds; ``step`` is the step of every row, or (B,) one per row (a row's draws
    depend only on its seed and its own step)."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1)  # (B,)
    scaled = logits / temperature.clamp(min=1e-6)[:, None]  # (B, V)
    ordered, order = scaled.sort(dim=-1, descending=True)  # (B, V)
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    keep = ranks[None, :] < torch.where(top_k > 0, top_k, logits.shape[-1])[:, None]  # (B, V)
    probs = torch.softmax(ordered.masked_fill(~keep, -math.inf), dim=-1)
    keep &= (probs.cumsum(dim=-1) - probs) < top_p[:, None]  # the smallest prefix holding top_p of the mass
    keep[:, 0] = True
    gumbel = -torch.log(-torch.log(_uniform(seeds, step, logits.shape[-1])))  # (B, V), by token id
    noisy = ordered.double().masked_fill(~keep, -math.inf) + gumbel.gather(1, order)  # (B, V), by rank
    sampled = order.gather(1, noisy.argmax(dim=-1, keepdim=True))[:, 0]  # (B,)
    return torch.where(temperature > 0, sampled, greedy)


def _settings(sampling: Sequence[Sampling], device) -> tuple[torch.Tensor, ...]:
    """(temperature, top_k, top_p, seeds), each (B,), for :func:`sample`."""
    columns = list(zip(*(s.row() for s in sampling), strict=True))
    dtypes = (torch.float32, torch.int64, torch.float32, torch.int64)
    return tuple(torch.tensor(c, dtype=d, device=device) for c, d in zip(columns, dtypes, strict=True))


# --- the loop ------------------------------------------------------------------------------------------------


def _steps(
    model,
    batch: Batch,
    max_new_tokens: int,
    sampling: Sequence[Sampling],
    stop: torch.Tensor,
    timings: dict,
    prefill_chunk: int | None,
):
    """Yield (step, tokens (B,), finished (B,)) on the device, from the prefill's token on."""
    rows, prompt = batch.input_ids.shape
    device = next(model.parameters()).device
    bounds = model.chunk_bounds(batch, prefill_chunk) if prefill_chunk and prompt > prefill_chunk else None
    batch = batch.to(device)  # uint8 patches become x/255 there; a batch already there is kept as it is
    settings = _settings(sampling, device)
    started = time.perf_counter()
    cache = model.new_cache(rows, prompt + max_new_tokens)
    *_, logits = model.prefill(batch, cache, chunk=prefill_chunk, bounds=bounds)
    logits = logits[:, -1]  # (B, V)
    finished = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    pad = model.config.tokens.pad
    greedy = all(s.temperature == 0 for s in sampling)  # then the argmax alone: no sort, no noise
    for step in range(max_new_tokens):
        tokens = logits.argmax(dim=-1) if greedy else sample(logits, *settings, step)
        tokens = tokens.masked_fill(finished, pad)  # (B,)
        if step == 0:
            timings["prefill_s"] = time.perf_counter() - started
        finished = finished | torch.isin(tokens, stop)
        yield step, tokens, finished
        if step + 1 < max_new_tokens:
            span = cache.span(prompt + step + 1)  # positions so far are below it (host arithmetic, no read)
            logits = model.decode(tokens[:, None], cache, span=span)[:, -1]  # (B, V)
    timings["decode_s"] = time.perf_counter() - started - timings.get("prefill_s", 0.0)


def _prepare(model, batch, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, sampling, prefill_chunk):
    if not isinstance(batch, Batch):
        raise TypeError(f"generate takes a data_specs.batch.Batch, got {type(batch).__name__}")
    check_chunk(prefill_chunk)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    rows = batch.input_ids.shape[0]
    if sampling is None:
        sampling = [Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)] * rows
    elif len(sampling) != rows:
        raise ValueError(f"sampling gives {len(sampling)} settings for a batch of {rows} rows")
    stop = model.config.tokens.stop_ids if stop_ids is None else tuple(stop_ids)
    return list(sampling), torch.tensor(stop, dtype=torch.int64, device=next(model.parameters()).device)


@torch.no_grad()
def generate(
    model,
    batch: Batch,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_ids: Sequence[int] | None = None,
    sampling: Sequence[Sampling] | None = None,
    check_every: int = 8,
    prefill_chunk: int | None = PREFILL_CHUNK,
) -> list[Generation]:
    """New tokens for every row of ``batch`` (moved to the model's device if it is not there). ``stop_ids`` None
    means the checkpoint's (``config.tokens.stop_ids``), ``()`` none. ``sampling`` gives each row its own settings
    instead of the shared keyword ones. Stops early once every row has finished (checked every ``check_every``
    steps). A prompt longer than ``prefill_chunk`` tokens is prefilled in chunks of about that many (None: in
    one pass), which bounds the prefill's memory by the chunk instead of the prompt."""
    sampling, stop = _prepare(
        model, batch, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, sampling, prefill_chunk
    )
    rows = batch.input_ids.shape[0]
    out = torch.full((rows, max_new_tokens), model.config.tokens.pad, dtype=torch.int64, device=stop.device)
    timings: dict[str, float] = {}
    ended = torch.full((rows,), max_new_tokens, dtype=torch.int64, device=stop.device)  # tokens kept per row
    for step, tokens, finished in _steps(model, batch, max_new_tokens, sampling, stop, timings, prefill_chunk):
        out[:, step] = tokens
        ended = torch.where(finished & (ended == max_new_tokens), step + 1, ended)
        if (step + 1) % check_every == 0 and bool(finished.all()):
            break
    out, ended = out.cpu(), ended.cpu()
    prompt = batch.attention_mask.sum(dim=1).cpu()
    stopped = [bool(stop.numel()) and bool(torch.isin(out[i, ended[i] - 1], stop.cpu())) for i in range(rows)]
    return [
        Generation(
            token_ids=out[i, : ended[i]].tolist(),
            finish_reason="stop" if stopped[i] else "length",
            prompt_tokens=int(prompt[i]),
            prefill_s=timings.get("prefill_s", 0.0),
            decode_s=timings.get("decode_s", 0.0),
        )
        for i in range(rows)
    ]


@torch.no_grad()
def stream(
    model,
    batch: Batch,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_ids: Sequence[int] | None = None,
    sampling: Sequence[Sampling] | None = None,
    prefill_chunk: int | None = PREFILL_CHUNK,
) -> Iterator[list[int | None]]:
    """``generate`` one step at a time: yields each step's new token per row (None for a row that had already
    finished), until every row has finished or the limit is reached."""
    sampling, stop = _prepare(
        model, batch, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, sampling, prefill_chunk
    )
    done = [False] * batch.input_ids.shape[0]
    for _, tokens, finished in _steps(model, batch, max_new_tokens, sampling, stop, {}, prefill_chunk):
        values = tokens.tolist()
        yield [None if was else value for was, value in zip(done, values, strict=True)]
        done = finished.tolist()
        if all(done):
            return
