"""ExampleDataset: input order, splitting among ranks and workers without duplicates, shuffling, batches, errors."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from data_specs.batch import Batch
from data_specs.example import SchemaError
from pipelines import dataset as dataset_module
from pipelines.dataset import ExampleDataset, consumer_units
from pipelines.preprocess_job import PreprocessSettings, run_preprocess
from pipelines.readback import IncompleteJobError, open_output
from preprocess.collate import IGNORE_INDEX, TrainingBatch, uncollate
from preprocess.prompt import Example
from preprocess.tokenizer import Tokenizer
from tests.preprocess.helpers import assert_same

BROKEN = {7: {"id": "b07", "messages": 5}, 24: "{not json"}  # rows 10-14 too: the whole of shard 2
BROKEN |= {i: {"id": f"b{i}", "messages": []} for i in range(10, 15)}


@pytest.fixture(scope="module")
def text_output(tokenizer_dir, tmp_path_factory):
    """A text-only output of 30 input rows in 6 shards of 5, written in 17 row groups of 1 or 2 rows: shard 1 has
    one error, shard 2 only errors (no examples file), shard 4 ends with a line that is not JSON. 23 examples."""
    from pipelines import jobdir

    directory = tmp_path_factory.mktemp("text-output")
    lines = []
    for i in range(30):
        row = BROKEN.get(i, {"id": f"t{i:02d}", "messages": [{"role": "user", "content": "word " * (1 + i % 7)}]})
        lines.append(row if isinstance(row, str) else json.dumps(row))
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    settings = PreprocessSettings(tokenizer=str(tokenizer_dir), rows_per_shard=5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jobdir, "ROW_GROUP_BYTES", 150)  # a text row is about 5 bytes a token
        run_preprocess(directory / "manifest.jsonl", directory / "out", settings, workers=1, progress=False)
    return directory / "out"


@pytest.fixture(scope="module")
def pad_id(tokenizer_dir):
    return Tokenizer.from_pretrained(tokenizer_dir).special.pad


@pytest.fixture(autouse=True)
def no_distributed_env(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def read(dataset, *, worker=None, monkeypatch=None) -> list[str]:
    """The ids ``dataset`` yields (it must have ``with_ids``), as DataLoader worker ``worker`` = (id, count)."""
    if worker is not None:
        info = SimpleNamespace(id=worker[0], num_workers=worker[1])
        monkeypatch.setattr(dataset_module, "get_worker_info", lambda: info)
    return [example_id for example_id, _ in dataset]


def test_the_layout_is_what_the_tests_need(text_output):
    output = open_output(text_output)
    assert output.num_examples == 23 and output.num_errors == 7
    files = output.example_files
    assert len(files) == 5  # shard 2 has none
    groups = [pq.read_metadata(f).num_row_groups for f in files]
    assert max(groups) > 1 and len(ExampleDataset(text_output).units) == sum(groups)


@pytest.mark.parametrize("name", ["text_output", "small_output"])
def test_plain_iteration_is_the_output_in_input_order(name, request):
    out = request.getfixturevalue(name)
    out = out[1] if name == "small_output" else out
    output = open_output(out)
    pairs = list(ExampleDataset(out, with_ids=True))
    assert [example_id for example_id, _ in pairs] == output.ids()
    for position, (_, example) in enumerate(pairs):
        assert isinstance(example, Example)
        assert_same(example, output.example(position))
    plain = list(ExampleDataset(out))
    assert len(plain) == ExampleDataset(out).num_examples == ExampleDataset(out).num_rank_examples
    assert all(np.array_equal(a.input_ids, b.input_ids) for a, (_, b) in zip(plain, pairs, strict=True))


@pytest.mark.parametrize("num_units", [0, 1, 5, 12])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [1, 2, 4])
def test_consumer_units_partition_the_units(num_units, world_size, num_workers):
    seen = []
    for rank in range(world_size):
        of_rank = []
        for worker in range(num_workers):
            share = consumer_units(num_units, rank=rank, world_size=world_size, worker=worker, num_workers=num_workers)
            of_rank += share
        assert sorted(of_rank) == list(range(rank, num_units, world_size))  # a rank's share ignores its workers
        seen += of_rank
    assert sorted(seen) == list(range(num_units))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("world_size", "num_workers"), [(2, 2), (3, 2), (1, 3), (5, 4)])
def test_ranks_and_workers_read_every_example_once(text_output, monkeypatch, shuffle, world_size, num_workers):
    everything = open_output(text_output).ids()
    seen, empty = [], 0
    for rank in range(world_size):
        dataset = ExampleDataset(text_output, rank=rank, world_size=world_size, shuffle=shuffle, with_ids=True)
        dataset.set_epoch(2)
        of_rank = []
        for worker in range(num_workers):
            ids = read(dataset, worker=(worker, num_workers), monkeypatch=monkeypatch)
            empty += not ids
            of_rank += ids
        assert len(of_rank) == dataset.num_rank_examples
        seen += of_rank
    assert len(seen) == len(set(seen)) and sorted(seen) == sorted(everything)
    assert (empty > 0) == (world_size * num_workers > len(dataset.units))  # 20 consumers for 17 units: 3 read nothing


def test_a_dataloader_with_two_workers_on_each_of_two_ranks(text_output, pad_id):
    output = open_output(text_output)
    expected = {example_id: output.example(example_id).input_ids for example_id in output.ids()}
    seen = []
    for rank in range(2):
        dataset = ExampleDataset(text_output, rank=rank, world_size=2, with_ids=True)
        loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=ExampleDataset.collator(pad_id))
        of_rank = []
        for ids, batch in loader:
            assert isinstance(batch, Batch) and len(batch) == len(ids)
            for row, example_id in enumerate(ids):
                tokens = batch.input_ids[row][batch.attention_mask[row]]
                assert tokens.tolist() == expected[example_id].tolist()
            of_rank += ids
        assert len(of_rank) == dataset.num_rank_examples
        seen += of_rank
    assert len(seen) == len(set(seen)) and sorted(seen) == sorted(expected)


def test_shuffle_is_a_permutation_fixed_by_seed_and_epoch(text_output):
    output = open_output(text_output)
    ids = output.ids()

    def epoch(seed, number):
        dataset = ExampleDataset(text_output, shuffle=True, seed=seed, with_ids=True)
        dataset.set_epoch(number)
        pairs = list(dataset)
        for example_id, example in pairs:  # each id keeps its own example
            assert np.array_equal(example.input_ids, output.example(example_id).input_ids)
        return [example_id for example_id, _ in pairs], dataset

    first, dataset = epoch(3, 0)
    assert sorted(first) == sorted(ids) and first != ids
    assert epoch(3, 0)[0] == first
    assert epoch(3, 1)[0] != first and epoch(4, 0)[0] != first
    # Units come in the epoch's order, each unit's rows together and shuffled within it.
    start, reordered = 0, False
    for index in dataset.unit_order():
        unit = dataset.units[index]
        in_file = pq.read_table(unit.file, columns=["id"]).column("id").to_pylist()
        in_file = in_file[sum(u.rows for u in dataset.units[:index] if u.file == unit.file) :][: unit.rows]
        block = first[start : start + unit.rows]
        assert sorted(block) == sorted(in_file)
        reordered |= block != in_file
        start += unit.rows
    assert start == len(first) and reordered
    assert sorted(dataset.unit_order()) == list(range(len(dataset.units))) != dataset.unit_order()


@pytest.mark.parametrize("with_ids", [False, True])
def test_the_collator_gives_batches_of_the_examples(small_output, pad_id, with_ids):
    out = small_output[1]
    output = open_output(out)
    dataset = ExampleDataset(out, with_ids=with_ids)
    loader = DataLoader(dataset, batch_size=2, collate_fn=ExampleDataset.collator(pad_id, padding_side="right"))
    examples, ids = [], []
    for item in loader:
        batch = item[1] if with_ids else item
        assert isinstance(batch, Batch) and batch.images.values.dtype == torch.uint8
        examples += uncollate(batch)
        ids += item[0] if with_ids else []
    assert len(examples) == output.num_examples == 5
    for position, example in enumerate(examples):
        assert_same(example, output.example(position))
    assert ids == (output.ids() if with_ids else [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_a_pinning_dataloader_pins_the_batches(small_output, pad_id):
    loader = DataLoader(
        ExampleDataset(small_output[1], with_ids=True),
        batch_size=2,
        collate_fn=ExampleDataset.collator(pad_id),
        pin_memory=True,  # the DataLoader calls Batch.pin_memory()
    )
    for ids, batch in loader:
        assert isinstance(batch, Batch) and batch.input_ids.is_pinned() and batch.images.values.is_pinned()
        assert len(ids) == len(batch)


def test_an_unfinished_job_is_refused_unless_allowed(text_output, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(text_output, copy)
    state = json.loads((copy / "job.json").read_text())
    del state["complete"]
    del state["shards"]["3"]  # killed after its file was renamed into place but before job.json recorded it
    (copy / "job.json").write_text(json.dumps(state))
    with pytest.raises(IncompleteJobError, match=rf"{copy}.*not finished.*allow_incomplete=True"):
        ExampleDataset(copy)
    dataset = ExampleDataset(copy, allow_incomplete=True, with_ids=True)
    in_shard_3 = pq.read_table(copy / "examples" / "shard-00003.parquet").column("id").to_pylist()
    expected = [i for i in open_output(text_output).ids() if i not in in_shard_3]
    assert read(dataset) == expected and dataset.num_examples == len(expected) == 18


def test_a_file_that_disagrees_with_job_json_is_refused(text_output, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(text_output, copy)
    state = json.loads((copy / "job.json").read_text())
    state["shards"]["1"]["examples"] += 1
    state["shards"]["1"]["errors"] -= 1  # the counts still add up: the file is what disagrees
    (copy / "job.json").write_text(json.dumps(state))
    with pytest.raises(SchemaError, match=r"examples/shard-00001\.parquet holds 4 rows, but job.json records 5"):
        ExampleDataset(copy)


def test_rank_and_world_size_come_from_the_environment(text_output, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    dataset = ExampleDataset(text_output, with_ids=True)
    assert (dataset.rank, dataset.world_size) == (1, 3)
    assert "rank 1 of 3" in repr(dataset)
    assert (ExampleDataset(text_output, rank=0).rank, ExampleDataset(text_output, world_size=4).world_size) == (0, 4)
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one' is not an integer"):
        ExampleDataset(text_output)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 2, "world_size": 2}, r"rank must be an integer in 0 … 1 \(world_size 2\), got 2"),
        ({"rank": 0, "world_size": 0}, "world_size must be a positive integer, got 0"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
    ],
)
def test_bad_arguments_are_refused(text_output, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExampleDataset(text_output, **kwargs)


def test_no_len_and_bad_epochs(text_output, tmp_path):
    dataset = ExampleDataset(text_output)
    with pytest.raises(TypeError):
        len(dataset)
    with pytest.raises(ValueError, match="epoch must be a non-negative integer, got -1"):
        dataset.set_epoch(-1)
    with pytest.raises(FileNotFoundError, match="no job.json"):
        ExampleDataset(tmp_path)


CHATS = [  # conversations with model turns, for training: (user, model) pairs, the last with a longer history
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello world"}],
    [{"role": "user", "content": "question " * 6}, {"role": "assistant", "content": "answer"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "time?"}],  # no model turn
    [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "please"},
    ],
]
MODEL_TURNS = [["hello world<turn|>"], ["answer<turn|>"], [], ["first answer<turn|>", "please<turn|>"]]


@pytest.fixture(scope="module")
def chat_output(tokenizer_dir, tmp_path_factory):
    """An output of CHATS (in shards of 2 rows): examples whose assistant masks are not all zero."""
    directory = tmp_path_factory.mktemp("chat-output")
    lines = [json.dumps({"id": f"c{i}", "messages": chat}) for i, chat in enumerate(CHATS)]
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    settings = PreprocessSettings(tokenizer=str(tokenizer_dir), rows_per_shard=2)
    run_preprocess(directory / "manifest.jsonl", directory / "out", settings, workers=1, progress=False)
    return directory / "out"


def model_runs(tokenizer, example) -> list[str]:
    """The decoded runs of the tokens the example's assistant mask marks."""
    ids, mask = example.input_ids.tolist(), example.assistant_mask.tolist()
    starts = [i for i in range(len(ids)) if mask[i] and (i == 0 or not mask[i - 1])]
    ends = [i + 1 for i in range(len(ids)) if mask[i] and (i + 1 == len(ids) or not mask[i + 1])]
    return [tokenizer.decode(ids[a:b]) for a, b in zip(starts, ends, strict=True)]


