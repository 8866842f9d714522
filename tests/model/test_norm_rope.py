"""RMSNorm and RoPE against the reference's own modules."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import text_to_hf
from model.config import FULL, PRESETS, SLIDING
from model.norm import RMSNorm, rms_norm
from model.rope import apply_rope, inverse_frequencies, rope_cos_sin, signed_sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", [True, False])
def test_rms_norm_equals_reference(dtype, scale, hf_modeling):
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 64) * 4).to(dtype)
    ours = RMSNorm(64, scale=scale)
    ref = hf_modeling.Gemma4RMSNorm(64, with_scale=scale)
    if scale:
        weight = torch.randn(64)
        ours.weight.data.copy_(weight)
        ref.weight.data.copy_(weight)
    assert torch.equal(ours(x), ref(x)) and ours(x).dtype == dtype
    assert (ours.weight is None) != scale
    x_copy = x.clone()
    rms_norm(x)
    assert torch.equal(x, x_copy)  # input untouched


@pytest.mark.parametrize("name", ["gemma4-e2b", "tiny-31b"])
@pytest.mark.parametrize("factor", [1.0, 8.0])
def test_rope_cos_sin_equal_reference(name, factor, reference, hf_modeling):
    ours = PRESETS[name].text
    hf = text_to_hf(ours)
    hf["rope_parameters"][FULL]["factor"] = factor
    rotary = hf_modeling.Gemma4TextRotaryEmbedding(reference.Gemma4TextConfig(**hf))
    positions = torch.tensor([[0, 1, 2, 3, 700, 5000], [9, 9, 10, 11, 12, 13]])
    for kind, head_dim, theta, partial, f in (
        (SLIDING, ours.head_dim, ours.rope.sliding_theta, 1.0, 1.0),
        (FULL, ours.global_head_dim, ours.rope.full_theta, ours.rope.full_partial_rotary, factor),
    ):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.zeros(1, dtype=dtype)
            ref_cos, ref_sin = rotary(x, positions, kind)
            cos, sin = rope_cos_sin(positions, inverse_frequencies(head_dim, theta, partial, f), dtype)
            assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin), (kind, dtype)


def test_proportional_rope_rotates_only_its_dims():
    frequencies = inverse_frequencies(512, 1_000_000.0, 0.25)
    assert (frequencies[:64] > 0).all() and (frequencies[64:] == 0).all()
    positions = torch.arange(7)[None]
    cos, sin = rope_cos_sin(positions, frequencies, torch.float32)
    x = torch.randn(1, 7, 2, 512)
    y = apply_rope(x, cos, signed_sin(sin))
    untouched = torch.cat([torch.arange(64, 256), torch.arange(320, 512)])
    assert torch.equal(y[..., untouched], x[..., untouched])
    assert not torch.equal(y[..., :64], x[..., :64])


def test_apply_rope_equals_reference_and_preserves_norm(hf_modeling):
    torch.manual_seed(1)
    x = torch.randn(2, 6, 4, 32)
    cos, sin = rope_cos_sin(torch.arange(6).repeat(2, 1), inverse_frequencies(32, 10_000.0), torch.float32)
    ours = apply_rope(x, cos, signed_sin(sin))
    ref = hf_modeling.apply_rotary_pos_emb(x, cos, sin, unsqueeze_dim=2)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    for dtype in (torch.float32, torch.bfloat16):  # roll × folded sign: the reference's products, then one add
        low = [t.to(dtype) for t in (x, cos, sin)]
        ref = hf_modeling.apply_rotary_pos_emb(*low, unsqueeze_dim=2)
        torch.testing.assert_close(apply_rope(low[0], low[1], signed_sin(low[2])), ref, rtol=0, atol=0.02)
    torch.testing.assert_close(ours.norm(dim=-1), x.norm(dim=-1), rtol=0, atol=1e-5)
    # Relative positions: the score between positions i and j depends only on i − j.
    q, k = torch.randn(32), torch.randn(32)

    def score(i, j):
        cos_i, sin_i = rope_cos_sin(torch.tensor([[i]]), inverse_frequencies(32, 1e4), torch.float32)
        cos_j, sin_j = rope_cos_sin(torch.tensor([[j]]), inverse_frequencies(32, 1e4), torch.float32)
        qi = apply_rope(q.expand(1, 1, 1, 32), cos_i, signed_sin(sin_i))
        kj = apply_rope(k.expand(1, 1, 1, 32), cos_j, signed_sin(sin_j))
        return float((qi * kj).sum())

    assert abs(score(10, 7) - score(103, 100)) < 1e-4


def test_rope_frequencies_stay_float32_whatever_the_model_is_cast_to():
    # Module.to(bfloat16) casts non-persistent buffers too: bf16 frequencies put cos off by ≈ 0.5 at position 4000
    from model.config import PRESETS
    from model.decoder import TextDecoder
    from model.vision import VisionEncoder

    decoder = TextDecoder(PRESETS["tiny-31b"].text).to(torch.bfloat16)
    exact = TextDecoder(PRESETS["tiny-31b"].text)
    for name in ("sliding_freq", "full_freq"):
        assert getattr(decoder, name).dtype == torch.float32
        assert torch.equal(getattr(decoder, name), getattr(exact, name))
    assert decoder.embed_tokens.weight.dtype == torch.bfloat16  # the weights were cast
    positions = torch.tensor([[4000]])
    cos, _ = rope_cos_sin(positions, decoder.sliding_freq, torch.float32)
    true, _ = rope_cos_sin(positions, exact.sliding_freq, torch.float32)
    assert torch.equal(cos, true)
    rounded, _ = rope_cos_sin(positions, exact.sliding_freq.to(torch.bfloat16), torch.float32)
    assert (rounded - true).abs().max() > 0.1  # what a cast buffer would have done
    vision = VisionEncoder(PRESETS["tiny-31b"].vision).half()
    assert vision.rope_freq.dtype == torch.float32
