"""``gemma4 bench generate``: new tokens per second of our ``generate`` against the reference's, side by side.

The model is the ~110 M-parameter text config of ``gemma4 bench model`` (PLE, KV sharing, window 512), random,
float32, saved once as a checkpoint. Each measurement runs in a fresh process that loads it (the reference through
``Gemma4ForCausalLM.from_pretrained``, ours through ``load_pretrained``) and times a whole greedy ``generate``
call — prefill of a random P-token prompt plus N new tokens for B rows, no early stop — best of ``repeat`` after
a warm-up; the engines alternate over ``rounds`` processes and the best process counts. Rate = B·N ÷ seconds.
Both engines' tokens are compared (greedy on the same weights: they should agree; float32 rounding may flip a
near-tie, so the agreement is printed rather than required).

The bandwidth line: decoding one token reads every weight once (the embedding table as the output projection;
the per-layer-embedding table only at the token's rows), so memory bandwidth ÷ those bytes bounds batch-1 decode
speed. Bandwidth is measured here by summing a 512 MB tensor; our batch-1 decode rate (new tokens after the first
÷ decode seconds) is printed as a fraction of that bound.

The device mode (:func:`run_device`, ``gemma4 bench generate --device cuda``) measures random E2B-sized and
31B-sized text decoders (the presets' text configs, full vocabulary) in bfloat16 on one GPU, with no checkpoint on
disk (31B in bf16 is ~61 GB). Each engine builds its model in a fresh process straight on the device and fills
every tensor from a generator seeded by (seed, the tensor's checkpoint name less its text prefix)
(:func:`fill_random`), so both engines hold the same weights by construction. Per batch size, after a warm-up, the
best of ``repeat``: prefill = one forward of the B × P prompt to the first token (B·P ÷ seconds); decode = a whole
greedy ``generate`` of N tokens less that prefill (B·(N−1) ÷ seconds); peak = ``torch.cuda.max_memory_allocated``
over both (the process's peak RSS on the CPU). The device is synchronised before every clock read. The same code
runs on the CPU with the tiny presets (``--device cpu --size tiny-e2b``), which is how the tests run it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .benchmarking import Row, alternate, format_row, reference

if TYPE_CHECKING:
    import torch

__all__ = [
    "MeasurementError",
    "SIZES",
    "build_ours",
    "build_reference",
    "fill_random",
    "memory_bandwidth",
    "run",
    "run_device",
    "weight_bytes_per_token",
]

TARGET = 5.0  # × the reference's new tokens per second, at batch 1 and 8
BANDWIDTH_AIM = 0.40  # batch-1 decode rate as a fraction of the bandwidth bound (an aim, printed)

_CHILD = r"""
import json, resource, sys, time, torch
engine, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
rows, prompt, new, repeat, vocab = (int(a) for a in sys.argv[4:9])
torch.manual_seed(0)
ids = torch.randint(10, vocab, (rows, prompt))
if engine == "reference":
    import oracles
    model = oracles.load("hf_decoder").load(path)
    model.generation_config.eos_token_id = None
    def run():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, pad_token_id=0)
        return out[:, prompt:], None
else:
    from data_specs.batch import Batch
    from model.checkpoint import load_pretrained
    from model.generate import generate
    model = load_pretrained(path)
    batch = Batch.from_ids(ids)
    def run():
        results = generate(model, batch, max_new_tokens=new, stop_ids=())
        return torch.tensor([r.token_ids for r in results]), results[0].decode_s
