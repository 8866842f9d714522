"""``gemma4 bench preprocess``: the batch job against ``datasets.map`` + the reference processor, side by side.

One process generates a fixed-seed dataset once (default 2 000 rows: 40 % one image, 30 % one audio clip, 10 %
image + audio, 5 % one short video, 15 % text only; every row also has a short question) and runs, in turn:

* our job (``run_preprocess``) with 1 and with N worker processes (N = ``os.cpu_count()``), each into a fresh
  output directory: rows/s, and N workers against one (target ≥ 1.7× for N = 2, else ≥ 0.85 × N);
* the reference: a ``datasets.Dataset`` of the same rows and ``.map(fn)`` with ``num_proc`` = 1 and N, where
  ``fn`` decodes the row's media (``transformers.image_utils.load_image``, ``soundfile``,
  ``transformers.video_utils.load_video``), renders the same prompt (``preprocess.chat.render_chat``) and calls
  the reference ``Gemma4Processor``, returning its tensors (``pixel_values``, ``input_features`` …) as new
  columns written to the map's Arrow cache: what a user storing reference outputs does. Ours against it with
  the same number of workers (target ≥ 2×);
* bytes on disk per image row: the image-only rows (up to ``bytes_rows`` of them) taken from both outputs and
  written with ``pyarrow.parquet.write_table`` (default settings, as our job writes its shards): our examples
  (uint8 patches) against the reference's float32 padded ``pixel_values`` + ``image_position_ids``, each side
  with its ids and token columns. Lower is better here: target ours / reference ≤ 0.3×. For information, the
  same rows' uncompressed Arrow bytes (in memory, and in the map's cache files).

Media are generated once into pools shared by many rows (rows point at the same files): up to 48 images (long
sides 64–2000 px, ratios 1:1 to 4:1, half PNG, half JPEG), 32 speech-like clips (1–60 s, 16 kHz, half WAV, half
FLAC) and 4 videos (96 × 64, 8–30 frames, 4–8 sampled per row): generating 1 000 distinct large PNGs would take
longer than the benchmark itself. Both sides decode every row's files anew.

Deviations the reference needs to do the same work: it truncates audio at 30 s, so ``fn`` cuts each clip into
30 s pieces and gives each its own ``<|audio|>`` placeholder (our job cuts at the quietest point of the last
second instead, so audio token counts differ by a few); the map's ``writer_batch_size`` is lowered to 16 rows,
as the default (1 000 rows of up to 7.7 MB of float32 pixels each) does not fit in memory. Each reference pass
runs in a freshly spawned process (the map forks its workers, and a fork of a process whose torch thread pool
has run crashes), its processor built and one row run before the clock starts. Every process uses one torch
thread, as our job's workers do. Each job runs once (no best-of): a pass takes minutes. Our timings include
the job's start (the worker processes import torch), the reference's exclude the spawn. Without transformers
installed, only our figures are printed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.pool import threads
from pipelines.sample_data import (
    WORDS,
    synthetic_image,
    synthetic_speech,
    toy_tokenizer_json,
    train_toy_tokenizer,
    write_tokenizer_files,
    write_video,
)

from .benchmarking import Row, benchmark_sizes, format_row, reference

__all__ = ["GeneratedDataset", "make_dataset", "run"]

TARGET_SCALING_TWO = 1.7  # the figure for 2 workers
TARGET_SCALING = 0.85  # per worker, for other worker counts
TARGET_VS_REFERENCE = 2.0
TARGET_BYTES = 0.3
MIX = (("image", 0.40), ("audio", 0.30), ("image+audio", 0.10), ("video", 0.05), ("text", 0.15))
POOLS = {"image": 48, "audio": 32, "video": 4}
SR = 16_000
UNIT = "rows/s"


# --- the dataset ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedDataset:
    manifest: Path  # JSONL, media paths relative to its directory
    tokenizer: Path  # a directory holding the toy tokenizer.model
    tokenizer_json: Path  # a directory holding a toy tokenizer.json of the same size, trained on the same text
    kinds: list[str]  # per row: "image", "audio", "image+audio", "video" or "text"
    description: str  # one line for the report


def _row_kinds(rows: int, rng: np.random.Generator) -> list[str]:
    """``rows`` kinds in the proportions of ``MIX`` (rounded down; the rest text-only), shuffled."""
    kinds = [kind for kind, share in MIX[:-1] for _ in range(int(rows * share))]
    kinds += ["text"] * (rows - len(kinds))
    return [str(k) for k in rng.permutation(kinds)]


def make_dataset(directory: str | os.PathLike, rows: int, seed: int = 0) -> GeneratedDataset:
    """Write ``rows`` chat rows (see the module docstring) with their media pools and the toy tokenizer."""
    import soundfile
    from PIL import Image

    directory = Path(directory)
    (directory / "media").mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer").mkdir(exist_ok=True)
    (directory / "tokenizer" / "tokenizer.model").write_bytes(train_toy_tokenizer(seed))
    write_tokenizer_files(directory / "tokenizer-json", toy_tokenizer_json(seed), chat_template=False)
    rng = np.random.default_rng(seed)
    kinds = _row_kinds(rows, rng)
    needs = Counter(part for kind in kinds for part in kind.split("+"))

    images = []
    sizes = benchmark_sizes(min(POOLS["image"], needs["image"]), low=64, high=2000, seed=seed)
    for i, (height, width) in enumerate(sizes):
        name = f"media/img{i:02d}.{'png' if i % 2 == 0 else 'jpg'}"
        Image.fromarray(synthetic_image(height, width, seed=seed * 1000 + i)).save(directory / name)
        images.append(name)
    clips = []
    durations = rng.uniform(1.0, 60.0, size=min(POOLS["audio"], needs["audio"]))
    durations[:2] = (60.0, 1.0)[: len(durations)]  # both extremes always present
    for i, seconds in enumerate(durations):
        name = f"media/clip{i:02d}.{'wav' if i % 2 == 0 else 'flac'}"
        soundfile.write(directory / name, synthetic_speech(float(seconds), seed=seed * 1000 + i), SR)
        clips.append(name)
    videos = []
    for i in range(min(POOLS["video"], needs["video"])):
        name = f"media/video{i}.mp4"
        write_video(directory / name, frames=int(rng.integers(8, 31)), seed=seed * 1000 + i)
        videos.append(name)

    used = Counter()

    def pick(pool: list[str], kind: str) -> str:
        used[kind] += 1
        return pool[(used[kind] - 1) % len(pool)]  # round robin: every pooled file is used

    manifest = directory / "manifest.jsonl"
    with open(manifest, "w") as fp:
        for i, kind in enumerate(kinds):
            content: list[dict[str, Any]] = [
                {"type": "text", "text": f"Question {i}: {' '.join(rng.choice(WORDS, 8))}?"}
            ]
            if "image" in kind:
                content.insert(0, {"type": "image", "image": pick(images, "image")})
            if "audio" in kind:
                content.append({"type": "audio", "audio": pick(clips, "audio")})
            if kind == "video":
                content.append({"type": "video", "video": pick(videos, "video"), "num_frames": int(rng.integers(4, 9))})
            fp.write(json.dumps({"id": f"row{i:05d}", "messages": [{"role": "user", "content": content}]}) + "\n")
    counts = Counter(kinds)
    description = (
        f"{rows} rows ({', '.join(f'{counts[k]} {k}' for k, _ in MIX)}); media pools: {len(images)} images "
        f"(long sides 64–2000 px, PNG + JPEG), {len(clips)} clips (1–60 s, WAV + FLAC), {len(videos)} videos"
    )
    return GeneratedDataset(manifest, directory / "tokenizer", directory / "tokenizer-json", kinds, description)


# --- the reference: datasets.map + Gemma4Processor -----------------------------------------------------------

_PROCESSOR: dict[str, Any] = {}  # per process: built once, reused for every row


def _processor(tokenizer_dir: str):
    if _PROCESSOR.get("key") != tokenizer_dir:
        from oracles.hf_processor import processor
        from preprocess.tokenizer import SPECIAL_STRINGS

        _PROCESSOR["processor"] = processor(Path(tokenizer_dir) / "tokenizer.model", list(SPECIAL_STRINGS.values()))
        _PROCESSOR["key"] = tokenizer_dir
    return _PROCESSOR["processor"]


def _features():
    """The map's output columns: the processor's tensors, every row (empty when a modality is absent)."""
    from datasets import Features, List, Value

    def nested(dtype: str, depth: int):
        feature = Value(dtype)
        for _ in range(depth):
            feature = List(feature)
        return feature

    return Features(
        {
            "id": Value("string"),
            "messages": Value("string"),
            "input_ids": nested("int64", 1),
            "attention_mask": nested("int64", 1),
            "mm_token_type_ids": nested("int64", 1),
            "pixel_values": nested("float32", 3),  # (images, 2520, 768) at budget 280, zero-padded
            "image_position_ids": nested("int64", 3),  # (images, 2520, 2), -1 on padding
            "input_features": nested("float32", 3),  # (30 s pieces, frames, 128)
            "input_features_mask": nested("bool", 2),
            "pixel_values_videos": nested("float32", 3),  # (frames, 630, 768)
            "video_position_ids": nested("int64", 3),
            "num_frames_per_video": nested("int64", 1),
        }
    )


_EMPTY = {
    "pixel_values": np.zeros((0, 0, 768), np.float32),
    "image_position_ids": np.zeros((0, 0, 2), np.int64),
    "input_features": np.zeros((0, 0, 128), np.float32),
    "input_features_mask": np.zeros((0, 0), bool),
    "pixel_values_videos": np.zeros((0, 0, 768), np.float32),
    "video_position_ids": np.zeros((0, 0, 2), np.int64),
    "num_frames_per_video": np.zeros((0,), np.int64),
}


def _reference_row(row: dict, *, base_dir: str, tokenizer_dir: str) -> dict:
    """One row through the reference: decode its media, render the prompt, call ``Gemma4Processor``."""
    from .benchmarking import reference_row

    loaded = reference_row(json.loads(row["messages"]), base_dir)
    text, images, audio, videos = loaded["text"], loaded["images"], loaded["audio"], loaded["videos"]
    metadata, num_frames = loaded["metadata"], loaded["num_frames"]
    kwargs: dict[str, Any] = {"text": [text], "add_special_tokens": False, "return_tensors": "np"}
    if images:
        kwargs["images"] = [images]
    if audio:
        kwargs["audio"] = audio
    if videos:
        kwargs["videos"] = videos
        kwargs["videos_kwargs"] = {"video_metadata": metadata, "num_frames": num_frames, "do_sample_frames": True}
    out = _processor(tokenizer_dir)(**kwargs)
    result = {key: out[key][0] for key in ("input_ids", "attention_mask", "mm_token_type_ids")}
    for key, empty in _EMPTY.items():
        result[key] = out[key] if key in out else empty
    return result


def _reference_pass(
    source: list[dict], data: GeneratedDataset, workers: int, cache_dir: Path, image_ids: list[str], parquet: Path
) -> dict[str, float]:
    """One ``datasets.map`` of every row through the reference, its outputs cached under ``cache_dir``.

    Runs in a freshly spawned process: ``datasets`` forks its ``num_proc`` workers, and a child forked from a
    process whose torch thread pool has run (our in-process job, say) crashes in its first torch call. One
    torch thread per process, as our job's workers. Returns the map's seconds, the token count and, when
    ``image_ids`` is given, the Parquet bytes of those rows (and their uncompressed Arrow bytes).
    """
    import datasets
    import pyarrow.compute as pc
    import torch

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    kwargs = {"base_dir": os.fspath(data.manifest.parent), "tokenizer_dir": os.fspath(data.tokenizer)}
    _reference_row(source[0], **kwargs)  # warm-up out of the timing: processor built, modules imported (and inherited)
    dataset = datasets.Dataset.from_list(source)
    started = time.perf_counter()
    mapped = dataset.map(
        _reference_row,
        fn_kwargs=kwargs,
        num_proc=workers if workers > 1 else None,
        features=_features(),
        cache_file_name=os.fspath(cache_dir / "reference.arrow"),
        load_from_cache_file=False,
        writer_batch_size=16,  # rows of up to ~10 MB each: the default 1 000 would hold gigabytes per worker
    )
    out = {"seconds": time.perf_counter() - started}
    table = mapped.data.table
    out["tokens"] = pc.sum(pc.list_value_length(table["input_ids"])).as_py()
    if image_ids:
        index = {row_id: i for i, row_id in enumerate(table["id"].to_pylist())}
        columns = [c for c in table.column_names if c != "messages"]  # our examples do not keep the prompt either
        images = table.select(columns).take([index[i] for i in image_ids])
        out["bytes"] = _parquet_bytes(images, parquet)
        out["arrow_bytes"] = images.nbytes
    return out


def _reference_in_fresh_process(*args) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_reference_pass, *args).result()


# --- bytes on disk -------------------------------------------------------------------------------------------


def _parquet_bytes(table, path: Path) -> int:
    import pyarrow.parquet as pq

    pq.write_table(table, path)  # default settings: what the job itself writes
    return path.stat().st_size


def _our_image_rows(out_dir: Path, ids: list[str]):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pa.concat_tables(pq.read_table(p) for p in sorted((out_dir / "examples").glob("*.parquet")))
    return table.filter(pc.is_in(table["id"], value_set=pa.array(ids)))


# --- the benchmark ---------------------------------------------------------------------------------------


def _workers(count: int) -> str:
    return "1 worker" if count == 1 else f"{count} workers"


def _scaling_target(workers: int) -> float:
    return TARGET_SCALING_TWO if workers == 2 else TARGET_SCALING * workers


def run(
    *,
    rows: int = 2000,
    workers: int | None = None,
    seed: int = 0,
    bytes_rows: int = 200,
    emit: Callable[[str], None] = print,
    workdir: str | os.PathLike | None = None,
) -> list[Row]:
    """Generate the dataset, run both sides with 1 and ``workers`` processes, report rows/s and bytes/row.

    Everything (dataset, outputs, the reference's caches) lives in a temporary directory, made under
    ``workdir`` (default: the system's) and removed at the end.
    """
    from pipelines.preprocess_job import PreprocessSettings, run_preprocess

    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    workers = workers or os.cpu_count() or 1
    oracle = reference("hf_processor")
    if oracle is None:
        emit("reference: transformers is not installed; printing our figures alone")
    with tempfile.TemporaryDirectory(prefix="gemma4-bench-preprocess-", dir=workdir) as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        data = make_dataset(tmp / "data", rows, seed)
        shard_rows = min(128, math.ceil(rows / (8 * workers)))  # ≥ 8 shards per worker: little idle tail
        settings = PreprocessSettings(tokenizer=os.fspath(data.tokenizer), rows_per_shard=shard_rows)
        emit(
            f"gemma4 bench preprocess: {data.description}; generated in {time.perf_counter() - started:.0f} s; "
            f"seed {seed}, image budget {settings.image_budget}, shards of {shard_rows} rows, one pass each"
        )
        import preprocess.prompt  # noqa: F401  (imports out of the timings, as for the reference)

        ours: dict[int, float] = {}
        summaries = {}
        for count in sorted({1, workers}):
            with threads(1):  # one thread in-process too, as in every worker
                begin = time.perf_counter()
                summaries[count] = run_preprocess(
                    data.manifest, tmp / f"ours-{count}", settings, workers=count, progress=False
                )
                ours[count] = rows / (time.perf_counter() - begin)
        summary = summaries[workers]
        failed = f"; {summary.errors} rows FAILED: {summary.errors_by_stage}" if summary.errors else ""
        result: list[Row] = [
            Row(
                "our job",
                f"{_workers(workers)} vs 1",
                ours[1],
                ours[workers],
                _scaling_target(workers),
                unit=UNIT,
                baseline_label="1 worker",
                ours_label=_workers(workers),
                note=f"tokens: {', '.join(f'{k} {v}' for k, v in summary.tokens.items())}{failed}",
            )
        ]
        emit(format_row(result[-1]))
        # Fast mode: JPEGs draft-decoded at 1/2–1/8 scale, torch's resize and FFT (not bit-identical).
        fast_settings = dataclasses.replace(settings, exact=False)
        with threads(1):
            begin = time.perf_counter()
            fast = run_preprocess(data.manifest, tmp / "ours-fast", fast_settings, workers=workers, progress=False)
            fast_rate = rows / (time.perf_counter() - begin)
        result.append(
            Row(
                "our job",
                f"fast vs exact mode, {_workers(workers)}",
                ours[workers],
                fast_rate,
                None,
                unit=UNIT,
                baseline_label="exact",
                ours_label="fast",
                note=f"{fast.examples} examples, {fast.errors} errors (exact: {summary.examples}, {summary.errors})",
            )
        )
        emit(format_row(result[-1]))
        result += _tokenizer_formats(data, settings, workers, ours[workers], tmp, emit)

        image_ids = [f"row{i:05d}" for i, kind in enumerate(data.kinds) if kind == "image"][:bytes_rows]
        theirs: dict[int, dict[str, float] | None] = {1: None, workers: None}
        if oracle is not None:
            with open(data.manifest) as fp:
                source = [{"id": r["id"], "messages": json.dumps(r["messages"])} for r in map(json.loads, fp)]
            for count in sorted({1, workers}):
                cache = tmp / f"reference-{count}"
                cache.mkdir()
                ids = image_ids if count == workers else []
                theirs[count] = _reference_in_fresh_process(
                    source, data, count, cache, ids, tmp / "reference-images.parquet"
                )
                shutil.rmtree(cache)  # up to ~10 GB of float32 tensors
        our_tokens = sum(summary.tokens.values())
        for count in sorted({1, workers}):
            ref = theirs[count]
            result.append(
                Row(
                    "vs datasets",
                    f"ours vs datasets.map, {_workers(count)}",
                    rows / ref["seconds"] if ref else None,
                    ours[count],
                    TARGET_VS_REFERENCE,
                    unit=UNIT,
                    baseline_label="datasets.map",
                    note=f"tokens: ours {our_tokens}, reference {ref['tokens']} (audio cut at other points)"
                    if ref and count == workers
                    else "",
                )
            )
            emit(format_row(result[-1]))

        if not image_ids:
            emit("disk: no image-only rows in this set; no bytes figures")
            return result
        images = len(image_ids)
        ours_table = _our_image_rows(tmp / f"ours-{workers}", image_ids)
        ref = theirs[workers]
        result.append(
            Row(
                "disk",
                "Parquet bytes per image row",
                ref["bytes"] / images if ref else None,
                _parquet_bytes(ours_table, tmp / "ours-images.parquet") / images,
                TARGET_BYTES,
                unit="bytes/row",
                lower_is_better=True,
                note=f"{len(image_ids)} image-only rows, each side's columns written by pyarrow.parquet.write_table",
            )
        )
        result.append(
            Row(
                "disk",
                "Arrow bytes per image row",
                ref["arrow_bytes"] / images if ref else None,
                ours_table.nbytes / images,
                None,
                unit="bytes/row",
                lower_is_better=True,
                note="uncompressed, as in memory and in the datasets cache (the map's Arrow files)",
            )
        )
        for row in result[-2:]:
            emit(format_row(row))
    return result


def _tokenizer_formats(data: GeneratedDataset, settings, workers: int, model_rate: float, tmp: Path, emit) -> list[Row]:
    """The published format (tokenizer.json, read by ``tokenizers``) against tokenizer.model (SentencePiece): the
    whole job with ``workers`` processes, and the tokenization of every row's prompt alone (the job's figure is
    dominated by media decoding). Target: tokenizer.json not slower (≥ 1.0×)."""
    from pipelines.preprocess_job import run_preprocess
    from preprocess.chat import render_chat
    from preprocess.tokenizer import Tokenizer

    json_settings = dataclasses.replace(settings, tokenizer=os.fspath(data.tokenizer_json))
    with threads(1):
        begin = time.perf_counter()
        run_preprocess(data.manifest, tmp / "ours-json", json_settings, workers=workers, progress=False)
        json_rate = len(data.kinds) / (time.perf_counter() - begin)
    rows = [
        Row(
            "tokenizer",
            f"tokenizer.json vs tokenizer.model, job, {_workers(workers)}",
            model_rate,
            json_rate,
            1.0,
            unit=UNIT,
            baseline_label="tokenizer.model",
            ours_label="tokenizer.json",
        )
    ]
    emit(format_row(rows[-1]))
    # Every row's prompt as build_example tokenizes it: the template's text with each placeholder expanded
    # (images 280 tokens, audio 750, a video 4 frames of 70), control strings as tokens.
    expansions = {
        "<|image|>": "<|image>" + "<|image|>" * 280 + "<image|>",
        "<|audio|>": "<|audio>" + "<|audio|>" * 750 + "<audio|>",
        "<|video|>": " ".join(f"00:0{i} <|image>" + "<|video|>" * 70 + "<image|>" for i in range(4)),
    }
    with open(data.manifest) as fp:
        prompts = [render_chat(json.loads(line)["messages"]).literal() for line in fp]
    for placeholder, expansion in expansions.items():
        prompts = [p.replace(placeholder, expansion) for p in prompts]
    rates = {}
    for name, directory in (("model", data.tokenizer), ("json", data.tokenizer_json)):
        tokenizer = Tokenizer.from_pretrained(directory)
        tokenizer.encode(prompts[0], allow_special=True)  # warm
        best = math.inf
        for _ in range(3):
            begin = time.perf_counter()
            count = sum(len(tokenizer.encode(p, allow_special=True)) for p in prompts)
            best = min(best, time.perf_counter() - begin)
        rates[name] = (count / best, count)
    rows.append(
        Row(
            "tokenizer",
            "tokenizer.json vs tokenizer.model, the prompts alone, 1 thread",
            rates["model"][0],
            rates["json"][0],
            1.0,
            unit="tok/s",
            baseline_label="tokenizer.model",
            ours_label="tokenizer.json",
            note=f"{len(prompts)} prompts; tokens: tokenizer.json {rates['json'][1]}, tokenizer.model "
            f"{rates['model'][1]} (two toy vocabularies of the same size, trained on the same text); best of 3",
        )
    )
    emit(format_row(rows[-1]))
    return rows
