"""The audio conformer: parity with the reference ``Gemma4AudioModel``, soft-token counts, padding invariance,
full-size meta build, bfloat16, bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from data_specs.media import audio_tokens_from_frames
from model.audio import AudioEncoder, AudioInputError
from model.checkpoint import model_to_hf
from model.config import PRESETS, ConfigError
from pipelines.sample_data import synthetic_speech
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


def packed(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Our form, as ``collate`` packs audio: every clip's valid frames back to back, and their counts."""
    return features[mask], mask.sum(dim=1).tolist()


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
        got = ours(*packed(features, mask))  # (N, E): every clip's outputs in order
    assert expected.attention_mask.sum(1).tolist() == [audio_soft_tokens(len(c)) for c in clips]
    torch.testing.assert_close(got, expected.last_hidden_state[expected.attention_mask], rtol=0, atol=1e-5)
    # The clip bounds bite: the same weights without them give another output.
    unclipped = ours_from(reference)
    for name, buffer in unclipped.named_buffers():
        if name.endswith(("_min", "_max")):
            buffer.fill_(-math.inf if name.endswith("_min") else math.inf)
    with torch.no_grad():
        assert (unclipped(*packed(features, mask)) - got).abs().max() > 1e-2


def test_unpadded_clip_equals_reference(reference_tower):
    """One clip with every frame valid (no padding mask at all in play), 61 frames = 16 outputs."""
    torch.manual_seed(3)
    features, mask = torch.randn(1, 61, 128), torch.ones(1, 61, dtype=torch.bool)
    reference = reference_tower(seed=1)
    ours = ours_from(reference)
    with torch.no_grad():
        expected = reference(features, mask).last_hidden_state
        torch.testing.assert_close(ours(features[0], [61]), expected[0], rtol=0, atol=1e-5)
        assert (reference(features).last_hidden_state - expected).abs().max() == 0  # mask=None: same window


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
        exact = ours(*packed(features, mask))
        theirs = reference.to(torch.bfloat16)(features.bfloat16(), mask)
        expected = theirs.last_hidden_state.float()[theirs.attention_mask]
        got = ours.to(torch.bfloat16)(*packed(features.bfloat16(), mask))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    scale = exact.abs().max().item()
    # bf16 keeps 8 bits of mantissa. Measured (seed 0): 0.8 % of the output range from the reference's own bf16
    # run, 2.2 % from our float32 run.
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=0.015 * scale)
    torch.testing.assert_close(got.float(), exact, rtol=0, atol=0.025 * scale)


# --- counts ---------------------------------------------------------------------------------------------


def test_tokens_from_frames_equals_budget():
    lengths = [161, 162, 320, 321, 480, 481, 16_000, 479_999, 480_000, *range(161, 480_000, 997)]
    for n in lengths:
        assert audio_tokens_from_frames(audio_valid_frames(n)) == audio_soft_tokens(n), n


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 47, 48, 49, 50])
def test_output_counts(frames):
    """Every frame count, odd and even, short and chunk-crossing: ⌈⌈V/2⌉/2⌉ outputs per clip, in order."""
    torch.manual_seed(0)
    ours = AudioEncoder(TINY).eval()
    features = torch.randn(frames + 50, 128)
    with torch.no_grad():
        out = ours(features, [frames, 50])
    assert out.shape == (math.ceil(math.ceil(frames / 2) / 2) + 13, TINY.output_dim)
    assert torch.isfinite(out).all()


# --- batching -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [[1, 0, 2], [0, 2, 1], [2, 2, 0]])
def test_neighbours_never_change_a_clip(speech, order):
    """A clip's outputs do not depend on the clips packed around it (the shortest between two longer ones,
    one clip twice): the subsampling slots and the attention blocks keep clips apart."""
    _, features, mask = speech
    torch.manual_seed(0)
    ours = AudioEncoder(TINY).eval()
    clips = [features[c][mask[c]] for c in order]
    with torch.no_grad():
        batched = ours(torch.cat(clips), [c.shape[0] for c in clips])
        alone = torch.cat([ours(c, [c.shape[0]]) for c in clips])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-6)


def test_blocked_subsampling_equals_one_block_and_the_reference(reference_tower, monkeypatch):
    """Clips longer than one CPU conv block (1024 slot rows), block edges inside clips: the same outputs as one
    block (within float rounding) and as the reference. Frame counts of 2 mod 4 (1270, 30, 910) make the first
    conv write a row past each clip's end, which must be zeroed before the second conv as the reference does."""
    import model.audio as audio

    clips = [synthetic_speech(14, seed=10 + i)[: 161 + 160 * (v - 1)] for i, v in enumerate((1270, 30, 910))]
    features, mask = log_mel_batch(clips)
    reference = reference_tower(seed=2)
    ours = ours_from(reference)
    values, counts = packed(features, mask)
    assert counts == [1270, 30, 910] and sum(4 * (c // 4 + 2) for c in counts) > 2 * audio._CPU_CONV_BLOCK
    with torch.no_grad():
        blocked = ours(values, counts)
        monkeypatch.setattr(audio, "_CPU_CONV_BLOCK", 1 << 30)
        whole = ours(values, counts)
        expected = reference(features, mask)
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(blocked, expected.last_hidden_state[expected.attention_mask], rtol=0, atol=1e-5)


def test_contract_input_kept_and_empty_batch(speech):
    _, features, mask = speech
    ours = AudioEncoder(TINY).eval()
    values, counts = packed(features, mask)
    before = values.clone()
    with torch.no_grad():
        out = ours(values, counts)
        empty = ours(torch.zeros(0, 128), [])
    assert torch.equal(values, before)
    assert out.dtype == torch.float32 and out.shape[0] == sum(audio_tokens_from_frames(c) for c in counts)
    assert empty.shape == (0, TINY.output_dim)


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "frames", "message"),
    [
        (torch.zeros(2, 20, 128), [20, 20], "features must be (frames, 128), got shape (2, 20, 128)"),
        (torch.zeros(25, 80), [20, 5], "features must be (frames, 128), got shape (25, 80)"),
        (torch.zeros(25, 128, dtype=torch.long), [20, 5], "features must be floating point"),
        (torch.zeros(25, 128), [20, 4], "the clips' frame counts sum to 24, but features has 25 rows"),
        (torch.zeros(25, 128), [25, 0], "clip 1: 0 frames"),
    ],
)
def test_bad_input_raises(features, frames, message):
    with pytest.raises(AudioInputError) as caught:
        AudioEncoder(TINY)(features, frames)
    assert isinstance(caught.value, ValueError)
    assert message in str(caught.value)


def test_unsupported_geometry_raises():
    with pytest.raises(ConfigError, match="context_left"):
        AudioEncoder(replace(TINY, context_left=5))
