"""No device→host read in a decode step, a prefill or an MoE layer, on CUDA in bfloat16.

Under ``torch.cuda.set_sync_debug_mode("error")`` every blocking device→host copy (``.item()``, ``.tolist()``,
``bool(t)``, ``torch.bincount``'s min/max, a boolean-mask index …) raises (GPU.md §2), so each test pins "this
step reads nothing back". The masks are planned from host facts (``padded``, ``vision_span``, a host ``span``),
as a :class:`data_specs.batch.Batch` carries them. Each call runs once before the checked one: first-call work
(cuBLAS handles, lazy kernel loading) is not what these tests are about. Inputs are made on the device before
the check (a plain host→device copy waits too).

Shapes: B batch rows, T prompt tokens, V vocabulary, N tokens into the MoE block, D model dim.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from data_specs.batch import Batch
from model.moe import Experts, Router
from tests.gpu.helpers import prompt

CUDA = torch.device("cuda")
PRESETS = ["tiny-e2b", "tiny-31b", "tiny-moe"]


@contextmanager
def syncs_raise() -> Iterator[None]:
    """Inside: any blocking device→host synchronisation raises ``RuntimeError``."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("span", ["whole", "planned"])
@pytest.mark.parametrize("name", PRESETS)
def test_a_decode_step_reads_nothing_back(name, span, tiny_decoder):
    model = tiny_decoder(name)
    rows, length, vocab = 3, 12, model.config.vocab_size  # 12 > the tiny window (8): the rings have wrapped
    ids, _ = prompt(rows, length + 2, vocab, padded=False)
    cache = model.new_cache(rows, 300)
    # host arithmetic, as generate plans it: every position is below length + 2, so 256 of the 300 slots
    planned = cache.span(length + 2) if span == "planned" else None
    assert span == "whole" or planned is not None
    with torch.no_grad():
        model(ids[:, :length], cache=cache, logits_to_keep=1, padded=False, vision_span=0)
        model.decode(ids[:, length : length + 1], cache, span=planned)
        with syncs_raise():
            logits = model.decode(ids[:, length + 1 :], cache, span=planned)  # (B, 1, V)
    assert logits.shape == (rows, 1, vocab)
    assert bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("length", [24, 100])  # 100 > window + BAND_BLOCK: banded sliding attention
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("name", PRESETS)
def test_a_prefill_into_the_cache_reads_nothing_back(name, padded, length, tiny_decoder):
    model = tiny_decoder(name)
    rows, vocab = 3, model.config.vocab_size
    ids, mask = prompt(rows, length, vocab, padded)
    with torch.no_grad():
        model(ids, mask, cache=model.new_cache(rows, 128), logits_to_keep=1, padded=padded, vision_span=0)
        cache = model.new_cache(rows, 128)
        with syncs_raise():
            logits = model(ids, mask, cache=cache, logits_to_keep=1, padded=padded, vision_span=0)  # (B, 1, V)
    assert logits.shape == (rows, 1, vocab)
    assert bool(torch.isfinite(logits).all())
    assert cache.lengths.tolist() == mask.sum(dim=1).tolist()


@pytest.mark.parametrize("chunk", [None, 8])
@pytest.mark.parametrize("name", PRESETS)
def test_the_job_path_prefill_of_a_batch_reads_nothing_back(name, chunk, tiny_text_model):
    # What generate and the engine run: a host-built Batch moved to the device, one pass or chunks planned
    # beforehand on the host (chunk_bounds); the Gemma4 wrapper's own checks read host facts only.
    model = tiny_text_model(name)
    vocab = model.config.text.vocab_size
    ids, mask = prompt(3, 30, vocab, padded=True)
    batch = Batch.from_ids(ids.cpu(), mask.cpu())
    bounds = model.chunk_bounds(batch, chunk) if chunk else None
    batch = batch.to(CUDA)
    with torch.no_grad():
        list(model.prefill(batch, model.new_cache(3, 64), chunk=chunk, bounds=bounds))
        cache = model.new_cache(3, 64)
        with syncs_raise():
            *_, logits = model.prefill(batch, cache, chunk=chunk, bounds=bounds)  # (B, 1, V)
    assert logits.shape == (3, 1, vocab)
    assert bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("tokens", [1, 8, 37])  # a one-row decode, a decode batch, a prefill
def test_an_moe_layer_reads_nothing_back(tokens):
    torch.manual_seed(0)
    d_model, n_experts, top_k, d_ff = 64, 8, 2, 32  # the tiny-moe sizes
    router = Router(d_model, n_experts, top_k).to(CUDA, torch.bfloat16)
    experts = Experts(d_model, n_experts, d_ff).to(CUDA, torch.bfloat16)
    x = torch.randn(tokens, d_model, device=CUDA, dtype=torch.bfloat16)  # (N, D)
    with torch.no_grad():
        experts(x, *router(x))
        with syncs_raise():
            weights, chosen = router(x)  # (N, k) each
            y = experts(x, weights, chosen)  # (N, D)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    assert bool(torch.isfinite(y).all())
