"""The text decoder against the reference: logits through the production checkpoint loader; masks."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import CheckpointError, load_text_decoder, text_to_hf
from model.config import PRESETS
from model.masks import full_mask, sliding_mask, vision_blocks


@pytest.fixture
def reference_checkpoint(reference):
    """A factory: a tiny random reference model with perturbed norms and layer scalars, saved with save_pretrained."""

    def build(name: str, directory, seed: int = 0):
        torch.manual_seed(seed)
        config = reference.Gemma4TextConfig(**text_to_hf(PRESETS[name].text))
        model = reference.Gemma4ForCausalLM(config).eval()
        with torch.no_grad():
            for key, tensor in list(model.named_parameters()) + list(model.named_buffers()):
                if "norm" in key:
                    tensor.add_(torch.randn_like(tensor) * 0.1)  # random init leaves every norm weight at 1
                if "layer_scalar" in key:
                    tensor.copy_(torch.rand_like(tensor) + 0.5)
        model.save_pretrained(directory)
        return model

    return build


def reference_vision_logits(modeling, reference, ids, mask, types):
    """The reference's logits with its bidirectional vision masks (its text-only model ignores the types)."""
    embeds = reference.model.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None].expand_as(ids)
    blocks = modeling.get_block_sequence_ids_for_mask(types, embeds.device)
    masks = modeling.create_masks_for_vision_model(reference.config, embeds, mask, None, positions, blocks)
    return reference(input_ids=ids, attention_mask=masks).logits


def batch(seed: int = 1, length: int = 24):
    torch.manual_seed(seed)
    ids = torch.randint(10, 500, (3, length))
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, :5] = 0  # left padding
    mask[2, :11] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("name", ["tiny-e2b", "tiny-31b", "tiny-moe"])
def test_logits_equal_reference(name, tmp_path, reference_checkpoint):
    reference = reference_checkpoint(name, tmp_path)
    ours = load_text_decoder(tmp_path)
    ids, mask = batch()
    assert ids.shape[1] > PRESETS[name].text.sliding_window  # the window matters
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], rtol=0, atol=1e-4)
    with torch.no_grad():  # no padding at all: full layers take SDPA's causal kernel instead of a mask
        unpadded = torch.ones_like(mask)
        torch.testing.assert_close(
            ours(ids, unpadded), reference(input_ids=ids, attention_mask=unpadded).logits, rtol=0, atol=1e-4
        )
    # bfloat16: the same weights cast, compared with the reference in bfloat16.
    with torch.no_grad():
        expected16 = reference.to(torch.bfloat16)(input_ids=ids, attention_mask=mask).logits.float()
        got16 = load_text_decoder(tmp_path, dtype=torch.bfloat16)(ids, mask).float()
    # bf16 rounding through the whole model: measured 0.05–0.17 over the three presets (logits up to 0.72).
    torch.testing.assert_close(got16[valid], expected16[valid], rtol=0, atol=0.25)


@pytest.mark.parametrize("name", ["tiny-e2b", "tiny-31b"])
def test_long_sequences_take_the_banded_path_and_equal_reference(name, tmp_path, reference_checkpoint):
    from model.decoder import BAND_BLOCK

    reference = reference_checkpoint(name, tmp_path, seed=5)
    ours = load_text_decoder(tmp_path)
    ids, mask = batch(seed=2, length=PRESETS[name].text.sliding_window + BAND_BLOCK + 30)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny-e2b", "tiny-31b"])
def test_short_unpadded_prompts_take_the_causal_kernel_and_equal_reference(
    name, tmp_path, reference_checkpoint, hf_modeling
):
    """T ≤ W without padding: sliding layers run SDPA's causal kernel (no mask), as full layers do."""
    reference = reference_checkpoint(name, tmp_path, seed=6)
    ours = load_text_decoder(tmp_path)
    ids, _ = batch(seed=3, length=PRESETS[name].text.sliding_window)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(input_ids=ids).logits, rtol=0, atol=1e-4)
        if PRESETS[name].text.bidirectional != "vision":
            return
        types = torch.zeros_like(ids)
        types[:, 2:5] = 1  # an image block: the 31B-style preset then needs its bidirectional mask
        expected = reference_vision_logits(hf_modeling, reference, ids, torch.ones_like(ids), types)
        torch.testing.assert_close(ours(ids, mm_token_type_ids=types), expected, rtol=0, atol=1e-4)


