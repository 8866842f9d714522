"""Collation: padding, masks, positions, media stacking; every example survives collate + uncollate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from preprocess.collate import bucket_by_length, collate, to_device, uncollate
from preprocess.prompt import build_example
from preprocess.tokenizer import Tokenizer
from tests.preprocess.test_video import encode_video


@pytest.fixture(scope="module")
def examples(tokenizer_dir):
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    rng = np.random.default_rng(0)

    def picture(h, w):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    def clip(seconds):
        return (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32), 16_000

    conversations = [
        [{"role": "user", "content": "Just text."}],
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": picture(100, 300), "budget": 70}, {"type": "text", "text": "?"}],
            }
        ],
        [
            {
                "role": "user",
                "content": [{"type": "audio", "audio": clip(3.5)}, {"type": "image", "image": picture(500, 400)}],
            }
        ],
        [{"role": "user", "content": [{"type": "audio", "audio": clip(0.5)}, {"type": "audio", "audio": clip(31.0)}]}],
        [{"role": "user", "content": [{"type": "video", "video": encode_video(20), "num_frames": 4}]}],
    ]
    return tok, [build_example(c, tok) for c in conversations]


def assert_same(a, b):
    assert np.array_equal(a.input_ids, b.input_ids) and a.input_ids.dtype == b.input_ids.dtype
    assert np.array_equal(a.mm_token_type_ids, b.mm_token_type_ids)
    assert len(a.images) == len(b.images) and len(a.audio) == len(b.audio) and len(a.videos) == len(b.videos)
    for x, y in zip(a.images, b.images, strict=True):
        assert np.array_equal(x.patches, y.patches) and (x.size, x.original_size, x.budget) == (
            y.size,
            y.original_size,
            y.budget,
        )
    for x, y in zip(a.videos, b.videos, strict=True):
        assert (x.timestamps, x.budget) == (y.timestamps, y.budget)
        for f, g in zip(x.frames, y.frames, strict=True):
            assert np.array_equal(f.patches, g.patches) and (f.size, f.original_size) == (g.size, g.original_size)
    for x, y in zip(a.audio, b.audio, strict=True):
        assert np.array_equal(x.features, y.features) and np.array_equal(x.mask, y.mask)
        assert (x.num_tokens, x.start_s, x.end_s, x.part) == (y.num_tokens, y.start_s, y.end_s, y.part)
    assert a.summary == b.summary


@pytest.mark.parametrize("side", ["left", "right"])
def test_round_trip(examples, side):
    tok, items = examples
    batch = collate(items, pad_id=tok.special.pad, padding_side=side)
    for original, recovered in zip(items, uncollate(batch), strict=True):
        assert_same(original, recovered)


def test_padding_masks_positions(examples):
    tok, items = examples
    batch = collate(items, pad_id=tok.special.pad)
    lengths = [len(e.input_ids) for e in items]
    width = max(lengths)
    assert batch["input_ids"].shape == (len(items), width)
    for row, length in enumerate(lengths):
        assert batch["attention_mask"][row].sum() == length
        assert batch["attention_mask"][row, width - length :].all()  # left padding
        assert (batch["input_ids"][row, : width - length] == tok.special.pad).all()
        assert torch.equal(batch["position_ids"][row, width - length :], torch.arange(length))
    # images padded to 9 × the largest budget in the batch, uint8 until moved
    assert batch["pixel_values"].dtype == torch.uint8
    assert batch["pixel_values"].shape == (2, 9 * 280, 768)
    assert (batch["image_position_ids"][0, items[1].images[0].num_patches :] == -1).all()
    assert batch["num_soft_tokens_per_image"] == [
        items[1].images[0].num_soft_tokens,
        items[2].images[0].num_soft_tokens,
    ]
    segments = [s for e in items for s in e.audio]
    assert batch["input_features"].shape == (len(segments), max(s.features.shape[0] for s in segments), 128)
    # Placeholders in the batch equal what the encoders receive.
    assert int((batch["mm_token_type_ids"] == 1).sum()) == sum(batch["num_soft_tokens_per_image"])
    assert int((batch["mm_token_type_ids"] == 3).sum()) == sum(s.num_tokens for s in segments)
    assert int((batch["mm_token_type_ids"] == 2).sum()) == sum(v.num_soft_tokens for e in items for v in e.videos)
    assert batch["pixel_values_videos"].shape == (4, 9 * 70, 768) and batch["num_frames_per_video"] == [4]


def test_to_device_rescales_patches(examples):
    tok, items = examples
    batch = collate(items, pad_id=tok.special.pad)
    moved = to_device(batch, "cpu")
    assert moved["pixel_values"].dtype == torch.float32
    expected = torch.from_numpy(items[1].images[0].pixel_values())
    assert torch.equal(moved["pixel_values"][0, : items[1].images[0].num_patches], expected)
    assert moved["input_ids"].dtype == torch.int64
    half = to_device(batch, "cpu", dtype=torch.bfloat16)
    assert half["pixel_values"].dtype == torch.bfloat16


def test_empty_and_bad():
    batch = collate([], pad_id=0)
    assert batch["input_ids"].shape == (0, 0) and uncollate(batch) == []
    with pytest.raises(ValueError, match="padding_side"):
        collate([], pad_id=0, padding_side="middle")


def test_bucketing():
    lengths = [5, 100, 7, 98, 6, 99, 50]
    batches = bucket_by_length(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [0, 4, 2]
    shuffled = bucket_by_length(lengths, 3, seed=1)
    assert sorted(map(sorted, shuffled)) == sorted(map(sorted, batches)) and shuffled == bucket_by_length(
        lengths, 3, seed=1
    )
    with pytest.raises(ValueError):
        bucket_by_length(lengths, 0)
