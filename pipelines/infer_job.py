"""``gemma4 infer``: rows of chat messages (or a ``gemma4 preprocess`` output) → generated replies + an errors table.

Layout of OUTPUT_DIR (``pipelines.jobdir``, output version 2), as ``gemma4 preprocess`` lays its own out::

    job.json                       settings, checkpoint fingerprint, input fingerprint, completed shards, counts
    .lock                          held (flock) by the job writing here
    results/shard-00000.parquet    data_specs.results rows of input rows 0 … S−1 that were answered, in input order
    errors/shard-00000.parquet     data_specs.errors_table rows of the same range that were not
    results.jsonl                  with --output-format jsonl (result rows) or openai (OpenAI batch output lines,
                                   errors included): every line in input order, written when the job ends from
                                   the shards' results/shard-K.jsonl (the resumable record until then)

INPUT is a manifest (rows ``{id, messages[, tools][, max_new_tokens, temperature, top_k, top_p, seed, stop]}``,
read as ``gemma4 preprocess`` reads them: ``pipelines.rows.read_items``), an OpenAI batch file (``{"custom_id",
"method", "url", "body"}`` lines; a repeated ``custom_id`` refuses the whole file), or a ``gemma4 preprocess``
output directory (its examples are used as they are, with the generation options their rows gave, and its error
rows are carried into this job's errors table, so the counts add up to the original manifest). A row's ``stop``
strings (else the job's) end its reply before them (``runtime.stop``); its answer names ``served_model_name``,
else the model its request names, else the checkpoint's.

How rows flow. The driver reads the input one shard at a time (``rows_per_shard`` rows). Shards are prepared
(chat template, media decoding, patches, features: ``preprocess_job``'s per-row function, with its time limit and
error stages) in ``workers`` processes (``pipelines.pool.ShardPool``: a worker that dies costs only the rows that
kill it), at most ``2 × workers`` shards ahead, each prepared row becoming a one-row
:class:`data_specs.batch.Batch`, pinned when there is an accelerator. The model runs in the driver: the
continuous engine (``runtime.engine``) pulls a prepared request whenever a slot frees, prefills it (chunked) while
the other slots decode, and hands back each completion as it finishes. When the engine has nothing to run and no
request is ready, the driver waits for the workers; that wait is what the summary reports as the model's idle
time (a starved accelerator is visible there). A shard's files are written (under a temporary name, then
renamed) once every one of its rows is answered or failed, and recorded in ``job.json`` then: killed at any
point, the same command finishes the job, redoing only unrecorded shards.

Determinism. On the CPU in float32, greedy decoding, or sampling with a seed, gives the same tokens whatever
``batch_size`` and ``workers`` are: the engine's rows do not influence each other, and a row's noise depends on
its own seed and step only. On CUDA only the same device, dtype and company give the same tokens (kernels chosen
by problem size change the logits' last bits between batch shapes): compare GPU runs by agreement share.
With ``seed`` set for the job, each row draws with a seed made from the job's seed and the row's id;
a row's own ``seed`` overrides it. Sampling without any seed is not reproducible.

Errors (stage in the errors table): what preprocessing reports (manifest, messages, image, audio, video, media,
timeout, prompt, worker), ``context`` for a prompt that with ``max_new_tokens`` does not fit the job's context,
and the stages carried from a preprocessed input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq

from data_specs.checks import check_count
from data_specs.errors_table import error_schema
from data_specs.example import row_to_example
from data_specs.manifest import (
    MANIFEST_VERSION,
    RowOptions,
    check_stop,
)
from data_specs.openai_batch import error_line, response_line
from data_specs.results import MODALITY_COLUMNS, RESULTS_VERSION, result_schema

from .inputs import InferInput
from .jobdir import (
    JobFolder,
    JobMismatchError,
    TableWriter,
    progress_bar,
    read_state,
    shard_path,
    write_text,
    written_paths,
)
from .pool import ShardPool, Work
from .preprocess_job import (
    PreprocessSettings,
    build_rows,
    dead_row,
    error_row,
)
from .rows import Built, Failed, Item, Prepared

__all__ = [
    "InferJob",
    "InferPlan",
    "InferSettings",
    "InferSummary",
    "OUTPUT_FORMATS",
    "ShardState",
    "checkpoint_fingerprint",
    "finished_row",
    "make_request",
    "plan_infer",
    "read_results",
    "run_infer",
    "summarize",
]

OUTPUT_FORMATS = ("parquet", "jsonl", "openai")
TABLES = ("results", "errors")  # the output's folders (pipelines.jobdir)
PREPARE_ROWS = 8  # rows a worker prepares per task: prepared rows reach the model in pieces, not whole shards
RESULTS_FILE = "results.jsonl"  # --output-format jsonl or openai: every line in input order, written at the end
SETTINGS_KEY = "gemma4.infer_settings"


@dataclass(frozen=True, kw_only=True)
class InferSettings:
    """A job's settings. ``preprocess`` holds the front end's (budgets, limits, thinking, tools …; its tokenizer
    is the checkpoint's), and its ``rows_per_shard`` sizes this job's shards (``gemma4 infer`` uses 16: the model
    starts once the first shard is prepared, and a shard is the unit of resumption). Generation defaults apply to
    rows that do not set their own.

    Sampling as transformers and vLLM apply it: ``temperature``, ``top_k``, ``top_p`` left None take the
    checkpoint's ``generation_config.json`` (the published checkpoints sample: temperature 1.0, top_k 64, top_p
    0.95), or greedy where it has none or says ``do_sample: false``; ``top_k`` 0 and ``top_p`` 1 turn a cut off;
    ``greedy`` forces greedy decoding. ``seed`` (default 0) makes a sampled job reproducible and resumable: each
    row draws with a seed made from it and the row's id. :meth:`resolved` fills the defaults in."""

    checkpoint: str = field(
        metadata={
            "help": "checkpoint directory as published (config.json, safetensors, tokenizer.json …), or a Hugging "
            "Face repo id found in the local hub cache (e.g. google/gemma-4-E2B-it)"
        }
    )
    preprocess: PreprocessSettings
    max_new_tokens: int = field(
        default=256,
        metadata={
            "flag": ("--max-new-tokens", "--max-tokens"),
            "min": 1,
            "help": "new tokens per row, as OpenAI's and vLLM's max_tokens",
        },
    )
    temperature: float | None = field(
        default=None, metadata={"help": "sampling temperature; 0 is greedy (default: the checkpoint's)"}
    )
    top_k: int | None = field(
        default=None, metadata={"min": 0, "help": "sample among the k likeliest tokens; 0: no cut"}
    )
    top_p: float | None = field(default=None, metadata={"help": "sample in the smallest set holding this probability"})
    greedy: bool = field(default=False, metadata={"help": "greedy decoding, whatever the checkpoint's sampling"})
    seed: int = field(default=0, metadata={"min": 0, "help": "sampling seed (each row: seed + its id)"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "rows decoded together (engine slots)"})
    context: int = field(default=4096, metadata={"min": 1, "help": "tokens per row (slot), prompt + new"})
    prefill_chunk: int | None = field(default=1024, metadata={"min": 1, "help": "prompt tokens per prefill step"})
    output_format: str = field(default="parquet", metadata={"choices": OUTPUT_FORMATS, "help": "results files"})
    device: str = field(  # model.device.resolve_device
        default="auto", metadata={"help": "auto (CUDA if there is a GPU, else cpu), cpu, cuda, cuda:1 …"}
    )
    dtype: str | None = field(  # None: model.checkpoint.default_dtype
        default=None, metadata={"help": "bfloat16, float32 … (default: the checkpoint's stored dtype)"}
    )
    cuda_graphs: bool = field(  # runtime.graphs; not part of the job's identity
        default=True, metadata={"help": "decode eagerly on CUDA (default: decode steps as CUDA graphs)"}
    )
    stop: tuple[str, ...] = field(
        default=(),
        metadata={
            "metavar": "STRING",
            "help": "a stop string: a reply ends before the first one it reaches (repeatable; the stop strings of a "
            "row replace these)",
        },
    )
    served_model_name: str | None = field(
        default=None,
        metadata={
            "metavar": "NAME",
            "help": "the \"model\" of OpenAI responses (default: the request's, else the checkpoint's)",
        },
    )

    def __post_init__(self) -> None:
        from runtime.engine import check_chunk
        from runtime.sampler import Sampling

        Sampling(  # checks them (0 and 1 are "no cut" here)
            temperature=self.temperature or 0.0, top_k=self.top_k or None, top_p=self.top_p, seed=self.seed
        )
        check_chunk(self.prefill_chunk)
        for name in ("max_new_tokens", "batch_size", "context"):
            check_count(getattr(self, name), name)
        if self.max_new_tokens >= self.context:  # every row would fail: refused before the model loads
            raise ValueError(
                f"max_new_tokens {self.max_new_tokens} leaves no room for a prompt in a context of {self.context} "
                "tokens (prompt and new tokens together): raise --context or lower --max-new-tokens"
            )
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)):
            raise ValueError(f"top_k must be an integer ≥ 0 (0: no cut), got {self.top_k!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        object.__setattr__(self, "stop", check_stop(list(self.stop) if self.stop else None, "settings"))
        if self.served_model_name is not None and (
            not isinstance(self.served_model_name, str) or not self.served_model_name.strip()
        ):
            raise ValueError(f"served_model_name must be a non-empty name, got {self.served_model_name!r}")

    def resolved(self, defaults) -> tuple[InferSettings, dict]:
        """These settings with the checkpoint's sampling defaults (a ``GenerationDefaults``) filled in, and where
        each value came from: ``{"temperature": {"value": 1.0, "from": "generation_config.json"}, …}``. In the
        result ``top_k`` 0 and ``top_p`` 1.0 mean no cut, never None."""
        checkpoint = "generation_config.json" if defaults.source else "default (no generation_config.json)"
        if self.greedy:
            values = {
                "temperature": (0.0, "greedy"),
                "top_k": (0, "greedy"),
                "top_p": (1.0, "greedy"),
            }
        else:
            values = {
                "temperature": (self.temperature, "job")
                if self.temperature is not None
                else (defaults.temperature, checkpoint),
                "top_k": (self.top_k, "job") if self.top_k is not None else (defaults.top_k or 0, checkpoint),
                "top_p": (self.top_p, "job") if self.top_p is not None else (defaults.top_p or 1.0, checkpoint),
            }
        values["seed"] = (self.seed, "job")
        resolved = replace(self, **{name: value for name, (value, _) in values.items()})
        return resolved, {name: {"value": value, "from": source} for name, (value, source) in values.items()}

    def comparable(self, fingerprint: str, tokenizer_fingerprint: str, template_hash: str, dtype: str) -> dict:
        """What must match for a job to resume: what changes the tokens. Slots, workers, chunking and the device
        do not (only how fast they come); the dtype does."""
        generation = {k: getattr(self, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")}
        generation["stop"] = list(self.stop)
        generation["served_model_name"] = self.served_model_name
        return {
            "checkpoint_fingerprint": fingerprint,
            "dtype": dtype,
            "generation": generation,
            "context": self.context,
            "output_format": self.output_format,
            "preprocess": self.preprocess.comparable(tokenizer_fingerprint, template_hash),
        }


@dataclass(frozen=True)
class InferPlan:
    """What a job will run, known before it starts (:func:`plan_infer`): the checkpoint's files and what loading
    them holds, its tokenizer, the device, the settings with the checkpoint's sampling defaults filled in, and
    where each sampling value came from."""

    directory: Path
    info: object  # model.checkpoint.CheckpointInfo
    tokenizer: object  # preprocess.tokenizer.Tokenizer
    device: str
    settings: InferSettings
    sampling: dict

    @property
    def cache_bytes(self) -> int:
        return self.info.cache_bytes(self.settings.batch_size, self.settings.context)

    def line(self) -> str:
        """``model: gemma-4-E2B-it, bfloat16 on cuda:0, weights 9.3 GB, cache 1.0 GB (8 slots × 4096 tokens)``."""
        from model.device import human_bytes

        s = self.settings
        dtype = str(self.info.dtype).removeprefix("torch.")
        sampling = (
            "greedy"
            if s.temperature == 0
            else f"temperature {s.temperature:g}, top_k {s.top_k or 'off'}, top_p {s.top_p:g}, seed {s.seed}"
        )
        return (
            f"model: {self.info.name}, {dtype} on {self.device}, weights {human_bytes(self.info.weight_bytes)}, "
            f"cache {human_bytes(self.cache_bytes)} ({s.batch_size} slots × {s.context} tokens); sampling: {sampling}"
        )


def plan_infer(settings: InferSettings) -> InferPlan:
    """Every check a job can make before it starts, each failing with one line that names the problem: the
    checkpoint (a directory or a repo id in the hub cache; its config, weight headers, tokenizer, generation
    config), whether its tokenizer is the checkpoint's, the device (``auto`` or one that is there) and whether the
    weights and the KV cache the job asks for fit the device's free memory."""
    from data_specs.checkpoint_dir import generation_defaults, resolve_checkpoint
    from model.checkpoint import check_tokenizer, inspect_checkpoint
    from model.device import check_memory, resolve_device
    from preprocess.tokenizer import Tokenizer

    device = resolve_device(settings.device)
    directory = resolve_checkpoint(settings.checkpoint)
    info = inspect_checkpoint(directory, dtype=settings.dtype)
    tokenizer = Tokenizer.from_pretrained(directory)
    check_tokenizer(info.config, tokenizer)
    resolved, sampling = settings.resolved(generation_defaults(directory))
    resolved = replace(resolved, preprocess=replace(settings.preprocess, tokenizer=os.fspath(directory)))
    plan = InferPlan(directory, info, tokenizer, str(device), resolved, sampling)
    advice = "lower --batch-size or --context, or choose another --device or --dtype"
    check_memory(info, device, settings.batch_size, settings.context, advice)
    return plan


@dataclass
class InferSummary:
    rows: int
    results: int
    errors: int
    errors_by_stage: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    shards: int
    shards_skipped: int
    seconds: float
    model_seconds: float  # from the model's load to the last completion
    waited_seconds: float  # of those, the engine had nothing to run and waited for prepared rows
    this_run: dict = field(default_factory=dict)  # rows answered, prompt and generated tokens by this run
    written: list[str] = field(default_factory=list)  # the output's paths: its tables (or results.jsonl), job.json

    @property
    def busy(self) -> float:
        """The share of the model's time it had work (1 − waiting for input)."""
        return 1.0 - self.waited_seconds / self.model_seconds if self.model_seconds > 0 else 0.0

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k} {v}" for k, v in sorted(self.errors_by_stage.items())) or "none"
        rate = max(self.model_seconds, 1e-9)
        run = Counter(self.this_run)
        return [
            f"rows {self.rows} = results {self.results} + errors {self.errors} (by stage: {stages})",
            f"tokens: prompt {self.prompt_tokens}, generated {self.completion_tokens}",
            f"shards {self.shards} ({self.shards_skipped} already done), {self.seconds:.1f} s in all",
            f"model: {self.model_seconds:.1f} s, busy {100 * self.busy:.0f}% (waited {self.waited_seconds:.1f} s for "
            f"input); this run: {run['rows'] / rate:.2f} rows/s, prompt {run['prompt'] / rate:.0f} tok/s, "
            f"generated {run['generated'] / rate:.1f} tok/s",
            *(["written: " + ", ".join(self.written)] if self.written else []),
        ]


def checkpoint_fingerprint(directory: str | os.PathLike) -> str:
    """A short hash of a checkpoint: its ``config.json`` and ``generation_config.json``, and for each weight file
    the loader reads its size, its tensors' names, dtypes and shapes (from its header) and its first and last
    64 KiB of data; cheap on a 60 GB checkpoint, and a different training run changes it. Every file is read
    through ``data_specs.checkpoint_dir`` (regular files only, sizes bounded, headers checked): a FIFO, a device
    or a damaged file is ``CheckpointFileError`` naming it, never a hang."""
    from data_specs.checkpoint_dir import open_checkpoint_file, read_checkpoint_file, safetensors_header, weight_files

    digest = hashlib.sha256()
    directory = Path(directory)
    small = [directory / name for name in ("config.json", "generation_config.json") if (directory / name).exists()]
    for path in sorted([*small, *weight_files(directory)], key=lambda p: p.name):
        if path.suffix != ".safetensors":
            digest.update(path.name.encode() + read_checkpoint_file(path))
            continue
        header = safetensors_header(path)
        with open_checkpoint_file(path) as fp:
            size = os.fstat(fp.fileno()).st_size
            digest.update(path.name.encode() + str(size).encode())
            for name in sorted(header):
                digest.update(f"{name}:{header[name]['dtype']}:{header[name]['shape']};".encode())
            digest.update(fp.read(65536))
            fp.seek(max(0, size - 65536))
            digest.update(fp.read(65536))
    return digest.hexdigest()[:16]


# --- preparing rows (in worker processes) -------------------------------------------------------------------


def prepare_rows(items: list[Item], settings: PreprocessSettings, base_dir: str, pad_id: int) -> list:
    """Each item → a :class:`Prepared` one-row batch or a :class:`Failed` error row, in order: manifest rows
    through the front end (``preprocess_job.build_rows``), example rows as they are, carried error rows kept."""
    from preprocess.collate import collate

    out: list = []
    fresh = [item for item in items if not isinstance(item.payload, dict)]
    built = iter(build_rows(fresh, settings, base_dir))
    for item in items:
        if item.carried_error:  # an error row carried from a preprocess job
            out.append(Failed(dict(item.payload, row=item.index)))
            continue
        outcome = Built(item.index, item.payload) if isinstance(item.payload, dict) else next(built)
        if isinstance(outcome, Failed):
            out.append(outcome)
            continue
        try:  # a damaged example (ids, patches, placeholders that do not add up) is that row's error
            _, example = row_to_example(outcome.row)
            out.append(Prepared(item.index, item.id, collate([example], pad_id=pad_id), example.summary))
        except Exception as exc:
            message = f"row {item.index} (id {item.id!r}): its example cannot be read: {exc}"
            out.append(Failed(error_row(item.index, item.id, "prompt", type(exc).__name__, message)))
    return out


def prepare_list(items: list[Item], prepare: tuple) -> list:
    """:func:`prepare_rows` with its arguments in a tuple (a worker's task, ``pipelines.pool``)."""
    return prepare_rows(items, *prepare)


def prepare_shard(shard: int, items: list[Item], prepare: tuple) -> list:
    """A shard's (or a piece's) task: :func:`prepare_list`."""
    return prepare_list(items, prepare)


def _prepared_shard(shard: int, outcomes: list) -> list:
    return outcomes


def make_request(engine, settings: InferSettings, key, row_id: str, batch, options: RowOptions | None, tokenizer):
    """A prepared row as a ``Request`` the ``engine`` can serve (its id ``key``), or the error row saying why it
    cannot be one: media the checkpoint has no tower for, ids beyond the vocabulary, a prompt with no tokens,
    anything else the engine would refuse (stage ``prompt``), prompt and new tokens beyond the context (stage
    ``context``). The row's stop strings (its own, else the job's) are watched on ``tokenizer``'s text of its new
    tokens. Never raises for one row's sake: the other rows go on."""
    index = key[1]
    try:
        request = _request(engine.model, settings, key, row_id, batch, options, tokenizer)
        if not isinstance(request, dict):
            engine.check(request)
        return request
    except Exception as exc:  # one row's problem, whatever it is: an error row, and the job goes on
        message = f"row {index} (id {row_id!r}): {exc}"
        return error_row(index, row_id, "prompt", type(exc).__name__, message)


def _request(model, settings: InferSettings, key, row_id: str, batch, options: RowOptions | None, tokenizer):
    from runtime.engine import Request
    from runtime.stop import StopStrings

    index = key[1]
    options = options or RowOptions()
    towers = {"image": model.config.vision, "video frame": model.config.vision, "audio": model.config.audio}
    for (_, media), label in zip(batch.media, ("image", "video frame", "audio"), strict=True):
        if sum(media.num_soft_tokens) and towers[label] is None:
            tower = "audio" if label == "audio" else "vision"
            message = f"row {index} (id {row_id!r}) holds {label} input, and this checkpoint has no {tower} tower"
            return error_row(index, row_id, "prompt", "MediaCountError", message)
    new = options.max_new_tokens or settings.max_new_tokens
    prompt = batch.input_ids.shape[1]
    if prompt + new > settings.context:
        message = (
            f"row {index} (id {row_id!r}): its prompt has {prompt} tokens, and with max_new_tokens {new} needs "
            f"{prompt + new}, more than the job's context of {settings.context} tokens per row (--context)"
        )
        return error_row(index, row_id, "context", "ContextLengthError", message)
    stop = settings.stop if options.stop is None else options.stop
    return Request(
        prompt=batch.pin_memory(),
        max_new_tokens=new,
        sampling=row_sampling(settings, row_id, options),
        id=key,
        ready_at=time.perf_counter(),  # prepared now: its queue_s counts from here, not from when a slot pulls it
        stop_strings=StopStrings(stop, lambda ids: tokenizer.decode(ids, skip_special=True)) if stop else None,
    )


def finished_row(completion, row_id: str, index: int, summary: dict, tokenizer, model: str) -> tuple[bool, dict]:
    """A completion as ``(True, result row)``, or ``(False, error row)`` when generation failed for that request
    (``finish_reason`` ``error``: non-finite logits, a request the engine refused at admission; stage
    ``generation``)."""
    if completion.finish_reason == "error":
        reason = completion.error or "generation failed"
        message = f"row {index} (id {row_id!r}): {reason}"
        return False, error_row(index, row_id, "generation", "GenerationError", message)
    return True, result_row(completion, row_id, index, summary, tokenizer, model)


def arguments_json(arguments: dict) -> str:
    """A tool call's arguments as JSON text. JSON has no infinity or NaN (``json.dumps`` would write ``Infinity``,
    which no JSON reader takes): such a number is written as its string, ``"inf"``, ``"-inf"`` or ``"nan"``."""

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(arguments), ensure_ascii=False, allow_nan=False)


def model_name(settings: InferSettings, options: RowOptions | None, checkpoint_name: str) -> str:
    """The model a row's answer names: ``--served-model-name``, else the model the request names, else the
    checkpoint's name (as vLLM answers)."""
    return settings.served_model_name or (options.model if options is not None else None) or checkpoint_name


def row_sampling(settings: InferSettings, row_id: str, options: RowOptions):
    """A row's sampling: its own options over the job's; the job's seed made the row's own by its id."""
    from runtime.sampler import Sampling

    seed = options.seed
    if seed is None and settings.seed is not None:
        seed = int.from_bytes(hashlib.sha256(f"{settings.seed}\0{row_id}".encode()).digest()[:7], "little")
    return Sampling(  # the job's settings are resolved (InferSettings.resolved): 0 / 1.0 mean no cut
        temperature=settings.temperature if options.temperature is None else options.temperature,
        top_k=options.top_k or settings.top_k or None,
        top_p=settings.top_p if options.top_p is None else options.top_p,
        seed=seed,
    )


def result_row(completion, row_id: str, index: int, summary: dict, tokenizer, model: str) -> dict:
    """A finished request as a row of ``data_specs.results``: its tokens decoded, cut before the stop string that
    ended it (which is not part of the reply, as in OpenAI and vLLM), and parsed (``parse_reply``)."""
    from preprocess.reply import parse_reply, visible_text
    from runtime.stop import cut_at_stop

    raw = tokenizer.decode(completion.token_ids)
    if completion.stop_string is not None:
        raw = cut_at_stop(raw, [completion.stop_string])
    reply = parse_reply(raw)
    return {
        "id": row_id,
        "row": index,
        "text": visible_text(reply.content),  # no control string (raw_text keeps them; problems say which)
        "thinking": reply.thinking,
        "tool_calls": [{"name": call.name, "arguments": arguments_json(call.arguments)} for call in reply.tool_calls],
        "finish_reason": completion.finish_reason,
        "stop_reason": completion.stop_string,
        "model": model,
        "completion_ids": completion.token_ids,
        "completion_tokens": len(completion.token_ids),
        "prompt_tokens": completion.prompt_tokens,
        **{name: int(summary.get(name, 0)) for name in MODALITY_COLUMNS},
        "problems": list(reply.problems) + ([f"cut: {reply.truncated}"] if reply.truncated else []),
        "raw_text": raw,
        "queue_s": completion.queue_s,
        "prefill_s": completion.prefill_s,
        "ttft_s": completion.queue_s + completion.prefill_s,
        "decode_s": completion.decode_s,
    }


# --- the job -----------------------------------------------------------------------------------------------


@dataclass
class ShardState:
    count: int
    results: dict[int, dict] = field(default_factory=dict)
    errors: dict[int, dict] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.results) + len(self.errors) == self.count


