"""Every attention call of the text decoder has a fused SDPA kernel at the real head dims, on CUDA in bfloat16.

Gemma 4's full layers have ``global_head_dim`` 512 and fewer KV heads than query heads; called with
``enable_gqa=True`` or with a mask at that head dim, SDPA can only take the math kernel (float32 (B, N, T, S)
scores, K/V repeated to every head: GPU.md §1). Inside ``sdpa_kernel(FUSED)`` the math kernel is not allowed,
so a call that only it could serve raises: these tests pin that decode (one query row), a prefill into the cache
(causal with no padding, masked with it, banded past the window) and a chunked prefill each find a fused kernel.
The tiny presets keep their widths but take the real head dims (256 sliding, 512 full).

Shapes: B batch rows, T prompt tokens, V vocabulary.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from model.gemma4 import chunk_bounds
from tests.gpu.helpers import prompt

CUDA = torch.device("cuda")
FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
PRESETS = ["tiny-e2b", "tiny-31b", "tiny-moe"]
REAL_HEAD_DIMS = {"head_dim": 256, "global_head_dim": 512}


def test_the_guard_refuses_what_only_the_math_kernel_serves():
    # The premise (GPU.md §1, torch 2.11): GQA at head dim 512 has no fused kernel. If this fails, torch changed,
    # and the tests below no longer prove what they claim.
    q = torch.randn(1, 8, 1, 512, device=CUDA, dtype=torch.bfloat16)  # (B, N, 1, H)
    k = v = torch.randn(1, 1, 16, 512, device=CUDA, dtype=torch.bfloat16)  # (B, K, S, H)
    with sdpa_kernel(FUSED), pytest.raises(RuntimeError):
        scaled_dot_product_attention(q, k, v, scale=1.0, enable_gqa=True)


@pytest.mark.parametrize("name", PRESETS)
def test_a_decode_step_takes_a_fused_kernel(name, tiny_decoder):
    model = tiny_decoder(name, **REAL_HEAD_DIMS)
    rows, length, vocab = 3, 20, model.config.vocab_size
    ids, mask = prompt(rows, length + 1, vocab, padded=True)
    cache = model.new_cache(rows, 300)
    with torch.no_grad():
        model(ids[:, :length], mask[:, :length], cache=cache, logits_to_keep=1, padded=True, vision_span=0)
        with sdpa_kernel(FUSED):
            whole = model.decode(ids[:, length:], cache, span=None)  # (B, 1, V): every slot
            cache.lengths.sub_(1)  # the same step again, over the planned span
            planned = model.decode(ids[:, length:], cache, span=cache.span(length + 1))
    assert bool(torch.isfinite(whole).all()) and bool(torch.isfinite(planned).all())


@pytest.mark.parametrize("length", [24, 100])  # 100 > window + BAND_BLOCK: banded sliding attention
@pytest.mark.parametrize("padded", [False, True])  # no padding: causal SDPA without a mask
@pytest.mark.parametrize("name", PRESETS)
def test_a_prefill_into_the_cache_takes_a_fused_kernel(name, padded, length, tiny_decoder):
    model = tiny_decoder(name, **REAL_HEAD_DIMS)
    rows, vocab = 2, model.config.vocab_size
    ids, mask = prompt(rows, length, vocab, padded)
    cache = model.new_cache(rows, 128)
    with torch.no_grad(), sdpa_kernel(FUSED):
        logits = model(ids, mask, cache=cache, logits_to_keep=1, padded=padded, vision_span=0)  # (B, 1, V)
    assert logits.shape == (rows, 1, vocab)
    assert bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("name", PRESETS)
def test_a_chunked_prefill_takes_a_fused_kernel(name, tiny_decoder):
    model = tiny_decoder(name, **REAL_HEAD_DIMS)
    rows, length, vocab = 2, 40, model.config.vocab_size
    ids, mask = prompt(rows, length, vocab, padded=True)
    cache = model.new_cache(rows, 64)
    with torch.no_grad(), sdpa_kernel(FUSED):
        outputs = list(model.prefill(ids, mask, chunk_bounds(length, 16), cache=cache))  # chunks 16, 16, 8
    assert outputs[:-1] == [None, None]
    assert outputs[-1].shape == (rows, 1, vocab)
    assert bool(torch.isfinite(outputs[-1]).all())
