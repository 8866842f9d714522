"""The packed Batch: the reference processor's tensors through ``Batch.from_hf`` equal our collated batch;
validation names the field; moving keeps host metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data_specs.batch import Batch, BatchError, MediaCountError, PackedAudio, PackedPatches
from data_specs.media import Modality
from preprocess.chat import render_chat
from preprocess.collate import collate
from preprocess.prompt import build_example
from preprocess.tokenizer import SPECIAL_STRINGS


@pytest.fixture
def processor(tokenizer_dir, hf_processor):
    return lambda budget: hf_processor.processor(
        tokenizer_dir / "tokenizer.model", list(SPECIAL_STRINGS.values()), image_budget=budget
    )


def picture(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def speech(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * 300 * t) + rng.normal(0, 0.05, t.shape)).astype(np.float32)


def test_reference_processor_tensors_equal_our_batch_on_the_device(tok, processor):
    """The same prompt through the reference processor + ``Batch.from_hf`` and through our front end +
    ``collate``, both moved with ``Batch.to``: the same tensors (audio features to the extractor's 1e-6)."""
    pictures, clips = [picture(300, 500, 1), picture(90, 40, 2)], [speech(1.3, 3), speech(0.6, 4)]
    content = [{"type": "text", "text": "Compare "}]
    content += [{"type": "image", "image": p} for p in pictures]
    content += [{"type": "audio", "audio": (c, 16_000)} for c in clips]
    messages = [{"role": "user", "content": content}]
    ours = collate([build_example(messages, tok, image_budget=140)], pad_id=tok.special.pad).to("cpu")
    out = processor(140)(
        text=[render_chat(messages).text], images=[pictures], audio=clips, add_special_tokens=False, return_tensors="pt"
    )
    theirs = Batch.from_hf(**out.data).to("cpu")
    assert torch.equal(theirs.input_ids, ours.input_ids)
    assert torch.equal(theirs.attention_mask, ours.attention_mask)
    assert torch.equal(theirs.mm_token_type_ids, ours.mm_token_type_ids)
    assert theirs.images.grids == ours.images.grids and len(theirs.images) == 2
    torch.testing.assert_close(theirs.images.values, ours.images.values, rtol=0, atol=0)
    assert theirs.audio.frames == ours.audio.frames and len(theirs.audio) == 2
    torch.testing.assert_close(theirs.audio.features, ours.audio.features, rtol=0, atol=1e-6)


def test_from_hf_puts_patches_in_raster_order():
    """Positions in any order (here reversed) give the same packed raster-order patches."""
    rng = np.random.default_rng(0)
    rows, cols = 6, 9
    values = torch.from_numpy(rng.random((1, rows * cols + 5, 768), dtype=np.float32))  # 5 padding patches
    ys, xs = np.divmod(np.arange(rows * cols), cols)
    positions = torch.full((1, rows * cols + 5, 2), -1, dtype=torch.long)
    positions[0, : rows * cols] = torch.from_numpy(np.stack([xs, ys], 1))
    ids = torch.zeros((1, 6 + 4), dtype=torch.long)
    types = torch.tensor([[0] * 4 + [Modality.IMAGE] * 6])
    raster = Batch.from_hf(input_ids=ids, mm_token_type_ids=types, pixel_values=values, image_position_ids=positions)
    order = torch.arange(rows * cols).flip(0)
    shuffled_values, shuffled_positions = values.clone(), positions.clone()
    shuffled_values[0, : rows * cols] = values[0, order]
    shuffled_positions[0, : rows * cols] = positions[0, order]
    again = Batch.from_hf(
        input_ids=ids, mm_token_type_ids=types, pixel_values=shuffled_values, image_position_ids=shuffled_positions
    )
    assert raster.images.grids == again.images.grids == ((rows, cols),)
    assert torch.equal(raster.images.values, values[0, : rows * cols]) and torch.equal(
        again.images.values, raster.images.values
    )


def test_placeholder_counts_are_checked_on_the_host():
    ids = torch.zeros((1, 12), dtype=torch.long)
    types = torch.tensor([[0, 0] + [Modality.IMAGE] * 5 + [0] * 5])
    images = PackedPatches(torch.zeros((54, 768), dtype=torch.uint8), ((6, 9),))  # 6 soft tokens
    with pytest.raises(MediaCountError, match="5 image placeholder tokens, but the batch's image items give 6"):
        Batch(
            input_ids=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool), mm_token_type_ids=types, images=images
        )
    audio = PackedAudio(torch.zeros((9, 128)), (9,))  # 3 tokens
    with pytest.raises(MediaCountError, match="0 audio placeholder tokens, but the batch's audio items give 3"):
        Batch(input_ids=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool), mm_token_type_ids=ids, audio=audio)


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: PackedPatches(torch.zeros((10, 768), dtype=torch.uint8), ((3, 3),)),
            "hold 9 patches, but values has 10",
        ),
        (lambda: PackedPatches(torch.zeros((8, 768), dtype=torch.uint8), ((2, 4),)), "item 0: the patch grid 2×4"),
        (lambda: PackedPatches(torch.zeros((9, 700), dtype=torch.uint8), ((3, 3),)), r"\(patches, 768\)"),
        (lambda: PackedPatches(torch.zeros((9, 768), dtype=torch.int32), ((3, 3),)), "uint8 or floating"),
        (lambda: PackedAudio(torch.zeros((5, 128)), (2, 2)), "sum to 4, but features has 5"),
        (lambda: PackedAudio(torch.zeros((4, 128)), (4, 0)), "audio segment 1 has 0 frames"),
        (lambda: PackedAudio(torch.zeros((4, 128), dtype=torch.long), (4,)), "floating point"),
        (
            lambda: Batch(
                input_ids=torch.zeros((2, 3), dtype=torch.long),
                attention_mask=torch.ones((2, 4), dtype=torch.bool),
                mm_token_type_ids=torch.zeros((2, 3), dtype=torch.long),
            ),
            r"attention_mask must have input_ids' shape \(2, 3\)",
        ),
        (
            lambda: Batch(
                input_ids=torch.zeros((1, 3), dtype=torch.long),
                attention_mask=torch.ones((1, 3), dtype=torch.long),
                mm_token_type_ids=torch.zeros((1, 3), dtype=torch.long),
            ),
            "attention_mask must be bool",
        ),
        (
            lambda: Batch.from_ids(torch.zeros((1, 3), dtype=torch.long)).__class__(
                input_ids=torch.zeros((1, 3), dtype=torch.long),
                attention_mask=torch.ones((1, 3), dtype=torch.bool),
                mm_token_type_ids=torch.tensor([[0, 7, 0]]),
            ),
            "mm_token_type_ids must hold",
        ),
    ],
)
def test_bad_batches_name_the_field(build, message):
    with pytest.raises(BatchError, match=message):
        build()