def test_padding_does_not_change_real_rows(tmp_path, reference_checkpoint):
    reference_checkpoint("tiny-e2b", tmp_path)
    ours = load_text_decoder(tmp_path)
    ids, mask = batch()
    with torch.no_grad():
        together = ours(ids, mask)
        alone = ours(ids[1:2, 5:], mask[1:2, 5:])
    torch.testing.assert_close(together[1, 5:], alone[0], rtol=0, atol=1e-5)


def test_loader_errors(tmp_path, reference_checkpoint):
    with pytest.raises(CheckpointError, match="config.json"):
        load_text_decoder(tmp_path)
    reference_checkpoint("tiny-31b", tmp_path)
    import json

    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 100
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_text_decoder(tmp_path)


def brute_force_sliding(mask, window, types):
    b, t = mask.shape
    blocks = vision_blocks(types) if types is not None else torch.full((b, t), -1)
    out = torch.zeros(b, 1, t, t, dtype=torch.bool)
    for i in range(b):
        for q in range(t):
            for k in range(t):
                same = types is not None and blocks[i, q] >= 0 and blocks[i, q] == blocks[i, k]
                out[i, 0, q, k] = (k <= q or same) and k > q - window and bool(mask[i, k])
            if not out[i, 0, q].any():
                out[i, 0, q] = True
    return out


def test_masks_follow_the_spec():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 10])
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 2, 2, 0], [1, 1, 0, 0, 1, 1, 1, 1, 0, 0]])
    assert vision_blocks(types).tolist() == [[-1, -1, -1, 0, 0, 0, -1, 1, 1, -1], [0, 0, -1, -1, 1, 1, 1, 1, -1, -1]]
    for window in (1, 3, 20):
        assert torch.equal(sliding_mask(mask, window), brute_force_sliding(mask, window, None))
        assert torch.equal(sliding_mask(mask, window, types), brute_force_sliding(mask, window, types))
    causal = full_mask(mask)
    assert causal[0, 0, 5].tolist() == [False, False, True, True, True, True, False, False, False, False]
    assert causal[0, 0, 0].all()  # a padding row is opened (finite attention), its output unused


@pytest.mark.parametrize("name", list(PRESETS))
def test_full_size_modules_on_meta_match_the_config_count(name):
    from model.decoder import TextDecoder

    with torch.device("meta"):
        model = TextDecoder(PRESETS[name].text)
    learned = sum(p.numel() for p in model.parameters())
    assert learned == PRESETS[name].text.num_parameters()["total"]
    assert sum(b.numel() for n, b in model.named_buffers() if n.endswith("layer_scalar")) == PRESETS[name].text.n_layers


@pytest.mark.parametrize("name", ["tiny-e2b", "tiny-moe"])
def test_saved_checkpoints_round_trip_and_load_in_the_reference(name, tmp_path, reference, reference_checkpoint):
    from model.checkpoint import save_text_decoder

    reference_checkpoint(name, tmp_path / "ref")
    ours = load_text_decoder(tmp_path / "ref")
    save_text_decoder(ours, tmp_path / "ours")
    again = load_text_decoder(tmp_path / "ours")
    for (key, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    reloaded = reference.Gemma4ForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids, mask = batch()
    with torch.no_grad():
        expected, got = reloaded(input_ids=ids, attention_mask=mask).logits, again(ids, mask)
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=0, atol=1e-4)


