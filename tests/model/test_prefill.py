"""Chunked prefill: a prompt fed to the cache chunk by chunk gives the one-pass logits and a cache from which
decoding gives the same logits, for every chunk size (one token up to past the window), with left padding,
KV sharing, K=V, MoE, images (bidirectional blocks never split) and audio; generate and the engine with small
chunks give the tokens of one-pass prefills."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_specs.batch import Batch
from data_specs.media import Modality
from model.gemma4 import Gemma4, chunk_bounds
from runtime.engine import Engine, Request
from runtime.generate import generate
from runtime.sampler import Sampling
from tests.model.helpers import PROMPTS, left_padded, ours_batch, text_model, tiny_config, tiny_decoder

TINY = ["tiny-e2b", "tiny-31b", "tiny-moe"]


def padded_ids(seed: int, lengths: list[int], vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    longest = max(lengths)
    ids = torch.randint(0, vocab, (len(lengths), longest))
    mask = torch.zeros(len(lengths), longest, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, longest - n :] = True
    return ids, mask


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("chunk", [1, 3, 8, 13])
def test_chunked_prefill_equals_one_pass_and_decodes_the_same(name, chunk):
    model = tiny_decoder(name)
    window = model.config.sliding_window
    lengths = [3 * window + 5, 2 * window, 4]  # mixed lengths, left padded; chunks cross the window
    ids, mask = padded_ids(0, lengths, model.config.vocab_size)
    total, new = ids.shape[1], window + 3
    one, chunked = model.new_cache(3, total + new), model.new_cache(3, total + new)
    bounds = chunk_bounds(total, chunk)
    with torch.no_grad():
        expected = model(ids, mask, cache=one, logits_to_keep=1)
        outputs = list(model.prefill(ids, mask, bounds, cache=chunked))
        assert outputs[:-1] == [None] * (len(bounds) - 2)
        torch.testing.assert_close(outputs[-1], expected, rtol=0, atol=1e-4)
        assert chunked.lengths.tolist() == lengths
        torch.manual_seed(1)
        for _ in range(new):  # decoding from either cache gives the same logits, past the window again
            step = torch.randint(0, model.config.vocab_size, (3, 1))
            torch.testing.assert_close(model.decode(step, chunked), model.decode(step, one), rtol=0, atol=1e-4)


def test_chunks_keep_the_last_logits_asked_for_and_check_their_bounds():
    model = tiny_decoder("tiny-e2b")
    ids, mask = padded_ids(2, [20, 17], model.config.vocab_size)
    with torch.no_grad():
        expected = model(ids, mask)[:, -3:]
        *_, logits = model.prefill(ids, mask, [0, 9, 20], cache=model.new_cache(2, 20), logits_to_keep=3)
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)
        for bounds, keep, match in (
            ([0, 9, 20], 12, "last chunk"),
            ([0, 9, 19], 1, "rise from 0"),
            ([0, 9, 9, 20], 1, "rise from 0"),
        ):
            with pytest.raises(ValueError, match=match):
                next(model.prefill(ids, mask, bounds, cache=model.new_cache(2, 20), logits_to_keep=keep))


def test_chunk_bounds_never_split_an_image_block():
    assert chunk_bounds(10, 4) == [0, 4, 8, 10]
    assert chunk_bounds(3, 8) == [0, 3]
    image, video, text = Modality.IMAGE, Modality.VIDEO, Modality.TEXT
    types = np.full((2, 20), text)
    types[0, 3:7] = image  # a block across the edge at 4 …
    types[1, 9:18] = video  # … and one longer than a chunk
    bounds = chunk_bounds(20, 4, types)
    assert bounds == [0, 3, 7, 9, 18, 20]
    for edge in bounds[1:-1]:
        vision = (types == image) | (types == video)
        assert not (vision[:, edge - 1] & vision[:, edge]).any()
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="prefill chunk"):
            chunk_bounds(10, bad)


@pytest.mark.parametrize("name, with_audio", [("tiny-31b", False), ("tiny-e2b", True)])
def test_a_multimodal_prompt_prefills_in_chunks(tok, name, with_audio):
    config = tiny_config(name, tok)
    torch.manual_seed(3)
    model = Gemma4(config).eval()
    batch = ours_batch(tok, with_audio)
    total = batch.input_ids.shape[1]
    bounds = model.chunk_bounds(batch, 16)
    assert len(bounds) > 3 and bounds != chunk_bounds(total, 16) or config.text.bidirectional != "vision"
    with torch.no_grad():
        one, chunked = model.new_cache(2, total + 4), model.new_cache(2, total + 4)
        expected = model(batch, logits_to_keep=1, cache=one)
        *_, logits = model.prefill(batch, chunked, chunk=16)
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)
        for token in (5, 9, 11, 3):
            step = torch.full((2, 1), token)
            torch.testing.assert_close(model.decode(step, chunked), model.decode(step, one), rtol=0, atol=1e-4)


def test_generate_with_small_chunks_gives_the_one_pass_tokens():
    model = text_model("tiny-31b")
    batch = left_padded(PROMPTS)
    warm = [Sampling(temperature=1.5, seed=s) for s in (1, 2, 3)]
    for sampling in (None, warm):
        one = generate(model, batch, max_new_tokens=12, stop_ids=(), sampling=sampling, prefill_chunk=None)
        for chunk in (1, 2, 5):
            chunked = generate(model, batch, max_new_tokens=12, stop_ids=(), sampling=sampling, prefill_chunk=chunk)
            assert [r.token_ids for r in chunked] == [r.token_ids for r in one]
    for bad in (0, -1, 2.5, False):
        with pytest.raises(ValueError, match="prefill_chunk"):
            generate(model, batch, max_new_tokens=2, prefill_chunk=bad)


def test_the_engine_prefills_long_prompts_between_decode_steps():
    model = text_model("tiny-e2b")
    torch.manual_seed(5)
    long_prompts = [torch.randint(3, 500, (n,)).tolist() for n in (30, 23, 41)]
    requests = [
        Request(prompt=PROMPTS[0], max_new_tokens=20, stop_ids=(), id="short"),
        *(
            Request(prompt=p, max_new_tokens=6, stop_ids=(), sampling=Sampling(temperature=1.2, seed=i), id=i)
            for i, p in enumerate(long_prompts)
        ),
    ]
    expected = {
        r.id: generate(
            model,
            Batch.from_ids(torch.tensor([list(r.prompt)])),
            max_new_tokens=r.max_new_tokens,
            stop_ids=(),
            sampling=[r.sampling],
            prefill_chunk=None,
        )[0].token_ids
        for r in requests
    }
    engine = Engine(model, slots=2, context=60, prefill_chunk=4)
    results = {c.id: c.token_ids for c in engine.run(requests)}
    assert results == expected
    # the long prompts took several steps each to prefill, and the short request decoded meanwhile
    assert engine.prefill_chunks > len(requests)
