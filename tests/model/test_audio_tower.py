"""The audio conformer: parity with the reference ``Gemma4AudioModel``, soft-token counts, padding invariance,
full-size meta build, bfloat16, bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from model.audio import AudioEncoder, AudioInputError, soft_tokens_from_frames
from model.config import PRESETS, ConfigError, model_to_hf
from pipelines.synthetic import synthetic_speech
from preprocess.audio import log_mel_batch
from preprocess.budget import audio_soft_tokens, audio_valid_frames

TINY = PRESETS["tiny-e2b"].audio
SECONDS = (0.7, 2.1, 1.3)  # 18, 53 and 33 output frames: 2, 5 and 3 attention chunks


@pytest.fixture(scope="module")
def reference_tower(reference):
    """A factory: a tiny random reference tower with finite clip bounds that bite and perturbed norms /
    per_dim_scale."""

    def build(config=TINY, seed: int = 0):
        torch.manual_seed(seed)
        hf = model_to_hf(replace(PRESETS["tiny-e2b"], audio=config))["audio_config"]
        model = reference.Gemma4AudioModel(reference.Gemma4AudioConfig(**hf)).eval()
        with torch.no_grad():
            for key, tensor in model.named_parameters():
                if "norm" in key or key.endswith("per_dim_scale"):  # random init leaves them at 1 and 0
                    tensor.add_(torch.randn_like(tensor) * 0.3)
            for key, tensor in model.named_buffers():
                if key.endswith(("_min", "_max")):  # ∓inf at init: clipping would never happen
                    magnitude = 1.0 + 2.0 * float(torch.rand(()))
                    tensor.fill_(-magnitude if key.endswith("_min") else magnitude)
        return model

    return build


def ours_from(reference, config=TINY) -> AudioEncoder:
    """Our tower built on the meta device and given the reference's weights, as a checkpoint load does."""
    with torch.device("meta"):
        ours = AudioEncoder(config)
    ours.load_state_dict({k: v.clone() for k, v in reference.state_dict().items()}, strict=True, assign=True)
    ours.reset_buffers("cpu")
    return ours.eval()


@pytest.fixture(scope="module")
def speech():
    clips = [synthetic_speech(s, seed=i) for i, s in enumerate(SECONDS)]
    features, mask = log_mel_batch(clips)
    return clips, features, mask


def test_state_dict_keys_and_shapes_equal_reference(reference_tower):
    reference = reference_tower()
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in AudioEncoder(TINY).state_dict().items()}
    assert got == expected
    persistent = set(AudioEncoder(TINY).state_dict())
    assert "inv_timescales" not in persistent and not any("softcap" in k for k in persistent)


def test_output_equals_reference(reference_tower, speech):
    clips, features, mask = speech
    reference = reference_tower()
    ours = ours_from(reference)
    with torch.no_grad():
        expected = reference(features, mask)
        got, got_mask = ours(features, mask)
    assert torch.equal(got_mask, expected.attention_mask)
    assert got_mask.sum(1).tolist() == [audio_soft_tokens(len(c)) for c in clips]
    torch.testing.assert_close(got[got_mask], expected.last_hidden_state[got_mask], rtol=0, atol=1e-5)
    assert got[~got_mask].abs().max() == 0  # padded positions are zero
    # The clip bounds bite: the same weights without them give another output.
    unclipped = ours_from(reference)
    for name, buffer in unclipped.named_buffers():
        if name.endswith(("_min", "_max")):
            buffer.fill_(-math.inf if name.endswith("_min") else math.inf)
    with torch.no_grad():
        assert (unclipped(features, mask)[0] - got)[got_mask].abs().max() > 1e-2


