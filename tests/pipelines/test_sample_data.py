"""gemma4 sample-data: the tiny checkpoint agrees with the toy tokenizer and runs on the sample's batches."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from data_specs.manifest import resolve_media
from model.checkpoint import TokenizerMismatchError, check_tokenizer, load_config, load_pretrained
from model.config import TokenIds
from pipelines.sample_data import train_toy_tokenizer, write_sample_checkpoint
from preprocess.collate import collate
from preprocess.prompt import build_example
from preprocess.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def checkpoint(small_output, tmp_path_factory):
    return write_sample_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint", small_output[0] / "tokenizer")


def test_checkpoint_config_takes_its_ids_and_vocabulary_from_the_tokenizer(checkpoint):
    tokenizer = Tokenizer.from_pretrained(checkpoint)  # the checkpoint directory is complete: tokenizer.model too
    config = load_config(checkpoint)
    assert config.text.vocab_size == tokenizer.vocab_size
    for f in fields(TokenIds):
        assert getattr(config.tokens, f.name) == getattr(tokenizer.special, f.name), f.name
    check_tokenizer(config, tokenizer)
    assert config.vision is not None and config.audio is not None


def test_checkpoint_runs_on_a_batch_of_the_sample(small_output, checkpoint):
    import json

    directory = small_output[0]
    tokenizer = Tokenizer.from_pretrained(checkpoint)
    model = load_pretrained(checkpoint, tokenizer=tokenizer)
    rows = [json.loads(line) for line in (directory / "manifest.jsonl").read_text().splitlines()[:6]]
    rows = [r for r in rows if r["id"] in ("ex0001", "ex0002", "ex0004")]  # image, audio, video
    examples = [build_example(resolve_media(r["messages"], directory), tokenizer) for r in rows]
    batch = collate(examples, pad_id=tokenizer.special.pad)
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (3, batch.input_ids.shape[1], tokenizer.vocab_size)
    assert torch.isfinite(logits).all()


def test_another_tokenizer_is_refused_before_any_weight_is_read(checkpoint, tmp_path):
    other = Tokenizer(train_toy_tokenizer(seed=0, vocab_size=700))
    with pytest.raises(TokenizerMismatchError, match="vocab_size: tokenizer 700"):
        load_pretrained(checkpoint, tokenizer=other)
