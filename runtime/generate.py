"""``generate`` and ``stream``: a batch's rows as requests of one engine (:mod:`runtime.engine`), so the repository
has one decode loop. Each row's media are encoded once for the whole batch; every row has its own slot, and the
token budget lets every row's prompt chunk run in the same step (a batch prefills together, as before).

Shapes: B batch rows, T prompt tokens, N new tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from data_specs.batch import Batch
from data_specs.checks import check_count

from .engine import PREFILL_CHUNK, Completion, Engine, Request, check_chunk
from .runner import Prompt
from .sampler import Sampling

__all__ = ["MAX_NEW_TOKENS", "generate", "stream"]

# The most new tokens a row may ask for. The model has no position limit of its own (rope extends), so the bound
# is the KV cache: generate allocates prompt + max_new_tokens positions for every row at once.
MAX_NEW_TOKENS = 2**20


def _engine(model, batch, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, sampling, prefill_chunk, graphs):
    if not isinstance(batch, Batch):
        raise TypeError(f"generate takes a data_specs.batch.Batch, got {type(batch).__name__}")
    check_chunk(prefill_chunk)
    check_count(max_new_tokens, "max_new_tokens")
    if max_new_tokens > MAX_NEW_TOKENS:
        raise ValueError(
            f"max_new_tokens must be at most {MAX_NEW_TOKENS} (2**20; every row's KV cache holds prompt and new "
            f"tokens), got {max_new_tokens}"
        )
    rows, width = batch.input_ids.shape
    if rows == 0 or width == 0:
        raise ValueError(f"generate needs at least one prompt token in each row, got a batch of shape {(rows, width)}")
    real = batch.attention_mask.bool().sum(dim=1).tolist()  # (B,) real tokens of each row
    if 0 in real:
        raise ValueError(f"row {real.index(0)} of the batch has no real tokens (all padding)")
    if sampling is None:
        sampling = [Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)] * rows
    elif len(sampling) != rows:
        raise ValueError(f"sampling gives {len(sampling)} settings for a batch of {rows} rows")
    chunk = prefill_chunk or width
    engine = Engine(
        model,
        slots=rows,
        context=width + max_new_tokens,
        prefill_chunk=prefill_chunk,
        token_budget=rows * (min(chunk, width) + 1),  # every row's chunk in one step
        cuda_graphs=graphs,
    )
    for i, prompt in enumerate(Prompt.rows(model, batch)):
        engine.submit(
            Request(prompt=prompt, max_new_tokens=max_new_tokens, sampling=sampling[i], stop_ids=stop_ids, id=i)
        )
    return engine


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
    prefill_chunk: int | None = PREFILL_CHUNK,
    cuda_graphs: bool | None = None,
) -> list[Completion]:
    """New tokens for every row of ``batch``, one :class:`~runtime.engine.Completion` per row in order.
    ``stop_ids`` None means the checkpoint's (``config.tokens.stop_ids``), ``()`` none. ``sampling`` gives each
    row its own settings instead of the shared keyword ones. A prompt longer than ``prefill_chunk`` tokens is
    prefilled in chunks of about that many (None: in one pass), which bounds the prefill's memory by the chunk
    instead of the prompt. ``cuda_graphs``: decode steps as CUDA graphs (default: on CUDA).

    ``ValueError`` names what is wrong before anything runs: an empty batch, a row with no real tokens (all
    padding), prompt or stop ids outside the vocabulary, ``max_new_tokens`` above ``MAX_NEW_TOKENS``, sampling
    values ``Sampling`` refuses. A row whose logits turn non-finite (NaN weights …) comes back with
    ``finish_reason`` ``"error"``, no tokens and ``error`` saying so; the other rows are unaffected."""
    engine = _engine(
        model, batch, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, sampling, prefill_chunk, cuda_graphs
    )
    return sorted(engine.run(), key=lambda completion: completion.id)


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
    cuda_graphs: bool | None = None,
) -> Iterator[list[int | None]]:
    """``generate`` one step at a time: yields, for each step that drew a token, the new token of every row (None
    for a row that drew none: finished, or still prefilling), until every row has finished."""
    engine = _engine(
        model, batch, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, sampling, prefill_chunk, cuda_graphs
    )
    rows = batch.input_ids.shape[0]
    while not engine.idle:
        drawn: dict[int, int] = {}
        engine.step(drawn)
        if drawn:
            yield [drawn.get(row) for row in range(rows)]
