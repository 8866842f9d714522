"""A torch ``IterableDataset`` over a ``gemma4 preprocess`` output, for training or evaluating with your own loop.

``ExampleDataset(dir)`` yields the output's examples as ``preprocess.prompt.Example`` objects (``(id, Example)``
pairs with ``with_ids=True``), each with its ``assistant_mask``; ``ExampleDataset.collator(pad_id)`` is a
DataLoader ``collate_fn`` that packs them into ``data_specs.batch.Batch``es (``(ids, Batch)`` for pairs). The
failed rows are not examples: they are in ``pipelines.readback.open_output(dir).errors()``.

Training. ``ExampleDataset.collator(pad_id, labels=True)`` gives ``preprocess.collate.TrainingBatch``es instead:
the same ``Batch`` with ``labels`` (B, T) int64 — ``input_ids`` on the tokens the model writes, -100 elsewhere,
padding included — and ``assistant_masks`` (B, T) bool. Labels are not shifted (transformers' causal-LM losses
shift them). Preprocess a finished conversation for it (``add_generation_prompt=False``): a prompt ending with
the generation prompt has nothing of the model's in its last turn.

Units. The examples are read in units of one row group of one examples file: the files of the shards
``job.json`` records, in shard order, and each file's row groups in order (a row group holds at most about
``ROW_GROUP_BYTES`` of output, see ``pipelines.preprocess_job``). A consumer reads one unit at a time, one file
open, and turns one row at a time into an ``Example``: it never holds more than one row group of a shard.

Splitting. Each DataLoader worker of each rank is one consumer: C = ``world_size × num_workers`` of them, and
consumer ``c = worker_id × world_size + rank`` reads units ``c, c + C, c + 2C …`` of the epoch's unit order
(:func:`consumer_units`). So a rank reads every ``world_size``-th unit from its ``rank``-th, whatever its number
of workers (``num_rank_examples`` counts them up front), and the union over all consumers is every example
exactly once. With more consumers than units some consumers read nothing; since units differ in size, ranks may
read different numbers of examples (a DDP loop that needs equal step counts stops at the smallest
``num_rank_examples``, or uses ``torch.distributed.algorithms.Join``). With one consumer and no shuffle the
examples come in input order; a DataLoader with several workers interleaves its workers' batches.

Shuffling is by units, then rows: ``shuffle=True`` permutes the unit order with ``(seed, epoch)`` (the same
permutation on every rank and worker, so the split stays exact) and each unit's rows with ``(seed, epoch,
unit)``, so what a unit yields does not depend on who reads it. Rows of one row group stay together: for a finer
mix, shuffle again in a buffer of your own. Call ``set_epoch(epoch)`` before each epoch, as with
``DistributedSampler``; a DataLoader with ``persistent_workers=True`` keeps the dataset its workers got at their
start, so it does not see ``set_epoch``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
from torch.utils.data import IterableDataset, get_worker_info

from data_specs.batch import Batch
from data_specs.checks import check_count
from data_specs.example import SchemaError, row_to_example
from preprocess.collate import TrainingBatch, collate, collate_training
from preprocess.prompt import Example

from .jobdir import JOB_FILE
from .readback import IncompleteJobError, open_output

__all__ = ["ExampleDataset", "Unit", "collate_items", "consumer_units"]


class Unit(NamedTuple):
    """What one consumer reads at a time: one row group of one examples file."""

    file: str
    row_group: int
    rows: int


def consumer_units(num_units: int, *, rank: int, world_size: int, worker: int, num_workers: int) -> range:
    """The positions in an epoch's unit order that worker ``worker`` of ``num_workers`` on rank ``rank`` of
    ``world_size`` reads: every C-th from c (C = ``world_size × num_workers``, c = ``worker × world_size +
    rank``). Over all (rank, worker) the ranges are disjoint and cover ``range(num_units)``."""
    return range(worker * world_size + rank, num_units, world_size * num_workers)


def collate_items(
    items: Sequence[Example | tuple[str, Example]], *, pad_id: int, padding_side: str = "left", labels: bool = False
) -> Batch | TrainingBatch | tuple[list[str], Batch | TrainingBatch]:
    """``preprocess.collate.collate`` of a DataLoader's list of items: a :class:`Batch` of Examples, or
    ``(ids, Batch)`` of ``(id, Example)`` pairs; with ``labels``, ``collate_training``'s :class:`TrainingBatch`
    in place of the Batch."""
    pack = collate_training if labels else collate
    if items and isinstance(items[0], tuple):
        ids = [example_id for example_id, _ in items]
        return ids, pack([example for _, example in items], pad_id=pad_id, padding_side=padding_side)
    return pack(items, pad_id=pad_id, padding_side=padding_side)


class ExampleDataset(IterableDataset):
    """The examples of the ``gemma4 preprocess`` output at ``output_dir``, split among ranks and DataLoader
    workers without duplicates or losses (see the module docstring).

    ``rank`` and ``world_size`` default to ``torch.distributed``'s when it is initialised, else to the ``RANK``
    and ``WORLD_SIZE`` environment variables (as ``torchrun`` sets them), else to 0 and 1. An unfinished job
    raises :class:`pipelines.readback.IncompleteJobError` unless ``allow_incomplete``, which reads the shards
    finished when the dataset is made. ``len()`` is not defined (a DataLoader's share of an iterable dataset is
    not known to it): ``num_examples`` counts the examples of all consumers, ``num_rank_examples`` this rank's.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        with_ids: bool = False,
        allow_incomplete: bool = False,
    ) -> None:
        super().__init__()
        try:
            output = open_output(output_dir, allow_incomplete=allow_incomplete)
        except IncompleteJobError as exc:
            hint = "or pass allow_incomplete=True to read the shards finished so far"
            raise IncompleteJobError(f"{exc}, {hint}") from None
        self.path: Path = output.path
        self.num_examples: int = output.num_examples
        self.units: tuple[Unit, ...] = tuple(_units(output))
        self.rank, self.world_size = _rank_and_world_size(rank, world_size)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.shuffle, self.seed, self.with_ids = bool(shuffle), seed, bool(with_ids)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch`` (with ``shuffle``): the same ``(seed, epoch)`` gives the same order."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def unit_order(self) -> list[int]:
        """This epoch's order of ``units`` (indices): shard order, or its ``(seed, epoch)`` permutation."""
        if not self.shuffle:
            return list(range(len(self.units)))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units)).tolist()

    @property
    def num_rank_examples(self) -> int:
        """The examples this rank reads this epoch, over all its DataLoader workers."""
        order = self.unit_order()
        share = consumer_units(len(order), rank=self.rank, world_size=self.world_size, worker=0, num_workers=1)
        return sum(self.units[order[position]].rows for position in share)

    def __iter__(self) -> Iterator[Example | tuple[str, Example]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        order = self.unit_order()
        share = consumer_units(
            len(order), rank=self.rank, world_size=self.world_size, worker=worker, num_workers=num_workers
        )
        for position in share:
            for example_id, example in self._read(order[position]):
                yield (example_id, example) if self.with_ids else example

    def _read(self, index: int) -> Iterator[tuple[str, Example]]:
        """The ``(id, Example)`` rows of unit ``index``, in file order or shuffled; one row group in memory."""
        unit = self.units[index]
        with pq.ParquetFile(unit.file) as parquet:
            table = parquet.read_row_group(unit.row_group)
        rows = range(table.num_rows)
        if self.shuffle:
            rows = np.random.default_rng([self.seed, self.epoch, index]).permutation(table.num_rows).tolist()
        for row in rows:
            yield row_to_example(table.slice(row, 1).to_pylist()[0])  # one row's Python objects at a time

    @staticmethod
    def collator(pad_id: int, *, padding_side: str = "left", labels: bool = False) -> Callable:
        """A DataLoader ``collate_fn`` giving packed :class:`Batch`es (``(ids, Batch)`` with ``with_ids``), or with
        ``labels`` :class:`TrainingBatch`es (the Batch, unshifted labels and assistant masks; see the module
        docstring): ``functools.partial(collate_items, …)``, which worker processes can unpickle."""
        return functools.partial(collate_items, pad_id=pad_id, padding_side=padding_side, labels=labels)

    def __repr__(self) -> str:
        return (
            f"ExampleDataset({os.fspath(self.path)!r}: {self.num_examples} examples in {len(self.units)} unit(s), "
            f"rank {self.rank} of {self.world_size}, shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch})"
        )


def _units(output) -> Iterator[Unit]:
    """The row groups of the output's example files, in shard order; each file must hold the rows ``job.json``
    records for its shard."""
    for file in output.example_files:
        shard = int(Path(file).stem.rsplit("-", 1)[1])
        metadata = pq.read_metadata(file)
        recorded = output.state["shards"][str(shard)]["examples"]
        if metadata.num_rows != recorded:
            raise SchemaError(f"{file} holds {metadata.num_rows} rows, but {JOB_FILE} records {recorded} examples")
        for group in range(metadata.num_row_groups):
            yield Unit(file, group, metadata.row_group(group).num_rows)


def _rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given values, else ``torch.distributed``'s, else ``RANK``/``WORLD_SIZE``, else 0 and 1; checked."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            default = dist.get_rank(), dist.get_world_size()
        else:
            default = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        rank = default[0] if rank is None else rank
        world_size = default[1] if world_size is None else world_size
    check_count(world_size, "world_size")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in 0 … {world_size - 1} (world_size {world_size}), got {rank!r}")
    return rank, world_size


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