@pytest.mark.parametrize("block, length", [(3, 37), (64, 150)])
def test_banded_sliding_attention_equals_the_full_mask(block, length):
    """Long sequences take the banded path (blocks of query rows against their keys); it must equal plain
    masked attention, with padding and with image blocks wider than the window."""
    from model.attention import Attention
    from model.masks import banded_mask
    from model.rope import inverse_frequencies, rope_cos_sin, signed_sin
    from model.step import StepMeta, additive

    config = PRESETS["tiny-31b"].text  # window 8
    torch.manual_seed(0)
    layer = Attention(config, 0)
    x = torch.randn(2, length, config.d_model)
    mask2d = torch.ones(2, length, dtype=torch.bool)
    mask2d[1, :13] = False
    types = torch.zeros(2, length, dtype=torch.long)
    types[0, 5:20] = 1  # an image block wider than the window, crossing block boundaries
    positions = (mask2d.long().cumsum(1) - 1).clamp(min=0)
    cos, sin = rope_cos_sin(positions.reshape(-1, 1), inverse_frequencies(config.head_dim, 1e4), torch.float32)
    rope = {"sliding": (cos, signed_sin(sin))}  # (B·T, 1, H)

    def step(mask):
        return StepMeta(batch=2, tokens=length, rope=rope, masks={"sliding": mask}, keys={"sliding": "own"})

    for types_or_none, span in ((None, 0), (types, 15)):
        mask = sliding_mask(mask2d, config.sliding_window, types_or_none)
        banded = banded_mask(mask, block, torch.float32, reach=(config.sliding_window - 1, max(span - 1, 0)))
        assert banded.blocks[-1][3] - banded.blocks[-1][2] < length  # the last rows do not read every key
        flat = x.reshape(2 * length, -1)  # (B·T, D)
        with torch.no_grad():  # real rows (padding rows attend to whatever their block reads: never used)
            got = layer(flat, step(banded))[0].view(2, length, -1)
            expected = layer(flat, step(additive(mask, torch.float32)))[0].view(2, length, -1)
        torch.testing.assert_close(got[mask2d], expected[mask2d], rtol=0, atol=1e-5)


def test_bidirectional_vision_blocks_equal_reference(tmp_path, reference_checkpoint, hf_modeling):
    """31B-style presets: sliding layers see a whole image block (spec §2.7), as the reference's vision masks."""
    reference = reference_checkpoint("tiny-31b", tmp_path)
    ours = load_text_decoder(tmp_path)
    ids, mask = batch(length=30)
    types = torch.zeros_like(ids)
    types[0, 3:15] = 1  # an image block wider than the window (8)
    types[1, 8:12] = 2  # a video frame, then an image right after it
    types[1, 14:27] = 1
    types[2, 12:16] = 1
    with torch.no_grad():
        expected = reference_vision_logits(hf_modeling, reference, ids, mask, types)
        got = ours(ids, mask, mm_token_type_ids=types)
        hinted = ours(ids, mask, mm_token_type_ids=types, padded=True, vision_span=13)  # host facts, no device read
        causal_only = ours(ids, mask)
    torch.testing.assert_close(hinted, got, rtol=0, atol=0)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], rtol=0, atol=1e-4)
    assert (expected - causal_only)[valid].abs().max() > 1e-2  # the overlay matters in this test


def test_sharded_checkpoint_loads(tmp_path, reference_checkpoint):
    reference = reference_checkpoint("tiny-e2b", tmp_path / "single")
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    single, sharded = load_text_decoder(tmp_path / "single"), load_text_decoder(tmp_path / "sharded")
    for (key, a), (_, b) in zip(single.state_dict().items(), sharded.state_dict().items(), strict=True):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", ["tiny-e2b", "tiny-31b", "tiny-moe"])
@pytest.mark.parametrize("keep", [1, 3])
def test_logits_to_keep_equals_the_last_rows_and_the_reference(name, keep, tmp_path, reference_checkpoint):
    """Only the kept rows: KV-shared layers (tiny-e2b) run on those rows alone, and so does the last
    cache-writing layer apart from its K/V (every preset)."""
    reference = reference_checkpoint(name, tmp_path)
    ours = load_text_decoder(tmp_path)
    ids, mask = batch()
    with torch.no_grad():
        full = ours(ids, mask)
        last = ours(ids, mask, logits_to_keep=keep)
        expected = reference(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    assert last.shape == (3, keep, full.shape[-1])
    torch.testing.assert_close(last, full[:, -keep:], rtol=0, atol=1e-5)
    torch.testing.assert_close(last, expected, rtol=0, atol=1e-4)


def test_gradients_flow_and_inference_equals_grad_mode(tmp_path, reference_checkpoint):
    """No-grad passes update activations in place; with autograd on, the same values and a working backward."""
    reference_checkpoint("tiny-moe", tmp_path)
    ours = load_text_decoder(tmp_path)
    ids, mask = batch()
    with torch.no_grad():
        inference = ours(ids, mask)
    training = ours(ids, mask)
    assert torch.equal(training.detach(), inference)
    training[mask.bool()].square().mean().backward()
    grads = [p.grad for p in ours.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
