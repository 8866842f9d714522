"""``gemma4 bench checkpoint``: a checkpoint in the published layout at the published size (spec §12), loaded and
run by ours and by the reference, side by side.

What is built, once per size, in ``--dir`` (default ``$GEMMA4_BENCH_DIR`` or ``~/.cache/gemma4-bench``), one
sub-folder per size: ``config.json`` and ``generation_config.json`` byte for byte as published (copies of
``../shared/data/gemma4-configs`` kept in ``bench/published_configs/``, read as package data); the toy tokenizer
(``pipelines.sample_data.toy_tokenizer_json``) at the config's vocabulary size with pad, bos, eos and the media
control tokens at the ids the config names; and one ``model.safetensors`` of random bfloat16 weights with the
published file's tensor names and shapes: our ``Gemma4``'s (built on the meta device from the config, every name
under ``model.``), plus, where layers share their keys and values (E2B, E4B), the ``k_proj`` / ``v_proj`` /
``k_norm`` the published files store for those layers (shapes of their source layer's; unused by both engines).
The file is streamed (header, then each tensor's bytes in chunks of :data:`CHUNK` values): E2B's 10 GB are never
in memory. Values: each tensor from its own ``torch.Generator`` seeded by (seed, name) as
``bench_generate.fill_random`` seeds it, N(1, 0.05²) for norm scales (``norm.weight``), ones for
``layer_scalar``, N(0, 0.02²) for everything else — including the towers' clip bounds, which makes the towers
meaningless but nothing here runs them. The folder must pass ``inspect_checkpoint`` and ``check_tokenizer``
before the marker ``.complete`` (what was built) is written, last: a folder without it (a killed run) or built
from another config or seed is rebuilt. Sizes: the four published configs (``e2b``, ``e4b``, ``31b``,
``26b-a4b``) and, for tests, ``tiny-e2b`` / ``tiny-moe``: the tiny presets' ``model_to_hf`` configs built the same
way. A size is skipped, with one line giving the figures, when its weights plus 2 GB exceed this machine's RAM
or the disk cannot hold its file.

What is measured: each engine in its own fresh process, one after the other (ours, then the reference), never
both in memory; each sets ``torch.set_num_threads(os.cpu_count())`` and runs under ``torch.inference_mode()``.
Ours is ``load_pretrained(dir)`` in the checkpoint's stored dtype (bfloat16); the reference
``Gemma4ForConditionalGeneration.from_pretrained(dir, dtype=torch.bfloat16)`` (transformers is imported in that
process only). Each figure is the best of ``repeat`` timed calls (default 2): on a shared two-core machine one
call can be slowed 1.5× by a neighbour, on either side.

* load: seconds from just before the model code is imported (``model.checkpoint`` / ``transformers``; torch is
  imported first, on both sides) until the loader returns the model. Ours maps the file and reads a weight at
  its first use (transformers, given the stored dtype, also keeps much of the file mapped: its peak RSS on E2B
  is ours'), so the first forward after loading (a 16-token prompt, the warm-up) is printed beside it: the
  page-ins a mapping defers are paid there, or earlier where the file is still in the page cache.
* peak RSS: the process's ``ru_maxrss`` at the end (the file pages our mapped weights brought in count); also
  against an absolute target for E2B (and tiny-e2b, its stand-in in tests): ours ≤ 12 GB.
* prefill: P ÷ seconds of one forward of a P-token prompt at batch 1 keeping only the last logits, filling a KV
  cache as generation would (ours a ``new_cache``, the reference ``use_cache=True``), after the warm-up forward.
* decode: greedy ``generate`` of N new tokens, no stop ids, the prompt in one pass, at batch 1 and 4, each after
  a warm-up generate (16-token prompt, 2 tokens) at that batch. Rate = B·(N−1) ÷ (the call's seconds − that
  same call's time to its first token): ours' ``Generation.prefill_s`` (generate's own clock), the reference's
  from a logits processor that notes when the first logits reach it. Subtracting each call's own prefill, rather
  than a separately timed forward, needs no second prefill of 4 × 1,024 tokens and takes the prefill the call
  actually did; what ours does before starting that clock (moving the batch, the sampling settings) counts as
  decode time, against ours.
* greedy agreement: per row, the share of the N tokens before the first difference; averaged over the rows.
  Printed, not required. With these random weights the attention is sharp (q and k are RMS-normalised to unit
  scale, Gemma 4 does not scale the scores, so scores spread by about √head_dim = 16), and the engines' bfloat16
  rounding, which differs inside attention, flips near-ties: their logits agree exactly at a prompt's first
  position and drift apart with position (on a 10-layer E2B-shaped model: equal to 4 decimals at every position
  in float32; in bfloat16 the logits' difference grows from 0 to ~0.2 standard deviations within 16 positions,
  each engine as far from the float32 logits as the other). Over E2B's 35 layers and a 1,024-token prompt the
  first greedy token already differs (measured here); on tiny-e2b they agreed.

Prompts: ids drawn uniformly from [10, min(200,000, the lowest media control id)) by a seeded generator, the same
in both processes; the batch-1 prompt is the batch-4 prompt's first row. Every ratio reads "above 1: ours is
better" (costs: the reference's ÷ ours; rates: ours ÷ the reference's), against a target of ≥ 1.00×.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from .bench_generate import INIT_STD, SCALE_STD
from .benchmarking import Row, format_row

__all__ = [
    "SIZES",
    "add_arguments",
    "agreement",
    "bench_checkpoint",
    "build_checkpoint",
    "free_disk_bytes",
    "machine_ram_bytes",
    "published_file",
    "run",
]

PUBLISHED = {  # --size → its published config.json (bench/published_configs/, spec §12)
    "e2b": "gemma-4-E2B-it.json",
    "e4b": "gemma-4-E4B-it.json",
    "31b": "gemma-4-31B-it.json",
    "26b-a4b": "gemma-4-26B-A4B-it.json",
}
TINY = {"tiny-e2b": "tiny-e2b", "tiny-moe": "tiny-moe"}  # hidden sizes for tests → presets
SIZES = tuple(PUBLISHED)
GENERATION_CONFIG = "generation_config.json"
MARKER = ".complete"
LAYOUT = 1  # bump when what a build writes changes: older folders are rebuilt

TARGET = 1.0  # every ratio, "above 1: ours is better"
RSS_TARGET_GB = {"e2b": 12.0, "tiny-e2b": 12.0}  # ours' peak RSS, absolute (tiny-e2b stands in for e2b in tests)
RAM_HEADROOM = 2e9  # bytes beyond the weights a machine needs to measure a size
DISK_HEADROOM = 256e6  # bytes beyond model.safetensors: the tokenizer files, the configs
CHUNK = 1 << 24  # values generated and written at a time (64 MB of float32)
PROMPT_HIGH = 200_000  # prompt ids are below this (and below every media control id)
WARMUP_TOKENS = 16
BATCHES = (1, 4)
WEIGHT_SEED = 0  # the weights' (the prompts' seed is an option)
_MEDIA = ("image", "audio", "video", "boi", "eoi", "boa", "eoa")  # TokenIds fields: the media control ids
_ROOT = Path(__file__).resolve().parents[1]


# --- the checkpoint --------------------------------------------------------------------------------------------


def published_file(name: str) -> bytes:
    """A published config file as shipped in ``bench/published_configs`` (package data)."""
    return (resources.files("bench") / "published_configs" / name).read_bytes()


def machine_ram_bytes() -> int:
    """This machine's total physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or would: its nearest existing ancestor)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _root(directory: str | os.PathLike | None) -> Path:
    if directory is None:
        directory = os.environ.get("GEMMA4_BENCH_DIR") or Path.home() / ".cache" / "gemma4-bench"
    return Path(directory).expanduser()