class InferJob:
    def __init__(self, input_path, output_dir, plan: InferPlan, workers: int) -> None:
        self.started = time.perf_counter()
        self.plan, self.settings, self.workers = plan, plan.settings, workers
        settings = plan.settings
        out, checkpoint = os.path.realpath(output_dir), os.path.realpath(plan.directory)
        if out == checkpoint or out.startswith(checkpoint + os.sep):
            raise ValueError(
                f"output folder {os.fspath(output_dir)!r} is inside the checkpoint {os.fspath(plan.directory)!r}: "
                "a job never writes into a checkpoint; choose another folder"
            )
        self.input = InferInput(input_path, settings.preprocess.rows_per_shard, settings.preprocess.head)
        self.tokenizer = plan.tokenizer
        self.dtype = plan.info.dtype
        template_hash = hashlib.sha256((self.tokenizer.chat_template or "").encode()).hexdigest()[:16]
        comparable = settings.comparable(
            checkpoint_fingerprint(plan.directory), self.tokenizer.fingerprint, template_hash, str(self.dtype)
        )
        if self.input.kind == "preprocessed":
            theirs = self.input.state["settings"].get("tokenizer_fingerprint")
            if theirs != self.tokenizer.fingerprint:
                raise JobMismatchError(
                    f"{os.fspath(input_path)!r} was preprocessed with another tokenizer (fingerprint {theirs}) than "
                    f"the checkpoint's ({self.tokenizer.fingerprint})"
                )
            comparable["preprocess"] = self.input.state["settings"]
        expected = {
            "results_version": RESULTS_VERSION,
            "manifest_version": MANIFEST_VERSION,
            "input": self.input.fingerprint,
            "settings": comparable,
            "rows": self.input.rows,
        }
        # How this run runs (not part of the job's identity, but recorded): where each sampling value came from,
        # the device and dtype, the checkpoint as given and where its files were.
        run = {
            "sampling": plan.sampling,
            "device": plan.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "cuda_graphs": settings.cuda_graphs and plan.device.startswith("cuda"),
            "checkpoint": settings.checkpoint,
            "checkpoint_dir": os.fspath(plan.directory),
            "input": os.path.realpath(input_path),  # gemma4 inspect --prompt rebuilds a row's prompt from it
        }
        self.folder = JobFolder(output_dir, TABLES, expected, run)
        self.out_dir, self.state, self.done_before = self.folder.out_dir, self.folder.state, self.folder.done_before
        self.metadata = {SETTINGS_KEY: json.dumps(comparable, sort_keys=True)}

    def close(self) -> None:
        self.folder.close()

    @property
    def prepare_args(self) -> tuple:
        """The arguments of :func:`prepare_rows` after the items: front-end settings, media base, pad id."""
        pad = self.tokenizer.special.pad  # the checkpoint's too (load_pretrained checks the pair)
        return self.settings.preprocess, os.fspath(self.input.base_dir), pad

    def work(self) -> Work:
        """What the worker pool runs: shards prepared, rows one at a time after a worker died twice."""
        prepare = self.prepare_args
        return Work(
            shard=partial(prepare_shard, prepare=prepare),
            rows=partial(prepare_list, prepare=prepare),
            from_rows=_prepared_shard,
            dead_row=dead_row,
        )

    def finish(self) -> None:
        """Mark the job complete. With ``--output-format jsonl|openai``, its lines go first into one file,
        ``results.jsonl``, in input order (written whole, then renamed, then named in ``job.json``), and the shards'
        line files, the job's resumable record until then, are removed."""
        if self.settings.output_format == "parquet":
            self.folder.complete()
            return
        parts = [shard_path(self.out_dir, "results", k, "jsonl") for k in range(self.input.shard_count)]
        if "results_file" not in self.state:  # (a finished job run again has it, and its parts are gone)
            target = self.out_dir / RESULTS_FILE
            temporary = target.with_name(f".{RESULTS_FILE}.tmp-{os.getpid()}")
            with open(temporary, "wb") as out:
                for part in parts:
                    if part.is_file():
                        with open(part, "rb") as fp:
                            shutil.copyfileobj(fp, out)
            os.replace(temporary, target)
        self.folder.complete(results_file=RESULTS_FILE)
        for part in parts:
            part.unlink(missing_ok=True)
        folder = self.out_dir / "results"
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    def paths(self) -> list[str]:
        """What the job wrote: its tables' folders (or ``results.jsonl``) and ``job.json``."""
        if self.settings.output_format == "parquet":
            return written_paths(self.out_dir, TABLES)
        return [os.fspath(self.out_dir / RESULTS_FILE), *written_paths(self.out_dir, ("errors",))]

    def record(self, shard: int, stats: dict) -> None:
        self.folder.record(shard, stats)

    def write(self, shard: int, state: ShardState) -> dict:
        """Write a complete shard's files; its statistics for ``job.json``."""
        results = [state.results[i] for i in sorted(state.results)]
        errors = [state.errors[i] for i in sorted(state.errors)]
        error_writer = TableWriter(shard_path(self.out_dir, "errors", shard), error_schema(self.metadata))
        for row in errors:
            error_writer.add(row, len(row["message"]))
        written = error_writer.close()
        fmt = self.settings.output_format
        if fmt == "parquet":
            writer = TableWriter(shard_path(self.out_dir, "results", shard), result_schema(self.metadata))
            for row in results:
                writer.add(row, 8 * len(row["completion_ids"]) + len(row["raw_text"]))
            written += writer.close()
        else:
            if fmt == "jsonl":
                lines = [json.dumps(row, ensure_ascii=False) for row in results]
            else:
                created = int(time.time())
                merged = sorted(
                    [(r["row"], response_line(r, model=r["model"], created=created)) for r in results]
                    + [(e["row"], error_line(e)) for e in errors],
                    key=lambda pair: pair[0],
                )
                lines = [json.dumps(line, ensure_ascii=False) for _, line in merged]
            path = shard_path(self.out_dir, "results", shard, "jsonl")
            if lines:
                written += write_text(path, "".join(line + "\n" for line in lines))
            else:
                path.unlink(missing_ok=True)
        return {
            "rows": state.count,
            "results": len(results),
            "errors": len(errors),
            "errors_by_stage": dict(Counter(e["stage"] for e in errors)),
            "prompt_tokens": sum(r["prompt_tokens"] for r in results),
            "completion_tokens": sum(r["completion_tokens"] for r in results),
            "bytes": written,
        }