def test_from_hf_errors_name_the_input():
    ids = torch.zeros((1, 4), dtype=torch.long)
    with pytest.raises(TypeError, match=r"unexpected keyword\(s\) \['attention_maks'\]"):
        Batch.from_hf(input_ids=ids, attention_maks=torch.ones_like(ids))
    values = torch.zeros((1, 10, 768))
    positions = torch.full((1, 10, 2), -1, dtype=torch.long)
    positions[0, :4] = torch.tensor([[0, 0], [1, 0], [0, 1], [0, 1]])  # (1, 1) missing, (0, 1) twice
    with pytest.raises(BatchError, match="pixel_values item 0: 4 patches do not cover the 2×2 grid once each"):
        Batch.from_hf(input_ids=ids, mm_token_type_ids=ids, pixel_values=values, image_position_ids=positions)
    with pytest.raises(BatchError, match="pixel_values needs its image_position_ids"):
        Batch.from_hf(input_ids=ids, mm_token_type_ids=ids, pixel_values=values)
    mask = torch.tensor([[True, False, True]])
    with pytest.raises(BatchError, match="input_features_mask segment 0: not a prefix"):
        Batch.from_hf(
            input_ids=ids, mm_token_type_ids=ids, input_features=torch.zeros((1, 3, 128)), input_features_mask=mask
        )
    with pytest.raises(BatchError, match="needs mm_token_type_ids with media"):
        Batch.from_hf(input_ids=ids, input_features=torch.zeros((1, 3, 128)), input_features_mask=mask | True)


def test_text_batches_and_moving():
    ids = torch.tensor([[5, 6, 7], [0, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    batch = Batch.from_ids(ids, mask)
    assert len(batch) == 2 and batch.attention_mask.dtype == torch.bool and not batch.mm_token_type_ids.any()
    assert repr(batch) == "Batch(B=2, T=3, device=cpu)"
    assert torch.equal(Batch.from_hf(input_ids=ids, attention_mask=mask).attention_mask, batch.attention_mask)
    moved = batch.to("cpu", torch.bfloat16)
    assert moved.input_ids.dtype == torch.int64 and moved.images.values.dtype == torch.bfloat16
    # Host facts for the model: padding read once at construction and carried along; no vision here.
    assert batch.padded is True and moved.padded is True and batch.vision_span == 0
    assert Batch.from_ids(ids).padded is False
    with pytest.raises(BatchError, match="padded=False was given, but the attention mask says True"):
        Batch(input_ids=ids, attention_mask=mask.bool(), mm_token_type_ids=torch.zeros_like(ids), padded=False)
