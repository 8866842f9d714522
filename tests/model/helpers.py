"""Helpers the model and runtime tests share: tiny random models and configs, left-padded text batches, and a
multimodal batch built by the project's front end together with the same examples in the reference's keyword
arguments."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from data_specs.batch import Batch
from model.config import PRESETS, ModelConfig, TokenIds
from model.decoder import TextDecoder
from model.gemma4 import Gemma4
from preprocess.collate import collate, uncollate
from preprocess.image import collate_images
from preprocess.prompt import build_example
from preprocess.tokenizer import Tokenizer


def tiny_config(name: str, tok: Tokenizer) -> ModelConfig:
    """A tiny preset whose vocabulary and token ids are the test tokenizer's (ids read from it, never fixed)."""
    base = PRESETS[name]
    s = tok.special
    tokens = TokenIds(
        pad=s.pad,
        image=s.image,
        audio=s.audio,
        video=s.video,
        boi=s.boi,
        eoi=s.eoi,
        boa=s.boa,
        eoa=s.eoa,
        stop_ids=s.stop_ids,
    )
    text = dataclasses.replace(base.text, vocab_size=tok.vocab_size, ple_vocab_size=tok.vocab_size)
    return dataclasses.replace(base, text=text, tokens=tokens)


def tiny_decoder(name: str, seed: int = 0) -> TextDecoder:
    """An eval text decoder of preset ``name`` with random norm weights and layer scalars."""
    torch.manual_seed(seed)
    model = TextDecoder(PRESETS[name].text).eval()
    with torch.no_grad():  # random layer scales and norm weights, so every parameter matters
        for module in model.modules():
            for parameter_name, parameter in module.named_parameters(recurse=False):
                if parameter_name == "weight" and parameter.ndim == 1:
                    parameter.uniform_(0.5, 1.5)
        for layer in model.layers:
            layer.layer_scalar.uniform_(0.5, 1.5)
    return model


def text_model(name: str, seed: int = 0) -> Gemma4:
    """An eval text-only :class:`Gemma4` (no towers) of preset ``name`` with random layer scalars."""
    torch.manual_seed(seed)
    config = PRESETS[name]
    model = Gemma4(dataclasses.replace(config, vision=None, audio=None)).eval()
    with torch.no_grad():
        for layer in model.language_model.layers:
            layer.layer_scalar.uniform_(0.5, 1.5)
    return model


def left_padded(rows: list[list[int]]) -> Batch:
    """A text batch of ``rows`` (token ids), left padded to the longest."""
    longest = max(map(len, rows))
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, longest - len(row) :] = torch.tensor(row)
        mask[i, longest - len(row) :] = True
    return Batch.from_ids(ids, mask)


PROMPTS = [[5, 17, 99, 3, 41, 7, 8], [12, 13], [300, 2, 77, 91, 4]]


def picture(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BILINEAR)


def clip(seconds: float, freq: float, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(int(freq)).normal(0, 0.05, t.shape)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def messages(with_audio: bool, budgets=(70, 140)):
    content = [
        {"type": "text", "text": "Compare "},
        {"type": "image", "image": picture(200, 330, 1), "budget": budgets[0]},
        {"type": "text", "text": " with "},
        {"type": "image", "image": picture(300, 140, 2), "budget": budgets[1]},
    ]
    if with_audio:
        content += [
            {"type": "text", "text": " and listen: "},
            {"type": "audio", "audio": (clip(0.9, 300), 16_000)},
            {"type": "text", "text": " then "},
            {"type": "audio", "audio": (clip(1.7, 520), 16_000)},
        ]
    return [{"role": "user", "content": content}]


def ours_batch(tok, with_audio, budgets=(70, 140)) -> Batch:
    """A host batch (uint8 patches) of a multimodal example and a short text one."""
    example = build_example(messages(with_audio, budgets), tok)
    short = build_example([{"role": "user", "content": "Hello there."}], tok)
    return collate([example, short], pad_id=tok.special.pad)


def reference_inputs(batch: Batch) -> dict:
    """The same examples in the reference's padded keyword arguments (media only where the batch has some):
    patches padded to 9 × the largest budget with (−1, −1) positions, features padded with their masks."""
    examples = uncollate(batch)
    out = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    out["mm_token_type_ids"] = batch.mm_token_type_ids
    for key, items in (
        ("image", [i for e in examples for i in e.images]),
        ("video", [f for e in examples for v in e.videos for f in v.frames]),
    ):
        if items:
            padded = collate_images(items)
            values, positions = (
                ("pixel_values", "image_position_ids")
                if key == "image"
                else ("pixel_values_videos", "video_position_ids")
            )
            out[values] = torch.from_numpy(padded["pixel_values"])
            out[positions] = torch.from_numpy(padded["image_position_ids"])
    if any(e.videos for e in examples):
        out["num_frames_per_video"] = torch.tensor([v.num_frames for e in examples for v in e.videos])
    segments = [a for e in examples for a in e.audio]
    if segments:
        longest = max(a.features.shape[0] for a in segments)
        features = torch.zeros((len(segments), longest, 128))
        mask = torch.zeros((len(segments), longest), dtype=torch.bool)
        for row, a in enumerate(segments):
            features[row, : a.features.shape[0]] = torch.from_numpy(a.features)
            mask[row, : a.mask.shape[0]] = torch.from_numpy(a.mask)
        out["input_features"], out["input_features_mask"] = features, mask
    return out