def _check_size(size: str) -> None:
    if size not in PUBLISHED and size not in TINY:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")


def _config_bytes(size: str) -> bytes:
    """``config.json`` of ``size``: the published file, or the tiny preset's as ``save_pretrained`` writes it."""
    _check_size(size)
    if size in PUBLISHED:
        return published_file(PUBLISHED[size])
    import torch

    from model.checkpoint import model_to_hf
    from model.config import PRESETS

    return json.dumps(model_to_hf(PRESETS[TINY[size]], dtype=torch.bfloat16), indent=2, sort_keys=True).encode()


def _tensor_plan(config) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of the published file for a ``ModelConfig``, sorted by name: our ``Gemma4``'s
    under ``model.``, and the KV-shared layers' own K/V projections and key norms (as their source layer's)."""
    import torch

    from model.gemma4 import Gemma4

    with torch.device("meta"):
        model = Gemma4(config)
    shapes = {f"model.{name}": tuple(t.shape) for name, t in model.state_dict().items()}
    text = config.text
    for layer in range(text.n_layers):
        source = text.kv_source(layer)
        for part in ("k_proj", "v_proj", "k_norm") if source != layer else ():
            name = f"model.language_model.layers.{{}}.self_attn.{part}.weight"
            if name.format(source) in shapes:
                shapes[name.format(layer)] = shapes[name.format(source)]
    return dict(sorted(shapes.items()))


def _fill(name: str) -> tuple[float, float]:
    """(mean, std) of a tensor's values."""
    if name.endswith("layer_scalar"):
        return 1.0, 0.0
    if name.endswith("norm.weight"):  # also every *layernorm.weight
        return 1.0, SCALE_STD
    return 0.0, INIT_STD