class _Feeder:
    """Prepares shards ahead of the engine (in a ``pipelines.pool.ShardPool``, or here between the model's steps)
    and turns them into requests; collects completions into shards."""

    def __init__(self, job: InferJob, pool: ShardPool | None) -> None:
        self.job, self.pool = job, pool
        self.model = self.engine = None  # set once loaded: preparing may start before
        self.shards = job.input.shards({int(k) for k in job.state["shards"]})
        self.exhausted = False
        self.prepared: deque = deque()  # ((shard, piece), outcomes) prepared here, not yet turned into requests
        self.pieces: deque = deque()  # ((shard, piece), items) of the shard being handed out, not yet submitted
        self.open: dict[int, ShardState] = {}
        self.options: dict[tuple[int, int], RowOptions | None] = {}
        self.waiting: dict[tuple[int, int], tuple[str, dict, str]] = {}  # a request's row id, prompt summary, model
        self.answered = Counter()  # this run's results and tokens (the summary's rates)
        self.ready: deque = deque()
        self.waited = 0.0
        self.ahead = 2 * max(1, job.workers)
        self.bar = None

    @property
    def preparing(self) -> int:
        return len(self.pool) if self.pool is not None else len(self.prepared)

    # -- feeding the engine --

    def requests(self) -> Iterator:
        while True:
            self._top_up()
            if self.ready:
                yield self.ready.popleft()
                continue
            if self.exhausted and not self.preparing and not self.pieces:
                return
            block = self.engine.idle
            started = time.perf_counter()
            self._collect(block)
            if block:
                self.waited += time.perf_counter() - started
            elif not self.ready:
                yield None

    def _top_up(self) -> None:
        """Submit pieces of shards (``PREPARE_ROWS`` rows each) while fewer than ``ahead`` are being prepared and
        few requests wait: the rows prepared and not yet generated stay a few pieces' worth, whatever the shard
        size (a shard of 200 images at budget 1120 is not held whole)."""
        slots = self.job.settings.batch_size
        while self.preparing < self.ahead and len(self.ready) < slots * 2:
            if not self.pieces:
                item = None if self.exhausted else next(self.shards, None)
                if item is None:
                    self.exhausted = True
                    return
                shard, items = item
                self.open[shard] = ShardState(len(items))
                for row in items:
                    self.options[(shard, row.index)] = row.options
                self.pieces.extend(
                    ((shard, part), items[start : start + PREPARE_ROWS])
                    for part, start in enumerate(range(0, len(items), PREPARE_ROWS))
                )
                if not items:
                    self._maybe_write(shard)
                    continue
            key, items = self.pieces.popleft()
            if self.pool is None:
                self.prepared.append((key, prepare_rows(items, *self.job.prepare_args)))
                return  # prepared here: one piece at a time
            self.pool.submit(key, items)

    def _collect(self, block: bool) -> None:
        if self.pool is None:
            finished, self.prepared = list(self.prepared), deque()
        else:
            finished = self.pool.finished(block) if len(self.pool) else []
        for (shard, _), outcomes in finished:
            for outcome in outcomes:
                if isinstance(outcome, Failed):
                    self._error(shard, outcome.row)
                else:
                    self._request(shard, outcome.index, outcome.id, outcome.batch, outcome.summary)
            self._maybe_write(shard)

    def _request(self, shard: int, index: int, row_id: str, batch, summary: dict) -> None:
        options = self.options.pop((shard, index), None)
        settings = self.job.settings
        request = make_request(self.engine, settings, (shard, index), row_id, batch, options, self.job.tokenizer)
        if isinstance(request, dict):
            self._error(shard, request)
            return
        self.waiting[(shard, index)] = (row_id, summary, model_name(settings, options, self.job.plan.info.name))
        self.ready.append(request)

    def _error(self, shard: int, row: dict) -> None:
        self.options.pop((shard, row["row"]), None)
        self.open[shard].errors[row["row"]] = row
        if self.bar is not None:
            self.bar.update(1)

    # -- collecting completions --

    def complete(self, completion) -> None:
        shard, index = completion.id
        row_id, summary, model = self.waiting.pop((shard, index))
        answered, row = finished_row(completion, row_id, index, summary, self.job.tokenizer, model)
        if answered:
            self.open[shard].results[index] = row
            self.answered.update(rows=1, prompt=completion.prompt_tokens, generated=len(completion.token_ids))
        else:
            self.open[shard].errors[index] = row
        if self.bar is not None:
            self.bar.update(1)
        self._maybe_write(shard)

    def _maybe_write(self, shard: int) -> None:
        state = self.open[shard]
        if state.complete:
            self.job.record(shard, self.job.write(shard, state))
            del self.open[shard]