with torch.no_grad():
    run()
    best, decode_s, tokens = float("inf"), None, None
    for _ in range(repeat):
        start = time.perf_counter()
        tokens, decode = run()
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, decode_s = elapsed, decode
torch.save(tokens, out)
print(json.dumps({"tokens_per_s": rows * new / best, "decode_s": decode_s,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _measure(engine: str, path: str, rows: int, prompt: int, new: int, repeat: int, vocab: int) -> dict:
    import torch

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    out = os.path.join(path, f"tokens-{engine}.pt")
    args = [str(a) for a in (rows, prompt, new, repeat, vocab)]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, engine, path, out, *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{engine} generate (batch {rows}) failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), tokens=torch.load(out))


def weight_bytes_per_token(config, element_size: int = 4) -> int:
    """Bytes of weights one decode step reads: every parameter once, except the per-layer-embedding table (only
    the token's row) and the input embedding lookup (one row; the table is read whole as the output projection)."""
    counts = config.num_parameters()
    total = counts["total"]
    ple_table = config.ple_vocab_size * config.n_layers * config.ple_dim if config.ple_dim else 0
    return (total - ple_table + config.n_layers * config.ple_dim) * element_size


def memory_bandwidth(megabytes: int = 512, repeat: int = 5) -> float:
    """Bytes per second this machine reads: the best of ``repeat`` sums of a float32 tensor of that size."""
    import time

    import torch

    x = torch.ones(megabytes * (1 << 20) // 4)
    x.sum()
    best = min((lambda s: (x.sum(), time.perf_counter() - s)[1])(time.perf_counter()) for _ in range(repeat))
    return x.numel() * 4 / best


def run(
    batches: Sequence[int] = (1, 8),
    *,
    prompt: int = 256,
    new_tokens: int = 64,
    repeat: int = 2,
    rounds: int = 2,
    emit: Callable[[str], None] = print,
    config=None,
) -> list[Row]:

    import torch

    from model.checkpoint import save_text_decoder
    from model.decoder import TextDecoder

    from .bench_model import bench_config

    config = config or bench_config()
    oracle = reference("hf_decoder")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gemma4-bench-generate-") as tmp:
        torch.manual_seed(0)
        model = TextDecoder(config)
        with torch.no_grad():  # random layer scales, so that the logits are not flat
            for layer in model.layers:
                layer.layer_scalar.uniform_(0.5, 1.5)
        save_text_decoder(model, tmp)  # a Gemma4ForCausalLM checkpoint: both engines load it
        del model
        emit(
            f"gemma4 bench generate: {config.num_parameters()['total'] / 1e6:.0f} M parameters, float32, prompt "
            f"{prompt} tokens, {new_tokens} new tokens, greedy, {torch.get_num_threads()} threads, best of {repeat} "
            f"calls × {rounds} processes"
        )
        vocab = min(config.vocab_size, 15_000)
        ours_batch1 = None
        for batch in batches:
            ours, theirs = alternate(
                lambda e, b=batch: _measure(e, tmp, b, prompt, new_tokens, repeat, vocab), oracle is not None, rounds
            )
            note = f"peak memory: ours {ours['peak_mb']:.0f} MB" + (
                f", reference {theirs['peak_mb']:.0f} MB" if theirs else ""
            )
            if theirs:
                same = float((ours["tokens"] == theirs["tokens"]).float().mean())
                note += f"; greedy tokens equal to the reference's: {same:.1%}"
            row = Row(
                f"batch {batch}",
                "generate (prefill + decode)",
                theirs["tokens_per_s"] if theirs else None,
                ours["tokens_per_s"],
                TARGET,
                unit="tok/s",
                note=note,
            )
            rows.append(row)
            emit(format_row(row))
            if batch == 1:
                ours_batch1 = ours
        if ours_batch1 is not None and ours_batch1["decode_s"]:
            decode_rate = (new_tokens - 1) / ours_batch1["decode_s"]
            bandwidth = memory_bandwidth()
            bound = bandwidth / weight_bytes_per_token(config)
            bound_row = Row(
                "batch 1",
                "decode vs bandwidth bound",
                bound,
                decode_rate,
                BANDWIDTH_AIM,
                unit="tok/s",
                baseline_label="bound",
                note=f"memory bandwidth {bandwidth / 1e9:.1f} GB/s, {weight_bytes_per_token(config) / 1e6:.0f} MB "
                "of weights read per token",
            )
            rows.append(bound_row)
            emit(format_row(bound_row))
    return rows


# --- the device mode --------------------------------------------------------------------------------------------

SIZES = {"e2b": "gemma4-e2b", "31b": "gemma4-31b", "tiny-e2b": "tiny-e2b", "tiny-31b": "tiny-31b"}  # → presets
LABELS = {"e2b": "E2B", "31b": "31B"}
INIT_STD = 0.02  # matrices and embeddings: N(0, 0.02²), the reference's initializer_range
SCALE_STD = 0.05  # norm scales and layer scalars: N(1, 0.05²), near the identity but not exactly it
FIRST_CONTROL_ID = 255_999  # prompts draw ids below the first multimodal control id (<|image>, spec §1.6)
_ROOT = Path(__file__).resolve().parents[1]


class MeasurementError(RuntimeError):
    """A measuring process of the device mode failed (its error is printed with the rows)."""


def fill_random(tensors: Mapping[str, torch.Tensor], seed: int = 0) -> None:
    """Overwrite every tensor in place from its own generator, on its own device, seeded by (``seed``, its name):
    the same name, shape, dtype and device give the same values in any process, whatever else the model holds.
    Norm scales and layer scalars (names ending ``norm.weight`` or ``layer_scalar``) get N(1, 0.05²), the rest
    N(0, 0.02²)."""
    import torch

    with torch.no_grad():
        for name, tensor in tensors.items():
            key = int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little")
            generator = torch.Generator(device=tensor.device).manual_seed(key)
            scale = name.endswith(("norm.weight", "layer_scalar"))
            tensor.normal_(1.0 if scale else 0.0, SCALE_STD if scale else INIT_STD, generator=generator)


def build_ours(config, *, device, dtype, seed: int = 0):
    """Our text-only ``Gemma4`` of ``config`` (a ``TextConfig``), random by :func:`fill_random`: built on the meta
    device, given uninitialised storage on ``device`` in ``dtype``, filled by checkpoint name (``language_model.X``
    is the checkpoint's ``model.language_model.X``: the key is X), RoPE buffers rebuilt there."""
    import torch

    from model.config import ModelConfig
    from model.gemma4 import Gemma4

    with torch.device("meta"):
        model = Gemma4(ModelConfig(text=config))
    model = model.to(dtype).to_empty(device=device)
    fill_random(model.language_model.state_dict(), seed)
    model.reset_buffers(device)
    return model.eval()


def build_reference(config, *, device, dtype, seed: int = 0):
    """The reference's ``Gemma4ForCausalLM`` of ``config``, built on ``device`` in ``dtype`` and filled by
    :func:`fill_random` under the same names as :func:`build_ours` (its ``model.X`` is key X)."""
    from model.checkpoint import text_to_hf

    oracle = reference("hf_decoder")
    if oracle is None:
        raise ModuleNotFoundError("the reference (transformers, the test extra) is not installed")
    model = oracle.build(text_to_hf(config), dtype=dtype, device=device)
    fill_random(oracle.text_weights(model), seed)
    return model


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device) -> int:
    """Peak allocated device memory since the last reset; on the CPU the process's peak resident set."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _calls(engine: str, model, ids, new_tokens: int):
    """(prefill() → first tokens (B,), generate(n) → new tokens (B, n)) of one engine for prompt ids (B, P)."""
    import torch

    rows, prompt = ids.shape
    if engine == "ours":
        from data_specs.batch import Batch
        from model.generate import generate

        batch = Batch.from_ids(ids.cpu()).to(ids.device)

        def prefill():
            cache = model.new_cache(rows, prompt + new_tokens)  # what generate allocates for its prefill
            return model(batch, logits_to_keep=1, cache=cache)[:, -1].argmax(dim=-1)

        def run(n: int):
            return torch.tensor([r.token_ids for r in generate(model, batch, max_new_tokens=n, stop_ids=())])

        return prefill, run
    mask = torch.ones_like(ids)

    def prefill_reference():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(dim=-1)

    def run_reference(n: int):
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
        )
        return out[:, prompt:]

    return prefill_reference, run_reference


def _measure_batch(engine: str, model, ids, new_tokens: int, repeat: int, device) -> tuple[dict, dict]:
    """Timings (seconds, best of ``repeat`` after a warm-up) and peak bytes of one batch; and the tokens."""
    import torch

    prefill, run = _calls(engine, model, ids, new_tokens)

    def timed(fn):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        return out, time.perf_counter() - start

    prefill()
    run(min(new_tokens, 2))  # warm-up: the prefill's and the decode step's kernels, the allocator's pools
    best_prefill = best_total = math.inf
    peak = 0
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        first, seconds = timed(prefill)
        best_prefill = min(best_prefill, seconds)
        tokens, seconds = timed(lambda: run(new_tokens))
        best_total = min(best_total, seconds)
        peak = max(peak, _peak_bytes(device))
    # Both are minima of noisy clocks; a decode phase too short to show up (a tiny model) must not go negative.
    decode = max(best_total - best_prefill, 1e-9)
    timings = {"prefill_s": best_prefill, "decode_s": decode, "total_s": best_total, "peak_bytes": peak}
    return timings, {"first": first.cpu(), "tokens": tokens.cpu()}


def _device_child(spec_json: str) -> None:
    """One engine and one size in a fresh process: build the model on the device, then measure every batch size;
    one JSON line on stdout, the tokens to ``spec["out"]``. A batch that runs out of device memory is reported
    as such and the next one measured."""
    import torch

    from model.checkpoint import DTYPES, text_from_hf

    spec = json.loads(spec_json)
    device, dtype = torch.device(spec["device"]), DTYPES[spec["dtype"]]
    config = text_from_hf(spec["text_config"])
    started = time.perf_counter()
    build = build_ours if spec["engine"] == "ours" else build_reference
    model = build(config, device=device, dtype=dtype, seed=spec["seed"])
    if spec["engine"] == "reference":
        model.generation_config.eos_token_id = None  # no early stop: N new tokens on every row
    _sync(device)
    report: dict = {"built_s": time.perf_counter() - started, "batches": []}
    tokens: dict[int, dict] = {}
    with torch.no_grad():
        for rows in spec["batches"]:
            generator = torch.Generator().manual_seed(spec["seed"] * 1_000_003 + rows)  # same prompt for both
            high = min(config.vocab_size, FIRST_CONTROL_ID)
            ids = torch.randint(10, high, (rows, spec["prompt"]), generator=generator).to(device)
            try:
                timings, tokens[rows] = _measure_batch(
                    spec["engine"], model, ids, spec["new_tokens"], spec["repeat"], device
                )
            except torch.OutOfMemoryError as exc:
                timings = {"error": "out of memory: " + str(exc).splitlines()[0]}
            report["batches"].append({"rows": rows, **timings})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    torch.save(tokens, spec["out"])
    print(json.dumps(report))


def _measure_device(engine: str, config, directory: str, spec: dict) -> dict:
    """Run :func:`_device_child` for one engine and size; its report with the tokens, or {"failed": message}."""
    import torch

    from model.checkpoint import text_to_hf

    out = os.path.join(directory, f"tokens-{engine}.pt")
    spec = dict(spec, engine=engine, text_config=text_to_hf(config), out=out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]))
    # The 31B at batch 32 holds ~61 GB of weights and ~28 GB of cache beside the prefill's activations: growable
    # segments keep the allocator's fragmentation from failing it (either engine; set here, the entry point).
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    script = "import sys; from bench.bench_generate import _device_child; _device_child(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(spec)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        return {"failed": f"exit code {done.returncode}:\n{done.stderr[-3000:]}"}
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["tokens"] = torch.load(out)
    return report


def _check_device(device: str) -> None:
    import torch

    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device cuda: no CUDA device is usable here (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); run it on a GPU machine, or use "
            "--device cpu with a tiny size"
        )


def run_device(
    device: str = "cuda",
    sizes: Sequence[str] = ("e2b", "31b"),
    batches: Sequence[int] = (1, 32),
    *,
    prompt: int = 1024,
    new_tokens: int = 64,
    repeat: int = 2,
    dtype: str = "bfloat16",
    seed: int = 0,
    emit: Callable[[str], None] = print,
) -> list[Row]:
    """The device mode: per size, ours and then the reference each in a fresh process (see the module docstring);
    three rows per size and batch (prefill tok/s, decode tok/s with the greedy agreement, peak memory). Every
    process's start-up and model construction count in the wall time printed at the end. Raises ``ValueError``
    for bad settings or an unusable device (before any process starts), and :class:`MeasurementError` once
    everything else is printed if a measuring process failed."""
    from model.checkpoint import DTYPES
    from model.config import PRESETS

    started = time.perf_counter()
    _check_device(device)
    if unknown := [s for s in sizes if s not in SIZES]:
        raise ValueError(f"unknown size {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if new_tokens < 2 or repeat < 1:
        raise ValueError(f"--new-tokens {new_tokens}, --repeat {repeat}: the device mode needs N ≥ 2 and R ≥ 1")
    engines = ["ours"] + (["reference"] if reference("hf_decoder") is not None else [])
    spec = {"device": device, "dtype": dtype, "batches": list(batches), "prompt": prompt}
    spec |= {"new_tokens": new_tokens, "repeat": repeat, "seed": seed}
    emit(
        f"gemma4 bench generate --device {device}: random text decoders, {dtype}, prompt {prompt} random tokens, "
        f"{new_tokens} new tokens, greedy, no early stop; batch {', '.join(map(str, batches))}; each engine and size "
        f"in a fresh process that builds its model on the device; best of {repeat} after a warm-up"
    )
    emit(
        "prefill = B·P ÷ seconds of one prompt forward to the first token; decode = B·(N−1) ÷ (seconds of the whole "
        "generate − prefill); peak = " + ("max_memory_allocated" if device == "cuda" else "the process's peak RSS")
    )
    rows: list[Row] = []
    failed: list[str] = []
    for size in sizes:
        config, label = PRESETS[SIZES[size]].text, LABELS.get(size, size)
        results = {}
        with tempfile.TemporaryDirectory(prefix="gemma4-bench-generate-") as tmp:
            for engine in engines:
                result = _measure_device(engine, config, tmp, spec)
                if "failed" in result:
                    failed.append(f"{label} {engine}")
                    emit(f"{label}: {engine} failed, {result['failed']}")
                else:
                    results[engine] = result
        built = ", ".join(f"{e} {r['built_s']:.1f} s" for e, r in results.items())
        count = config.num_parameters()["total"]
        size_text = f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.2f} M"
        emit(f"{label}: {size_text} parameters; built on {device} in {built}")
        if "ours" in results:
            for batch in batches:
                rows += _device_rows(f"{label} b{batch}", batch, results["ours"], results.get("reference"), spec, emit)
    emit(f"wall time {time.perf_counter() - started:.0f} s (process start-up, model construction, measurements)")
    if failed:
        raise MeasurementError(f"these measurements failed (their errors are above): {', '.join(failed)}")
    return rows


def _device_rows(group: str, batch: int, ours: dict, theirs: dict | None, spec: dict, emit) -> list[Row]:
    """Prefill, decode and peak-memory rows of one batch size, emitted as they are made; none (a line saying
    why) where an engine ran out of memory."""
    mine = next(b for b in ours["batches"] if b["rows"] == batch)
    other = None if theirs is None else next(b for b in theirs["batches"] if b["rows"] == batch)
    if errors := [f"{e}: {r['error']}" for e, r in (("ours", mine), ("reference", other)) if r and "error" in r]:
        emit(f"{group:<11} not measured: {'; '.join(errors)}")
        return []

    def per_second(result: dict | None, key: str, tokens: int) -> float | None:
        return None if result is None else tokens / result[key]

    def gigabytes(result: dict | None) -> float | None:
        return None if result is None else result["peak_bytes"] / 1e9

    prefill_tokens, decode_tokens = batch * spec["prompt"], batch * (spec["new_tokens"] - 1)
    note = ""
    if other is not None:
        a, b = ours["tokens"][batch], theirs["tokens"][batch]
        same, first = (float((a[k] == b[k]).float().mean()) for k in ("tokens", "first"))
        note = f"greedy tokens equal to the reference's: {same:.1%} (first tokens: {first:.1%})"
    memory = "peak GPU memory" if spec["device"] == "cuda" else "peak memory (process RSS)"
    made = [
        Row(group, "prefill", *(per_second(r, "prefill_s", prefill_tokens) for r in (other, mine)), None, unit="tok/s"),
        Row(group, "decode", *(per_second(r, "decode_s", decode_tokens) for r in (other, mine)), None, unit="tok/s",
            note=note),
        Row(group, memory, gigabytes(other), gigabytes(mine), None, unit="GB", lower_is_better=True),
    ]  # fmt: skip
    for row in made:
        emit(format_row(row))
    return made
