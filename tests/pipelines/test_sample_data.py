"""gemma4 sample-data: the tiny checkpoint agrees with the toy tokenizer and runs on the sample's batches."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from data_specs.manifest import resolve_media
from model.checkpoint import TokenizerMismatchError, check_tokenizer, load_config, load_pretrained
from model.config import TokenIds
from pipelines.sample_data import train_toy_tokenizer
from preprocess.collate import collate
from preprocess.prompt import build_example
from preprocess.tokenizer import Tokenizer
from tests.helpers import PUBLISHED_CONFIGS, config_keys


@pytest.fixture
def checkpoint(sample_checkpoint):
    return sample_checkpoint


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


def test_the_sample_checkpoint_is_laid_out_as_the_published_ones(checkpoint):
    """The files a published repo holds (spec §12), config.json with the published key set: `make demo` runs the
    path a real checkpoint takes (tokenizer.json, the chat template, generation and processor configs)."""
    import json

    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    published = json.loads((PUBLISHED_CONFIGS / "gemma-4-E2B-it.json").read_text())

    ours = json.loads((checkpoint / "config.json").read_text())
    assert config_keys(ours) == config_keys(published)
    tokenizer = Tokenizer.from_pretrained(checkpoint)
    assert tokenizer.format == "json" and tokenizer.chat_template is not None
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    assert generation["do_sample"] is True and generation["top_k"] == 64 and generation["top_p"] == 0.95
    assert generation["eos_token_id"] == list(tokenizer.special.stop_ids)  # the tokenizer's ids, never hard-coded