def _write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> int:
    """Stream a bfloat16 safetensors file of random values (:func:`_fill`); its size in bytes. The format: an
    8-byte little-endian header length, the JSON header (dtype, shape and data offsets of each tensor,
    ``__metadata__``) padded with spaces to a multiple of 8, then the tensors' bytes back to back."""
    import torch

    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    values = torch.empty(CHUNK, dtype=torch.float32)
    stored = torch.empty(CHUNK, dtype=torch.bfloat16)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in shapes.items():
            key = int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little")
            generator = torch.Generator().manual_seed(key)
            mean, std = _fill(name)
            count = math.prod(shape)
            for start in range(0, count, CHUNK):
                n = min(CHUNK, count - start)
                if std:  # drawn in float32 and rounded: bfloat16's own normal_ is 5× slower here
                    values[:n].normal_(mean, std, generator=generator)
                else:
                    values[:n].fill_(mean)
                stored[:n].copy_(values[:n])
                f.write(stored[:n].view(torch.uint8).numpy())
    return 8 + len(raw) + offset


def _plan_for(size: str) -> tuple[bytes, dict[str, tuple[int, ...]]]:
    from model.checkpoint import model_from_hf

    config_bytes = _config_bytes(size)
    return config_bytes, _tensor_plan(model_from_hf(json.loads(config_bytes)))


def _file_bytes(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values()) * 2


def _wanted(size: str, config_bytes: bytes, seed: int) -> dict:
    """What a complete folder's marker says (besides the file's size)."""
    digest = hashlib.sha256(config_bytes + published_file(GENERATION_CONFIG)).hexdigest()
    return {"size": size, "seed": seed, "layout": LAYOUT, "configs_sha256": digest}


def _complete(folder: Path, wanted: dict) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
        return {k: marker.get(k) for k in wanted} == wanted and (
            (folder / "model.safetensors").stat().st_size == marker["bytes"]
        )
    except (OSError, ValueError, KeyError):
        return False