def run_infer(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: InferSettings,
    *,
    workers: int = 1,
    progress: bool = True,
    plan: InferPlan | None = None,
) -> InferSummary:
    """Run (or resume) the job locally; see the module docstring. ``workers`` processes prepare rows (0: this
    process, between the model's steps). ``plan``: :func:`plan_infer` of ``settings``, if the caller made it
    already (``gemma4 infer`` prints its line first); otherwise it is made here, before anything else."""
    import torch

    from model.checkpoint import load_pretrained
    from runtime.engine import Engine

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    plan = plan or plan_infer(settings)  # every check before the output folder exists or a worker starts
    settings = plan.settings
    job = InferJob(input_path, output_dir, plan, workers)
    try:
        model_started = time.perf_counter()
        pending = job.input.shard_count - job.done_before
        if pending == 0:  # a finished job run again: its summary, without loading the model
            job.finish()
            return summarize(job, 0.0, 0.0, Counter())
        # A preprocess output's rows are prepared already (reading them back is light), and one shard is prepared
        # faster here than a worker process starts: no worker processes then.
        prepares = job.input.kind != "preprocessed" and pending > 1
        pool = ShardPool(min(workers, pending), job.work()) if workers and prepares else None
        feeder = _Feeder(job, pool)
        feeder.bar = progress_bar(job.input.rows, progress, "infer")
        feeder.bar.update(sum(s["rows"] for s in job.state["shards"].values()))
        try:
            if pool is not None:
                feeder._top_up()  # the workers start (and prepare the first shards) while the model loads
            feeder.model = load_pretrained(plan.directory, dtype=job.dtype, device=plan.device, tokenizer=job.tokenizer)
            engine = feeder.engine = Engine(
                feeder.model,
                slots=settings.batch_size,
                context=settings.context,
                prefill_chunk=settings.prefill_chunk,
                cuda_graphs=settings.cuda_graphs,
            )
            with torch.inference_mode():
                for completion in engine.run(feeder.requests()):
                    feeder.complete(completion)
        finally:
            if pool is not None:
                pool.close()
            feeder.bar.close()
        model_seconds = time.perf_counter() - model_started
        job.finish()
        return summarize(job, model_seconds, feeder.waited, feeder.answered)
    finally:
        job.close()