def test_the_examples_carry_their_assistant_masks(chat_output, tokenizer_dir):
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    examples = list(ExampleDataset(chat_output))
    assert [model_runs(tokenizer, e) for e in examples] == MODEL_TURNS
    assert all(e.assistant_mask.dtype == np.int8 for e in examples)


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_training_collator_gives_unshifted_labels(chat_output, pad_id, side):
    examples = dict(ExampleDataset(chat_output, with_ids=True))
    loader = DataLoader(
        ExampleDataset(chat_output, with_ids=True),
        batch_size=3,
        collate_fn=ExampleDataset.collator(pad_id, padding_side=side, labels=True),
    )
    seen = []
    for ids, item in loader:
        assert isinstance(item, TrainingBatch) and isinstance(item.batch, Batch) and len(item) == len(ids)
        batch, labels, masks = item.batch, item.labels, item.assistant_masks
        assert labels.dtype == torch.int64 and masks.dtype == torch.bool and labels.shape == batch.input_ids.shape
        assert (labels[~batch.attention_mask] == IGNORE_INDEX).all()  # padding
        assert torch.equal(labels[masks], batch.input_ids[masks])  # the model's tokens, at their own positions
        assert (labels[~masks] == IGNORE_INDEX).all()
        for row, example_id in enumerate(ids):
            own = batch.attention_mask[row]
            assert masks[row, own].numpy().astype(np.int8).tolist() == examples[example_id].assistant_mask.tolist()
        seen += ids
    assert sorted(seen) == sorted(examples) and sum(e.assistant_mask.any() for e in examples.values()) == 3
    moved = item.to("cpu")
    assert isinstance(moved, TrainingBatch) and torch.equal(moved.labels, item.labels)


def test_the_plain_collator_is_unchanged_by_labels(chat_output, pad_id):
    plain = list(ExampleDataset(chat_output))
    batch = ExampleDataset.collator(pad_id)(plain)
    training = ExampleDataset.collator(pad_id, labels=True)(plain)
    assert isinstance(batch, Batch) and torch.equal(training.batch.input_ids, batch.input_ids)
    assert torch.equal(training.batch.attention_mask, batch.attention_mask)
