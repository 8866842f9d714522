"""Collation: padding, masks, packed media; every example survives collate + uncollate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data_specs.batch import Batch, MediaCountError
from data_specs.media import Modality
from preprocess.collate import bucket_by_length, collate, uncollate
from preprocess.prompt import build_example
from preprocess.tokenizer import Tokenizer
from tests.preprocess.helpers import assert_same, encode_video


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


@pytest.mark.parametrize("side", ["left", "right"])
def test_round_trip(examples, side):
    tok, items = examples
    batch = collate(items, pad_id=tok.special.pad, padding_side=side)
    for original, recovered in zip(items, uncollate(batch), strict=True):
        assert_same(original, recovered)


def test_padding_masks_and_packed_media(examples):
    tok, items = examples
    batch = collate(items, pad_id=tok.special.pad)
    assert isinstance(batch, Batch) and len(batch) == len(items)
    lengths = [len(e.input_ids) for e in items]
    width = max(lengths)
    assert batch.input_ids.shape == (len(items), width)
    for row, length in enumerate(lengths):
        assert batch.attention_mask[row].sum() == length
        assert batch.attention_mask[row, width - length :].all()  # left padding
        assert (batch.input_ids[row, : width - length] == tok.special.pad).all()
    # images packed without padding, in order, uint8 until moved
    images = [items[1].images[0], items[2].images[0]]
    assert batch.images.values.dtype == torch.uint8
    assert torch.equal(batch.images.values, torch.from_numpy(np.concatenate([i.patches for i in images])))
    assert batch.images.grids == tuple(i.grid for i in images)
    assert batch.images.num_soft_tokens == tuple(i.num_soft_tokens for i in images)
    frames = [f for e in items for v in e.videos for f in v.frames]
    assert len(batch.videos) == 4 and batch.videos.values.shape == (sum(f.num_patches for f in frames), 768)
    # audio: only valid frames, segment by segment
    segments = [s for e in items for s in e.audio]
    assert batch.audio.frames == tuple(int(s.mask.sum()) for s in segments)
    assert torch.equal(batch.audio.features, torch.from_numpy(np.concatenate([s.features[s.mask] for s in segments])))
    # Placeholders in the batch equal what the encoders receive.
    types = batch.mm_token_type_ids
    assert int((types == Modality.IMAGE).sum()) == sum(batch.images.num_soft_tokens)
    audio_tokens = sum(s.num_tokens for s in segments)
    assert int((types == Modality.AUDIO).sum()) == audio_tokens == sum(batch.audio.num_soft_tokens)
    assert int((types == Modality.VIDEO).sum()) == sum(v.num_soft_tokens for e in items for v in e.videos)
    assert repr(batch) == (
        f"Batch(B=5, T={width}, device=cpu, images=2 (({sum(i.num_patches for i in images)}, 768) uint8), "
        f"videos=4 (({sum(f.num_patches for f in frames)}, 768) uint8), "
        f"audio={len(segments)} segments (({sum(batch.audio.frames)}, 128) float32))"
    )


def test_to_device_rescales_patches(examples):
    tok, items = examples
    batch = collate(items, pad_id=tok.special.pad)
    moved = batch.to("cpu")
    assert moved.images.values.dtype == torch.float32
    expected = torch.from_numpy(items[1].images[0].pixel_values())
    assert torch.equal(moved.images.values[: items[1].images[0].num_patches], expected)
    assert moved.input_ids.dtype == torch.int64 and moved.images.grids == batch.images.grids
    half = batch.to("cpu", dtype=torch.bfloat16)
    assert half.images.values.dtype == torch.bfloat16 and half.audio.features.dtype == torch.bfloat16
    assert batch.images.values.dtype == torch.uint8  # the host batch is untouched
    assert batch.pin_memory().images.values.data_ptr() == batch.images.values.data_ptr() or torch.cuda.is_available()


def test_a_moved_batch_cannot_be_uncollated(examples):
    tok, items = examples
    with pytest.raises(ValueError, match="host batch"):
        uncollate(collate(items, pad_id=tok.special.pad).to("cpu"))


def test_placeholder_mismatch_is_caught_at_collation(examples):
    tok, items = examples
    broken = items[1]
    ids, types = broken.input_ids.copy(), broken.mm_token_type_ids.copy()
    first = int(np.argmax(types == Modality.IMAGE))
    types[first] = Modality.TEXT
    cut = type(broken)(ids, types, broken.images, [], [], {})
    n = int((types == Modality.IMAGE).sum())
    with pytest.raises(MediaCountError, match=f"{n} image placeholder tokens.*{n + 1} image soft tokens"):
        collate([cut], pad_id=tok.special.pad)


def test_empty_and_bad():
    batch = collate([], pad_id=0)
    assert batch.input_ids.shape == (0, 0) and uncollate(batch) == []
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