def _disk_shortfall(folder: Path, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why the disk cannot hold ``folder``'s file, or None (a half-written file there is counted as free)."""
    old = folder / "model.safetensors"
    free = free_disk_bytes(folder) + (old.stat().st_size if old.is_file() else 0)
    need = _file_bytes(shapes) + DISK_HEADROOM
    if need <= free:
        return None
    return f"model.safetensors needs {need / 1e9:.1f} GB of disk, {folder.parent} has {free / 1e9:.1f} GB free"


def build_checkpoint(
    size: str, directory: str | os.PathLike | None = None, *, seed: int = 0, emit: Callable[[str], None] = print
) -> Path:
    """The folder ``directory/size`` holding a complete checkpoint of ``size`` (see the module docstring): reused
    when its marker says it was built from the same configs and seed, built otherwise. Raises ``OSError`` (before
    writing anything) when the disk cannot hold it."""
    import torch

    from model.checkpoint import check_tokenizer, inspect_checkpoint, load_config
    from pipelines.sample_data import toy_tokenizer_json, write_tokenizer_files
    from preprocess.tokenizer import SPECIAL_STRINGS, Tokenizer

    config_bytes, shapes = _plan_for(size)
    folder = _root(directory) / size
    wanted = _wanted(size, config_bytes, seed)
    if _complete(folder, wanted):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    if reason := _disk_shortfall(folder, shapes):
        raise OSError(f"not enough disk space to build {size}: {reason}")
    emit(f"building {size} in {folder}: model.safetensors of {_file_bytes(shapes) / 1e9:.1f} GB, random bfloat16")
    started = time.perf_counter()
    (folder / "config.json").write_bytes(config_bytes)
    (folder / GENERATION_CONFIG).write_bytes(published_file(GENERATION_CONFIG))
    config = load_config(folder)
    tokens = config.tokens
    place = {SPECIAL_STRINGS[role]: getattr(tokens, role) for role in ("pad", "bos", *_MEDIA)}
    eos = json.loads(config_bytes)["text_config"]["eos_token_id"]
    place[SPECIAL_STRINGS["eos"]] = eos[0] if isinstance(eos, list) else eos
    write_tokenizer_files(folder, toy_tokenizer_json(vocab_size=config.text.vocab_size, place=place))
    assert _tensor_plan(config) == shapes  # the written config is the planned one
    with torch.inference_mode():
        written = _write_safetensors(folder / "model.safetensors", shapes, seed)
    inspect_checkpoint(folder)  # CheckpointError if a name or shape does not fit the config
    check_tokenizer(config, Tokenizer.from_pretrained(folder))  # TokenizerMismatchError likewise
    marker = dict(wanted, bytes=written, tensors=len(shapes))
    (folder / (MARKER + ".tmp")).write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(folder / (MARKER + ".tmp"), folder / MARKER)
    emit(f"built {size} in {time.perf_counter() - started:.0f} s: {len(shapes)} tensors, {written / 1e9:.2f} GB")
    return folder


# --- one engine in a fresh process ------------------------------------------------------------------------------


def _ours(directory: str):
    """(prefill(ids) → logits, generate(ids, n) → (tokens per row, seconds to the first token)) of ours."""
    from data_specs.batch import Batch
    from model.checkpoint import load_pretrained
    from runtime.generate import generate

    model = load_pretrained(directory)  # the stored dtype

    def prefill(ids):
        cache = model.new_cache(ids.shape[0], ids.shape[1])
        return model(Batch.from_ids(ids), logits_to_keep=1, cache=cache)

    def run(ids, n: int):
        results = generate(model, Batch.from_ids(ids), max_new_tokens=n, stop_ids=(), prefill_chunk=None)
        return [r.token_ids for r in results], results[0].prefill_s

    return prefill, run


def _reference(directory: str):
    """:func:`_ours` for the reference."""
    import torch
    import transformers

    model = transformers.Gemma4ForConditionalGeneration.from_pretrained(directory, dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None  # N new tokens on every row, and no eos suppression before N

    class FirstLogits(transformers.LogitsProcessor):
        at: float | None = None

        def __call__(self, input_ids, scores):
            self.at = self.at or time.perf_counter()
            return scores

    def prefill(ids):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
        return out.logits

    def run(ids, n: int):
        stamp, started = FirstLogits(), time.perf_counter()
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            logits_processor=transformers.LogitsProcessorList([stamp]),
        )
        return out[:, ids.shape[1] :].tolist(), stamp.at - started

    return prefill, run


def _child(spec_json: str) -> None:
    """One engine's measurements (the module docstring), written as JSON to ``spec["out"]``."""
    import torch

    spec = json.loads(spec_json)
    torch.set_num_threads(os.cpu_count())
    started = time.perf_counter()
    prefill, generate = (_ours if spec["engine"] == "ours" else _reference)(spec["directory"])
    report: dict = {"load_s": time.perf_counter() - started, "threads": torch.get_num_threads(), "generate": {}}
    generator = torch.Generator().manual_seed(spec["seed"])
    ids = torch.randint(10, spec["high"], (max(spec["batches"]), spec["prompt"]), generator=generator)
    warm = ids[:, : min(WARMUP_TOKENS, spec["prompt"])]

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    with torch.inference_mode():
        report["first_forward_s"] = timed(lambda: prefill(warm[:1]))
        report["prefill_s"] = min(timed(lambda: prefill(ids[:1])) for _ in range(spec["repeat"]))
        for rows in spec["batches"]:
            generate(warm[:rows], 2)
            best = None
            for _ in range(spec["repeat"]):  # the call with the fastest decode counts (a shared machine is noisy)
                start = time.perf_counter()
                tokens, first = generate(ids[:rows], spec["new_tokens"])
                total = time.perf_counter() - start
                if best is None or total - first < best["total_s"] - best["first_s"]:
                    best = {"total_s": total, "first_s": first, "tokens": tokens}
            report["generate"][str(rows)] = best
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    Path(spec["out"]).write_text(json.dumps(report))


def _measure(engine: str, spec: dict) -> dict:
    """Run :func:`_child` for ``engine``; its report, or ``{"failed": one line saying why}``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]))
    script = "import sys; from bench.bench_checkpoint import _child; _child(sys.argv[1])"
    with tempfile.TemporaryDirectory(prefix="gemma4-bench-checkpoint-") as tmp:
        out = Path(tmp) / "report.json"
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", script, json.dumps(dict(spec, engine=engine, out=str(out)))],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        seconds = time.perf_counter() - started
        if done.returncode == 0:
            return json.loads(out.read_text())
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        why = " (SIGKILL: most likely the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
        return {"failed": f"{engine}: its process was killed by {name}{why} after {seconds:.0f} s; no figures"}
    last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no message")
    return {"failed": f"{engine}: its process failed (exit code {done.returncode}) after {seconds:.0f} s: {last}"}


# --- the comparison ---------------------------------------------------------------------------------------------


class _CostRow(Row):
    """A cost (seconds, bytes): its ratio is the reference's ÷ ours, so that above 1 means ours is better."""

    @property
    def ratio(self) -> float | None:
        return None if self.baseline is None or not self.ours else self.baseline / self.ours


def agreement(ours: Sequence[Sequence[int]], theirs: Sequence[Sequence[int]]) -> float:
    """Greedy agreement: per row, the share of positions before the first difference; averaged over the rows."""
    shares = []
    for a, b in zip(ours, theirs, strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        shares.append(same / max(len(a), len(b), 1))
    return sum(shares) / len(shares)


def _skip_reason(folder: Path, shapes: dict[str, tuple[int, ...]], built: bool) -> str | None:
    """Why this machine cannot measure the checkpoint of ``shapes`` (kept in ``folder``, ``built`` already), or
    None."""
    weights, ram = _file_bytes(shapes), machine_ram_bytes()
    reasons = []
    if weights + RAM_HEADROOM > ram:
        reasons.append(
            f"its weights ({weights / 1e9:.1f} GB) plus {RAM_HEADROOM / 1e9:.0f} GB exceed this machine's "
            f"{ram / 1e9:.1f} GB of RAM"
        )
    if not built and (disk := _disk_shortfall(folder, shapes)):
        reasons.append(disk)
    return "; ".join(reasons) or None


def _rows(size: str, prompt: int, new_tokens: int, ours: dict, theirs: dict | None) -> list[Row]:
    def pick(report: dict | None, fn):
        return None if report is None else fn(report)

    def decode_rate(rows: int) -> Callable[[dict], float]:
        def rate(report: dict) -> float:
            run = report["generate"][str(rows)]
            return rows * (new_tokens - 1) / max(run["total_s"] - run["first_s"], 1e-9)

        return rate

    first = f"first forward after loading ({WARMUP_TOKENS} tokens): ours {ours['first_forward_s']:.1f} s" + (
        f", reference {theirs['first_forward_s']:.1f} s" if theirs else ""
    )
    rss = ours["peak_rss_bytes"] / 1e9
    limit = RSS_TARGET_GB.get(size)
    rss_note = "" if limit is None else f"target ours ≤ {limit:.0f} GB: {'met' if rss <= limit else 'NOT met'}"
    rows = [
        _CostRow(size, "load", pick(theirs, lambda r: r["load_s"]), ours["load_s"], TARGET, unit="s", note=first),
        _CostRow(size, "peak RSS", pick(theirs, lambda r: r["peak_rss_bytes"] / 1e9), rss, TARGET, unit="GB",
                 note=rss_note),
        Row(size, f"prefill {prompt} tokens, batch 1", pick(theirs, lambda r: prompt / r["prefill_s"]),
            prompt / ours["prefill_s"], TARGET, unit="tok/s"),
    ]  # fmt: skip
    for batch in BATCHES:
        rate = decode_rate(batch)
        rows.append(
            Row(size, f"decode batch {batch}, {new_tokens - 1} steps", pick(theirs, rate), rate(ours), TARGET,
                unit="tok/s")
        )  # fmt: skip
    return rows


def _bench(
    size: str,
    directory: str | os.PathLike | None,
    *,
    prompt: int,
    new_tokens: int,
    seed: int,
    emit: Callable[[str], None],
    repeat: int = 2,
) -> bool:
    """Build (or reuse) and measure one size, emitting every line; False when a measuring process failed."""
    from model.checkpoint import inspect_checkpoint

    _check_size(size)
    if isinstance(prompt, bool) or not isinstance(prompt, int) or prompt < 1:
        raise ValueError(f"prompt must be a positive number of tokens, got {prompt!r}")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 2:
        raise ValueError(f"new_tokens must be at least 2 (decode steps are new_tokens − 1), got {new_tokens!r}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a positive number of timed calls, got {repeat!r}")
    config_bytes, shapes = _plan_for(size)
    folder = _root(directory) / size
    if reason := _skip_reason(folder, shapes, _complete(folder, _wanted(size, config_bytes, WEIGHT_SEED))):
        emit(f"{size:<11} skipped, not built: {reason}")
        return True
    folder = build_checkpoint(size, directory, seed=WEIGHT_SEED, emit=emit)
    info = inspect_checkpoint(folder)
    tokens = info.config.tokens
    high = min(PROMPT_HIGH, info.config.text.vocab_size, *(getattr(tokens, role) for role in _MEDIA))
    with_reference = importlib.util.find_spec("transformers") is not None
    emit(
        f"gemma4 bench checkpoint {size}: {folder} ({(folder / 'model.safetensors').stat().st_size / 1e9:.1f} GB, "
        f"random weights), ours in {str(info.dtype).removeprefix('torch.')} (the stored dtype), the reference in "
        f"bfloat16; {os.cpu_count()} threads; machine RAM {machine_ram_bytes() / 1e9:.1f} GB; prompt {prompt} "
        f"random tokens, {new_tokens} new tokens greedy at batch {' and '.join(map(str, BATCHES))}; best of {repeat} "
        "timed calls per figure; each engine in its own fresh process, ours first"
        + ("" if with_reference else "; the reference is not installed")
    )
    spec = {"directory": str(folder), "seed": seed, "high": high, "prompt": prompt, "new_tokens": new_tokens}
    spec["batches"], spec["repeat"] = list(BATCHES), repeat
    ours = _measure("ours", spec)
    theirs = _measure("reference", spec) if with_reference else None
    for report in (ours, theirs):
        if report is not None and "failed" in report:
            emit(f"{size:<11} {report['failed']}")
    if "failed" in ours:
        return False
    failed = theirs is not None and "failed" in theirs
    theirs = None if failed else theirs
    for row in _rows(size, prompt, new_tokens, ours, theirs):
        emit(format_row(row))
    if theirs is None:
        emit(f"{size:<11} greedy agreement: n/a (no reference figures)")
    else:
        shares = [
            f"batch {b} {agreement(ours['generate'][str(b)]['tokens'], theirs['generate'][str(b)]['tokens']):.1%}"
            for b in BATCHES
        ]
        emit(
            f"{size:<11} greedy agreement with the reference: {', '.join(shares)} (per row, the share of the "
            f"{new_tokens} tokens before the first difference; averaged over rows)\n{'':12}printed, not required: "
            "random weights make attention sharp, and bfloat16 rounding then flips near-ties (module docstring)"
        )
    return not failed


def bench_checkpoint(
    size: str,
    directory: Path | None = None,
    *,
    prompt: int = 1024,
    new_tokens: int = 32,
    seed: int = 0,
    emit: Callable[[str], None] = print,
    repeat: int = 2,
) -> list[str]:
    """Build (once) and measure ``size`` (see the module docstring) in ``directory/size`` (None:
    ``$GEMMA4_BENCH_DIR`` or ``~/.cache/gemma4-bench``); the printed lines, each also passed to ``emit``."""
    lines: list[str] = []

    def both(text: str) -> None:
        emit(text)
        lines.extend(text.splitlines())

    _bench(size, directory, prompt=prompt, new_tokens=new_tokens, seed=seed, emit=both, repeat=repeat)
    return lines


# --- the command ------------------------------------------------------------------------------------------------


def _size(text: str) -> str:
    if text not in PUBLISHED and text not in TINY:
        raise argparse.ArgumentTypeError(f"unknown size {text!r}; choose from {', '.join(SIZES)}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gemma4 bench checkpoint``."""
    parser.add_argument(
        "--size",
        action="append",
        type=_size,
        metavar="{" + ",".join(SIZES) + "}",
        help="a published size to build and measure; repeatable (default: e2b)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where checkpoints are built and kept, one sub-folder per size (default: $GEMMA4_BENCH_DIR or "
        "~/.cache/gemma4-bench)",
    )
    parser.add_argument("--prompt", type=int, default=1024, help="prompt tokens (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=32, help="new tokens per row (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts (default: %(default)s)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="timed calls per figure; the best counts (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    """``gemma4 bench checkpoint``: every size in turn; 1 if a measuring process failed (each said why)."""
    ok = True
    for size in args.size or ["e2b"]:
        ok &= _bench(
            size,
            args.dir,
            prompt=args.prompt,
            new_tokens=args.new_tokens,
            seed=args.seed,
            emit=print,
            repeat=args.repeat,
        )
    return 0 if ok else 1
