"""The per-layer-embedding table kept in host memory (``load_pretrained(..., ple_on_host=True)``,
``model.host.HostEmbedding``): the same logits and greedy tokens as the table on the device, the table
memory-mapped from the checkpoint and left alone by ``.to()``, every other weight on the device, and saving,
``state_dict`` and ``parameters()`` unchanged. On these CPU tests host and device are both the CPU, so the host
path is shown taken by counting its gathers; a meta-device load shows where each weight goes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from data_specs.batch import Batch
from model.checkpoint import load_pretrained, load_text_decoder, read_safetensors, save_pretrained, save_text_decoder
from model.config import PRESETS
from model.decoder import TextDecoder
from model.gemma4 import Gemma4
from model.host import HostEmbedding
from runtime.generate import generate

TABLE = "language_model.embed_tokens_per_layer.weight"


def text_model(name: str, dtype: torch.dtype = torch.float32) -> Gemma4:
    """A tiny text-only model with random layer scalars (so that every layer's output matters)."""
    torch.manual_seed(0)
    model = Gemma4(dataclasses.replace(PRESETS[name], vision=None, audio=None))
    with torch.no_grad():
        for layer in model.language_model.layers:
            layer.layer_scalar.uniform_(0.5, 1.5)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def ple_checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-e2b-text")
    save_pretrained(text_model("tiny-e2b"), directory)
    return directory


def mapped_from(tensor: torch.Tensor, file: Path) -> bool:
    """Whether ``tensor``'s data lies in a memory mapping of ``file`` (Linux's /proc/self/maps)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("no /proc/self/maps to find memory mappings in")
    address = tensor.data_ptr()
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(a, 16) for a in fields[0].split("-"))
        if low <= address < high:
            return len(fields) == 6 and fields[5] == str(file.resolve())
    return False


@pytest.fixture
def gathers(monkeypatch) -> list[tuple[int, ...]]:
    """The id shapes every HostEmbedding lookup is called with, in order."""
    shapes: list[tuple[int, ...]] = []
    forward = HostEmbedding.forward

    def counting(self, input_ids):
        shapes.append(tuple(input_ids.shape))
        return forward(self, input_ids)

    monkeypatch.setattr(HostEmbedding, "forward", counting)
    return shapes


PROMPT = torch.tensor([[2, 5, 17, 99, 3, 41, 7, 8, 12, 300, 4, 77], [2, 13, 200, 9, 61, 5, 5, 6, 88, 1, 30, 44]])


def test_host_table_gives_the_same_logits_and_greedy_tokens(ple_checkpoint, gathers):
    on_device = load_pretrained(ple_checkpoint)
    on_host = load_pretrained(ple_checkpoint, ple_on_host=True)
    assert on_host.language_model.ple_on_host and not on_device.language_model.ple_on_host
    batch = Batch.from_ids(PROMPT)
    with torch.no_grad():
        assert torch.equal(on_host(batch), on_device(batch))
    assert gathers == [tuple(PROMPT.shape)]  # the forward gathered on the host, once, every id
    steps = 2 * on_host.config.text.sliding_window + 3  # decoding past the sliding window
    expected = generate(on_device, batch, max_new_tokens=steps, stop_ids=())
    got = generate(on_host, batch, max_new_tokens=steps, stop_ids=())
    assert [g.token_ids for g in got] == [e.token_ids for e in expected]
    assert gathers[1:] == [tuple(PROMPT.shape)] + [(2, 1)] * (steps - 1)  # the prefill, then one id per row


def test_the_table_stays_mapped_from_the_file(ple_checkpoint):
    model = load_pretrained(ple_checkpoint, ple_on_host=True, dtype="float32")  # the checkpoint's: no conversion
    table = model.get_parameter(TABLE)
    assert isinstance(model.language_model.embed_tokens_per_layer, HostEmbedding)
    assert table.device.type == "cpu" and table.dtype == torch.float32
    assert mapped_from(table, ple_checkpoint / "model.safetensors")  # not a copy in RAM
    converted = load_pretrained(ple_checkpoint, ple_on_host=True, dtype="bfloat16")  # converted in host RAM
    assert converted.get_parameter(TABLE).dtype == torch.bfloat16
    assert not mapped_from(converted.get_parameter(TABLE), ple_checkpoint / "model.safetensors")


def test_every_other_weight_goes_to_the_device(ple_checkpoint):
    model = load_pretrained(ple_checkpoint, device="meta", ple_on_host=True)
    devices = {name: p.device.type for name, p in model.named_parameters()}
    assert devices.pop(TABLE) == "cpu"
    assert set(devices.values()) == {"meta"}
    assert next(model.parameters()).device.type == "meta"  # what generate and the engine take as the device
    assert {b.device.type for b in model.buffers()} == {"meta"}


def test_to_moves_and_converts_everything_but_the_table(ple_checkpoint):
    model = load_pretrained(ple_checkpoint, ple_on_host=True)
    reference = load_pretrained(ple_checkpoint)
    batch = Batch.from_ids(PROMPT)
    with torch.no_grad():
        expected = reference(batch)
        model.to(torch.float64)
        table = model.get_parameter(TABLE)
        assert table.dtype == torch.float32 and mapped_from(table, ple_checkpoint / "model.safetensors")
        assert {p.dtype for name, p in model.named_parameters() if name != TABLE} == {torch.float64}
        got = model(batch)  # the gathered float32 rows are cast to the model's float64
        assert got.dtype == torch.float64
        torch.testing.assert_close(got.float(), expected, rtol=1e-4, atol=1e-4)
        model.to("meta")
    assert model.get_parameter(TABLE).device.type == "cpu"
    assert {p.device.type for name, p in model.named_parameters() if name != TABLE} == {"meta"}


def test_state_dict_parameters_and_saving_see_the_table(ple_checkpoint, tmp_path):
    on_device = load_pretrained(ple_checkpoint)
    on_host = load_pretrained(ple_checkpoint, ple_on_host=True)
    assert list(on_host.state_dict()) == list(on_device.state_dict())
    assert sum(p.numel() for p in on_host.parameters()) == sum(p.numel() for p in on_device.parameters())
    save_pretrained(on_host, tmp_path)
    again, original = read_safetensors(tmp_path), read_safetensors(ple_checkpoint)
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], original[k]) for k in original)


def test_text_decoder_loads_with_the_table_on_the_host(tmp_path, gathers):
    torch.manual_seed(0)
    save_text_decoder(TextDecoder(PRESETS["tiny-e2b"].text), tmp_path)
    on_device, on_host = load_text_decoder(tmp_path), load_text_decoder(tmp_path, ple_on_host=True)
    assert on_host.ple_on_host and on_host.embed_tokens_per_layer.weight.device.type == "cpu"
    with torch.no_grad():
        assert torch.equal(on_host(PROMPT), on_device(PROMPT))
    assert gathers == [tuple(PROMPT.shape)]


def test_a_model_without_per_layer_embeddings_ignores_the_option(tmp_path):
    save_pretrained(text_model("tiny-31b"), tmp_path)
    model = load_pretrained(tmp_path, ple_on_host=True)
    assert not model.language_model.ple_on_host
    assert not any(isinstance(m, HostEmbedding) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(Batch.from_ids(PROMPT)), load_pretrained(tmp_path)(Batch.from_ids(PROMPT)))


def test_a_built_host_table_is_on_the_cpu_and_initialised_alike():
    config = PRESETS["tiny-e2b"].text
    torch.manual_seed(0)
    plain = TextDecoder(config)
    torch.manual_seed(0)
    host = TextDecoder(config, ple_on_host=True)
    assert host.ple_on_host and host.embed_tokens_per_layer.weight.device.type == "cpu"
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), host.state_dict().values(), strict=True))
    with torch.device("meta"):
        assert TextDecoder(config, ple_on_host=True).embed_tokens_per_layer.weight.device.type == "meta"


def test_host_lookup_contract():
    table = HostEmbedding(10, 4)
    ids = torch.tensor([[3, 3, 9], [0, 1, 2]])
    before = ids.clone()
    rows = table(ids)  # (2, 3, 4)
    assert rows.shape == (2, 3, 4) and rows.device == ids.device and rows.dtype == table.weight.dtype
    assert torch.equal(rows, table.weight[ids]) and torch.equal(ids, before)
    assert table(ids[:0]).shape == (0, 3, 4)