def summarize(job: InferJob, model_seconds: float, waited: float, answered: Counter) -> InferSummary:
    shards = job.state["shards"].values()
    stages: Counter = Counter()
    for s in shards:
        stages.update(s["errors_by_stage"])
    summary = InferSummary(
        rows=sum(s["rows"] for s in shards),
        results=sum(s["results"] for s in shards),
        errors=sum(s["errors"] for s in shards),
        errors_by_stage=dict(stages),
        prompt_tokens=sum(s["prompt_tokens"] for s in shards),
        completion_tokens=sum(s["completion_tokens"] for s in shards),
        shards=job.input.shard_count,
        shards_skipped=job.done_before,
        seconds=time.perf_counter() - job.started,
        model_seconds=model_seconds,
        waited_seconds=waited,
        this_run=dict(answered),
        written=job.paths(),
    )
    assert summary.rows == job.input.rows == summary.results + summary.errors, summary
    return summary


def read_results(output_dir: str | os.PathLike) -> list[dict]:
    """Every result of a finished infer output, in input order: result rows (``data_specs.results``), or with
    ``--output-format openai`` the output lines (answers and errors)."""
    out = Path(output_dir)
    state = read_state(out)
    if not state.get("complete"):
        raise ValueError(f"{os.fspath(output_dir)!r} holds an unfinished infer job: run the same command to finish it")
    if state.get("results_file"):
        text = (out / state["results_file"]).read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line]
    rows: list[dict] = []
    for shard in sorted(int(k) for k in state["shards"]):
        parquet = shard_path(out, "results", shard)
        if parquet.is_file():
            rows += pq.read_table(parquet).to_pylist()
    return rows
