"""Held-out checkpoints laid out as the four published repos are (spec §12): config.json with the published key
set, tokenizer.json alone (no tokenizer.model), the chat template, generation_config.json, bfloat16 weights in one
file (E2B, E4B: with the KV-shared layers' unused K/V tensors) or in shards with an index (31B, 26B-A4B). Each runs
`gemma4 infer` and `gemma4 chat` with no option beyond --checkpoint (and a short reply), and the prompt ids built
here equal the reference tokenizer + template's on multilingual conversations."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from pipelines import cli

# family → (tiny preset with its features, sharded weights)
LAYOUTS = {
    "e2b": ("tiny-e2b", False),
    "e4b": ("tiny-e2b", False),
    "31b": ("tiny-31b", True),
    "26b-a4b": ("tiny-moe", True),
}


def shard(directory: Path) -> None:
    """Split model.safetensors into two files and an index, as the 31B and 26B-A4B repos hold their weights."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, directory / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors").unlink()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def add_unused_kv(directory: Path, config) -> int:
    """The K/V projections and key norms of the KV-shared layers, stored as the E2B/E4B files store them."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    added = 0
    for layer in range(config.text.first_shared_layer, config.text.n_layers):
        source = f"model.language_model.layers.{config.text.kv_source(layer)}.self_attn"
        for part in ("k_proj", "v_proj", "k_norm"):
            tensors[f"model.language_model.layers.{layer}.self_attn.{part}.weight"] = tensors[
                f"{source}.{part}.weight"
            ].clone()
            added += 1
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return added


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pipelines.sample_data import write_sample_dataset

    directory = tmp_path_factory.mktemp("layouts")
    manifest, tokenizer = write_sample_dataset(directory, rows=3)  # text, image, audio rows
    return manifest, tokenizer


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request, data, tmp_path_factory):
    from model.checkpoint import load_config
    from pipelines.sample_data import write_sample_checkpoint

    preset, sharded = LAYOUTS[request.param]
    directory = tmp_path_factory.mktemp(request.param) / f"gemma-4-{request.param}-it"
    write_sample_checkpoint(directory, data[1], preset=preset)
    from model.checkpoint import load_pretrained, save_pretrained

    bf16 = load_pretrained(directory, dtype="bfloat16")
    save_pretrained(bf16, directory)  # the published checkpoints are bfloat16
    config = load_config(directory)
    if config.text.n_kv_shared_layers:
        assert add_unused_kv(directory, config) == 3 * config.text.n_kv_shared_layers
    if sharded:
        shard(directory)
    names = {p.name for p in directory.iterdir()}
    assert (
        "tokenizer.model" not in names and {"tokenizer.json", "chat_template.jinja", "generation_config.json"} <= names
    )
    return request.param, directory


@pytest.mark.slow
def test_gemma4_infer_runs_with_only_the_checkpoint(layout, data, tmp_path, capsys):
    name, checkpoint = layout
    manifest, _ = data
    out = tmp_path / "out"
    assert cli.main(["infer", str(manifest), str(out), "--checkpoint", str(checkpoint)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"model: gemma-4-{name}-it, bfloat16 on cpu")
    summary = [line for line in printed.splitlines() if line.startswith("rows ")][0]
    if name in ("e2b", "e4b"):
        assert summary.startswith("rows 3 = results 3 + errors 0")
    else:  # no audio tower: the audio row is an error row, the job goes on
        assert summary.startswith("rows 3 = results 2 + errors 1 (by stage: prompt 1)")
        from pipelines.infer_job import read_results

        assert [r["id"] for r in read_results(out)] == ["ex0000", "ex0001"]


def test_gemma4_chat_runs_with_only_the_checkpoint(layout, data, capsys):
    _, checkpoint = layout
    image = Path(data[0]).parent / "media" / "img1.jpg"
    args = ["chat", "--checkpoint", str(checkpoint), "--image", str(image), "--max-new-tokens", "8", "--json"]
    assert cli.main([*args, "What is in the picture?"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["completion_tokens"] <= 8 and reply["prompt_tokens"] > 20


MULTILINGUAL = [
    [{"role": "user", "content": "日本語で答えてください：東京の天気は？"}],
    [
        {"role": "system", "content": "Réponds en français, s'il te plaît. Größe: ÜBER 9000 — naïve café"},
        {"role": "user", "content": "Qu'est-ce qu'un 🙂 ? 👨‍👩‍👧‍👦"},
        {"role": "assistant", "content": "<|channel>thought\nSimple.<channel|>Un émoji."},
        {"role": "user", "content": "한국어로도 말해 줘.\n\n\tcode: `def f(x): return x**2`  "},
    ],
    [{"role": "user", "content": [{"type": "text", "text": "  spaces   and\ttabs\n\nand 12345 digits 𝔘𝔫𝔦  "}]}],
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Météo actuelle",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "Ville"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.mark.parametrize("conversation", range(len(MULTILINGUAL)))
@pytest.mark.parametrize("thinking", [False, True])
def test_prompt_ids_equal_the_reference_tokenizer_and_template(layout, conversation, thinking, reference):
    from preprocess.prompt import build_example
    from preprocess.tokenizer import Tokenizer

    _, checkpoint = layout
    messages = MULTILINGUAL[conversation]
    theirs = reference.AutoTokenizer.from_pretrained(checkpoint)
    tools = TOOLS if conversation == 0 else None
    expected = theirs.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True, enable_thinking=thinking, return_dict=False
    )
    ours = build_example(messages, Tokenizer.from_pretrained(checkpoint), tools=tools, enable_thinking=thinking)
    assert ours.input_ids.tolist() == list(expected)


def test_the_configs_key_set_and_bf16_default(layout):
    from model.checkpoint import load_pretrained

    _, checkpoint = layout
    model = load_pretrained(checkpoint)  # no dtype: the stored bfloat16, as downloaded
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert dataclasses.is_dataclass(model.config)
