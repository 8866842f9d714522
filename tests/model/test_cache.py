"""The minimal hybrid KV cache: incremental decoding equals a full forward at every step, across the sliding window,
with KV sharing, K=V and MoE; left-padded rows; its size is the theoretical minimum for every preset."""

from __future__ import annotations

import pytest
import torch

from model.cache import cache_bytes, cache_layout
from model.config import PRESETS
from model.decoder import TextDecoder
from tests.model.helpers import tiny_decoder

TINY = ["tiny-e2b", "tiny-31b", "tiny-moe"]


@pytest.mark.parametrize("name", TINY)
def test_incremental_decoding_equals_the_full_forward(name):
    model = tiny_decoder(name)
    window = model.config.sliding_window
    total, prompt = 3 * window + 5, 5  # decoding crosses the window boundary several times
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (3, total))
    mask = torch.ones(3, total, dtype=torch.bool)
    mask[1, :3] = False  # left padding: row 1 has 3 fewer real tokens
    mask[2, : prompt - 1] = False  # row 2 starts with a single real token
    cache = model.new_cache(3, total)
    with torch.no_grad():
        first = model(ids[:, :prompt], mask[:, :prompt], cache=cache, logits_to_keep=1)
        expected = model(ids[:, :prompt], mask[:, :prompt])[:, -1:]
        torch.testing.assert_close(first, expected, rtol=0, atol=1e-4)
        assert cache.lengths.tolist() == mask[:, :prompt].sum(1).tolist()
        for t in range(prompt, total):
            step = model.decode(ids[:, t : t + 1], cache)  # (B, 1, V)
            full = model(ids[:, : t + 1], mask[:, : t + 1])[:, -1:]  # (B, 1, V)
            torch.testing.assert_close(step, full, rtol=0, atol=1e-4, msg=f"{name}: step {t}")
    assert cache.lengths.tolist() == mask.sum(1).tolist()


def test_a_reset_row_is_refilled_without_touching_the_others():
    model = tiny_decoder("tiny-e2b")
    torch.manual_seed(2)
    ids = torch.randint(0, 512, (2, 20))
    cache = model.new_cache(2, 40)
    with torch.no_grad():
        model(ids[:, :6], cache=cache, logits_to_keep=1)
        for t in range(6, 12):
            model.decode(ids[:, t : t + 1], cache)
        # row 0 starts a new sequence: a one-row prefill copied into its slot
        other = model.new_cache(1, 40)
        model(ids[1:, 12:15], cache=other, logits_to_keep=1)
        for layer, values in cache.values.items():
            values[0] = other.values[layer][0]
            if layer in cache.keys:
                cache.keys[layer][0] = other.keys[layer][0]
        cache.lengths[0] = other.lengths[0]
        step = model.decode(torch.stack([ids[1, 15:16], ids[1, 12:13]]), cache)
        fresh = model(ids[1:, 12:16])[:, -1]
        continued = model(torch.cat([ids[1:, :12], ids[1:, 12:13]], dim=1))[:, -1]
    torch.testing.assert_close(step[0, 0], fresh[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(step[1, 0], continued[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_cache_size_is_the_theoretical_minimum(name):
    config = PRESETS[name].text
    context = 32_768
    expected = 0
    for layer in range(config.n_layers):
        if config.kv_source(layer) != layer:
            continue  # shared layers store nothing
        slots = context if config.is_full(layer) else config.sliding_window
        per_slot = config.layer_kv_heads(layer) * config.layer_head_dim(layer)
        k_eq_v = config.is_full(layer) and config.k_eq_v
        expected += slots * per_slot * (1 if k_eq_v else 2)
    assert cache_bytes(config, 2, context) == 2 * expected * 2  # bfloat16
    assert set(cache_layout(config, context)) == {i for i in range(config.n_layers) if config.kv_source(i) == i}


def test_the_cache_allocates_what_cache_bytes_says():
    config = PRESETS["tiny-31b"].text
    cache = TextDecoder(config).new_cache(3, 50, dtype=torch.bfloat16)
    assert cache.nbytes == cache_bytes(config, 3, 50, torch.bfloat16)
    with pytest.raises(ValueError, match="at least one row"):
        TextDecoder(config).new_cache(0, 50)


@pytest.mark.parametrize("name", TINY)
def test_a_decode_span_reads_fewer_slots_and_gives_the_same_logits(name, monkeypatch):
    from model.cache import KVCache

    monkeypatch.setattr(KVCache, "SPAN_STEP", 4)  # spans of 4, 8, 12 … slots of a 40-slot context
    model = tiny_decoder(name)
    torch.manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (2, 30))
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, :4] = False
    whole, spanned = model.new_cache(2, 40), model.new_cache(2, 40)
    assert spanned.span(5) == 8 and spanned.span(40) is None and spanned.span(0) == 4
    with torch.no_grad():
        model(ids[:, :3], mask[:, :3], cache=whole, logits_to_keep=1)
        model(ids[:, :3], mask[:, :3], cache=spanned, logits_to_keep=1)
        for t in range(3, 30):
            span = spanned.span(t + 1)  # every position so far is below t + 1
            step = model.decode(ids[:, t : t + 1], spanned, span=span)
            torch.testing.assert_close(step, model.decode(ids[:, t : t + 1], whole), rtol=0, atol=1e-4)