def test_unpadded_clip_equals_reference(reference_tower):
    """One clip with every frame valid (no padding mask at all in play), 61 frames = 16 outputs."""
    torch.manual_seed(3)
    features, mask = torch.randn(1, 61, 128), torch.ones(1, 61, dtype=torch.bool)
    reference = reference_tower(seed=1)
    ours = ours_from(reference)
    with torch.no_grad():
        expected = reference(features, mask).last_hidden_state
        torch.testing.assert_close(ours(features, mask)[0], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(reference(features).last_hidden_state, expected, rtol=0, atol=0)  # mask=None


def test_meta_build_full_size_parameter_count(reference):
    config = PRESETS["gemma4-e2b"].audio
    with torch.device("meta"):
        ours = AudioEncoder(config)
        hf = model_to_hf(PRESETS["gemma4-e2b"])["audio_config"]
        theirs = reference.Gemma4AudioModel(reference.Gemma4AudioConfig(**hf))
    count = sum(p.numel() for p in ours.parameters())
    assert count == config.num_parameters() == sum(p.numel() for p in theirs.parameters())
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert shapes["output_proj.weight"] == (1536, 1024)
    assert shapes["subsample_conv_projection.input_proj_linear.weight"] == (1024, 1024)


def test_bfloat16_close_to_reference(reference_tower, speech):
    _, features, mask = speech
    reference = reference_tower()
    ours = ours_from(reference)
    with torch.no_grad():
        exact = ours(features, mask)[0]
        expected = reference.to(torch.bfloat16)(features.bfloat16(), mask).last_hidden_state.float()
        got, got_mask = ours.to(torch.bfloat16)(features.bfloat16(), mask)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    scale = exact[got_mask].abs().max().item()
    # bf16 keeps 8 bits of mantissa. Measured (seed 0): 0.8 % of the output range from the reference's own bf16
    # run, 2.2 % from our float32 run.
    torch.testing.assert_close(got.float()[got_mask], expected[got_mask], rtol=0, atol=0.015 * scale)
    torch.testing.assert_close(got.float()[got_mask], exact[got_mask], rtol=0, atol=0.025 * scale)


# --- counts ---------------------------------------------------------------------------------------------


def test_soft_tokens_from_frames_equals_budget():
    lengths = [161, 162, 320, 321, 480, 481, 16_000, 479_999, 480_000, *range(161, 480_000, 997)]
    for n in lengths:
        assert soft_tokens_from_frames(audio_valid_frames(n)) == audio_soft_tokens(n), n


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 47, 48, 49, 50])
def test_output_mask_counts(frames):
    torch.manual_seed(0)
    ours = AudioEncoder(TINY).eval()
    features = torch.randn(2, 50, 128)
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0, :frames], mask[1] = True, True
    with torch.no_grad():
        out, out_mask = ours(features, mask)
    assert out.shape == (2, 13, TINY.output_dim) and out_mask.shape == (2, 13)
    assert out_mask.sum(1).tolist() == [math.ceil(math.ceil(frames / 2) / 2), 13]
    assert torch.isfinite(out).all()


# --- batching -------------------------------------------------------------------------------------------


def test_padding_never_changes_a_clip(speech):
    _, features, mask = speech
    torch.manual_seed(0)
    ours = AudioEncoder(TINY).eval()
    noisy = features.clone()
    noisy[~mask] = 1e4 * torch.randn(int((~mask).sum()), 128)  # garbage in padded frames must not matter
    order = [1, 0, 2]  # the shortest clip between two longer ones: packed clips must not see each other
    with torch.no_grad():
        batched, batched_mask = ours(noisy[order], mask[order])
        for row, clip in enumerate(order):
            valid = int(mask[clip].sum())
            alone, alone_mask = ours(features[clip : clip + 1, :valid], mask[clip : clip + 1, :valid])
            t = int(alone_mask.sum())
            assert int(batched_mask[row].sum()) == t == alone.shape[1]
            torch.testing.assert_close(batched[row, :t], alone[0], rtol=0, atol=1e-6)


def test_contract_input_kept_and_empty_batch(speech):
    _, features, mask = speech
    ours = AudioEncoder(TINY).eval()
    before, before_mask = features.clone(), mask.clone()
    with torch.no_grad():
        out, _ = ours(features, mask)
        empty, empty_mask = ours(torch.zeros(0, 40, 128), torch.zeros(0, 40, dtype=torch.bool))
    assert torch.equal(features, before) and torch.equal(mask, before_mask)
    assert out.dtype == torch.float32
    assert empty.shape == (0, 10, TINY.output_dim) and empty_mask.shape == (0, 10)


# --- bad input ------------------------------------------------------------------------------------------


def _mask(f: int, valid: list[int]) -> torch.Tensor:
    return torch.arange(f)[None, :] < torch.tensor(valid)[:, None]


@pytest.mark.parametrize(
    ("features", "mask", "message"),
    [
        (torch.zeros(20, 128), torch.ones(20, dtype=torch.bool), "features must be (B, F, 128)"),
        (torch.zeros(2, 20, 80), _mask(20, [20, 5]), "features must be (B, F, 128), got shape (2, 20, 80)"),
        (torch.zeros(2, 20, 128, dtype=torch.long), _mask(20, [20, 5]), "features must be floating point"),
        (torch.zeros(2, 20, 128), _mask(19, [19, 5]), "mask must be bool of shape (2, 20)"),
        (torch.zeros(2, 20, 128), _mask(20, [20, 5]).long(), "mask must be bool"),
        (torch.zeros(2, 20, 128), _mask(20, [20, 5]).flip(1), "clip 1: mask is not a prefix"),
        (torch.zeros(2, 20, 128), _mask(20, [0, 5]), "clip 0: mask has no valid frame"),
    ],
)
def test_bad_input_raises(features, mask, message):
    with pytest.raises(AudioInputError) as caught:
        AudioEncoder(TINY)(features, mask)
    assert isinstance(caught.value, ValueError)
    assert message in str(caught.value)


def test_unsupported_geometry_raises():
    with pytest.raises(ConfigError, match="context_left"):
        AudioEncoder(replace(TINY, context_left=5))
