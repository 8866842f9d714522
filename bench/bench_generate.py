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
speed. "Memory bandwidth" is the streaming read bandwidth (:func:`memory_bandwidth`): the best of 7 timed
``t.sum()`` calls on a 1 GiB float32 tensor, with the torch thread count the decoding processes use (each is given
the parent's). A sum reads every byte once, in order: the rate the memory system streams at. A matrix-vector
product, which is what a decode step does, reaches less (the figure this bench printed before, ≈ 21 GB/s on the
project's 2-core test machine, against ≈ 48 GB/s for the sum): the bound is the machine's, the shortfall the decode's.
Our batch-1 decode rate (new tokens after the first ÷ decode seconds) is printed as a fraction of that bound; the
aim is :data:`BANDWIDTH_AIM` (30 %) on the CPU.

The device mode (:func:`run_device`, ``gemma4 bench generate --device cuda``) measures random E2B-sized and
31B-sized text decoders (the presets' text configs, full vocabulary) in bfloat16 on one GPU, with no checkpoint on
disk (31B in bf16 is ~61 GB). A probe process first reads the device's free memory and measures its streaming
read bandwidth the same way (1 GiB float32 sum, best of 7, the device synchronised before and after each call).
Each batch size is planned against that free memory (:func:`plan_device_batches`: weights + KV cache + a margin
for the prefill's activations); one that does not fit is a skip line with the figures, not an out-of-memory
failure. Each engine builds its model in a fresh process straight on the device and fills every tensor from a
generator seeded by (seed, the tensor's checkpoint name less its text prefix) (:func:`fill_random`), so both
engines hold the same weights by construction. Per batch size, after a warm-up, the best of ``repeat``: prefill =
one forward of the B × P prompt to the first token (B·P ÷ seconds); decode = a whole greedy ``generate`` of N
tokens less that prefill (B·(N−1) ÷ seconds); peak = ``torch.cuda.max_memory_allocated`` over both (the process's
peak RSS on the CPU). The device is synchronised before every clock read. Per size, our batch-1 decode rate is
then set against the weight-read bound (device streaming bandwidth ÷ bf16 weight bytes per token), aim
:data:`CUDA_BANDWIDTH_AIM` (40 %) on CUDA. The same code runs on the CPU with the tiny presets (``--device cpu
--size tiny-e2b``), which is how the tests run it.

Every process the bench starts runs under a timeout (``timeout``); one that times out or fails is printed as
such with the other rows, and :class:`MeasurementError` is raised once everything else is printed.
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
from typing import TYPE_CHECKING, NamedTuple

from .benchmarking import Row, alternate, format_row, reference

if TYPE_CHECKING:
    import torch

__all__ = [
    "BatchFit",
    "MeasurementError",
    "SIZES",
    "activation_bytes",
    "build_ours",
    "build_reference",
    "fill_random",
    "memory_bandwidth",
    "plan_device_batches",
    "run",
    "run_device",
    "weight_bytes_per_token",
]

TARGET = 5.0  # × the reference's new tokens per second, at batch 1 and 8
STEP_OPS_TARGET = 1500  # non-view operations per E2B-depth decode step, bf16, batch 8
BANDWIDTH_AIM = 0.30  # CPU: batch-1 decode rate as a fraction of the streaming-read bound (an aim, printed)
CUDA_BANDWIDTH_AIM = 0.40  # the device mode on CUDA: the same fraction of the weight-read bound
BANDWIDTH_BYTES = 1 << 30  # the streaming-read probe: a 1 GiB float32 tensor …
BANDWIDTH_REPEAT = 7  # … summed this many times, the best call counts
TIMEOUT_S = 900.0  # seconds one measuring process of the CPU mode may run (~10 × what it takes on 2 cores)
DEVICE_TIMEOUT_S = 1800.0  # seconds one process of the device mode may run (31B: build, then every batch size)

_CHILD = r"""
import json, resource, sys, time, torch
engine, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
rows, prompt, new, repeat, vocab, threads = (int(a) for a in sys.argv[4:10])
torch.set_num_threads(threads)  # the parent's count: the one its bandwidth probe ran with
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
    from runtime.generate import generate
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
_ROOT = Path(__file__).resolve().parents[1]


class MeasurementError(RuntimeError):
    """A measuring process failed or ran past its timeout (its error is printed with the rows)."""


def _python(args: Sequence[str], timeout: float, what: str, env: Mapping[str, str] | None = None) -> str:
    """Run ``python args…`` from the repository with a timeout; the last line it printed. :class:`MeasurementError`
    naming ``what`` if it times out (the process is killed) or exits with an error (the end of its stderr)."""
    path = os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, **(env or {}), PYTHONPATH=path)
    try:
        done = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, env=env, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"{what} timed out after {timeout:g} s (killed)") from None
    if done.returncode != 0:
        raise MeasurementError(f"{what} failed, exit code {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def _measure(
    engine: str, path: str, rows: int, prompt: int, new: int, repeat: int, vocab: int, threads: int, timeout: float
) -> dict:
    import torch

    out = os.path.join(path, f"tokens-{engine}.pt")
    args = [str(a) for a in (rows, prompt, new, repeat, vocab, threads)]
    line = _python(["-c", _CHILD, engine, path, out, *args], timeout, f"{engine} generate (batch {rows})")
    return dict(json.loads(line), tokens=torch.load(out))


def weight_bytes_per_token(config, element_size: int = 4) -> int:
    """Bytes of weights one decode step reads: every parameter once, except the per-layer-embedding table (only
    the token's row) and the input embedding lookup (one row; the table is read whole as the output projection)."""
    counts = config.num_parameters()
    total = counts["total"]
    ple_table = config.ple_vocab_size * config.n_layers * config.ple_dim if config.ple_dim else 0
    return (total - ple_table + config.n_layers * config.ple_dim) * element_size


def memory_bandwidth(
    size_bytes: int = BANDWIDTH_BYTES, repeat: int = BANDWIDTH_REPEAT, *, device: str | torch.device = "cpu"
) -> float:
    """Streaming read bandwidth of ``device``, bytes per second: ``t.sum()`` of a float32 tensor of
    ``size_bytes`` (1 GiB by default; tests pass less), the best of ``repeat`` timed calls after an untimed one.
    The device is synchronised before and after each timed call; on the CPU the sum runs on the caller's torch
    thread count (the decode's, where the bound is compared with a decode rate)."""
    import torch

    device = torch.device(device)
    tensor = torch.ones(size_bytes // 4, dtype=torch.float32, device=device)
    tensor.sum()  # untimed: the thread pool's or the kernel's first start
    best = math.inf
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        tensor.sum()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return tensor.numel() * 4 / best


def _bandwidth_text(bandwidth: float, size_bytes: int, device: str = "cpu", threads: int | None = None) -> str:
    """``streaming read 48.1 GB/s (1 GiB float32 sum, best of 7, 2 threads)``."""
    size = f"{size_bytes / 2**30:g} GiB" if size_bytes >= 2**30 else f"{size_bytes / 2**20:g} MiB"
    where = f", {threads} threads" if threads is not None else f" on {device}"
    return f"streaming read {bandwidth / 1e9:.1f} GB/s ({size} float32 sum, best of {BANDWIDTH_REPEAT}{where})"


def run(
    batches: Sequence[int] = (1, 8),
    *,
    prompt: int = 256,
    new_tokens: int = 64,
    repeat: int = 2,
    rounds: int = 2,
    emit: Callable[[str], None] = print,
    config=None,
    bandwidth_bytes: int = BANDWIDTH_BYTES,
    timeout: float = TIMEOUT_S,
) -> list[Row]:
    """The CPU mode (see the module docstring): one row per batch size, then the batch-1 bandwidth line.
    ``bandwidth_bytes``: the size of the streaming-read probe; ``timeout``: seconds each measuring process may
    run. A batch whose process fails or times out is printed as not measured, and :class:`MeasurementError` is
    raised once the other rows are printed."""
    import torch

    from model.checkpoint import save_text_decoder
    from model.decoder import TextDecoder
    from model.device import human_bytes

    from .bench_model import bench_config

    config = config or bench_config()
    oracle = reference("hf_decoder")
    threads = torch.get_num_threads()  # each measuring process is given this count, the probe runs on it
    rows: list[Row] = []
    failed: list[str] = []
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
            f"{prompt} tokens, {new_tokens} new tokens, greedy, {threads} threads, best of {repeat} "
            f"calls × {rounds} processes"
        )
        vocab = min(config.vocab_size, 15_000)
        ours_batch1 = None
        for batch in batches:
            try:
                ours, theirs = alternate(
                    lambda e, b=batch: _measure(e, tmp, b, prompt, new_tokens, repeat, vocab, threads, timeout),
                    oracle is not None,
                    rounds,
                )
            except MeasurementError as exc:
                failed.append(f"batch {batch}")
                emit(f"{f'batch {batch}':<11} not measured: {exc}")
                continue
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
            bandwidth = memory_bandwidth(bandwidth_bytes)
            weights = weight_bytes_per_token(config)
            bound_row = Row(
                "batch 1",
                "decode vs bandwidth bound",
                bandwidth / weights,
                decode_rate,
                BANDWIDTH_AIM,
                unit="tok/s",
                baseline_label="bound",
                note=f"{_bandwidth_text(bandwidth, bandwidth_bytes, threads=threads)}, {human_bytes(weights)} of "
                "float32 weights read per token",
            )
            rows.append(bound_row)
            emit(format_row(bound_row))
    ops_row = step_ops_row(oracle)
    rows.append(ops_row)
    emit(format_row(ops_row))
    if failed:
        raise MeasurementError(f"these measurements failed (their errors are above): {', '.join(failed)}")
    return rows


def step_ops_row(oracle, preset: str = "gemma4-e2b", rows: int = 8) -> Row:
    """Operations one decode step dispatches on CUDA (host time on a GPU, where eager decode is launch-bound), ours
    beside the reference's, at the published depth of ``preset`` in bf16 with ``rows`` rows
    (:func:`bench.dispatch_count.decode_step_ops`). Target: at most :data:`STEP_OPS_TARGET` and fewer than the
    reference's."""
    import torch

    from model.config import preset as get_preset

    from .dispatch_count import decode_step_ops

    ours, theirs = decode_step_ops(get_preset(preset).text, rows=rows, dtype=torch.bfloat16, reference=oracle)
    return Row(
        f"batch {rows}",
        f"operations per {preset.removeprefix('gemma4-').upper()}-depth decode step",
        theirs,
        ours,
        1.0,
        unit="ops",
        lower_is_better=True,
        extra_ok=ours <= STEP_OPS_TARGET,
        note=f"bf16, counted as CUDA dispatches them; target ≤ {STEP_OPS_TARGET:,} (3,405 before issue 21)",
    )


# --- the device mode --------------------------------------------------------------------------------------------

SIZES = {"e2b": "gemma4-e2b", "31b": "gemma4-31b", "tiny-e2b": "tiny-e2b", "tiny-31b": "tiny-31b"}  # → presets
LABELS = {"e2b": "E2B", "31b": "31B"}
INIT_STD = 0.02  # matrices and embeddings: N(0, 0.02²), the reference's initializer_range
SCALE_STD = 0.05  # norm scales and layer scalars: N(1, 0.05²), near the identity but not exactly it
FIRST_CONTROL_ID = 255_999  # prompts draw ids below the first multimodal control id (<|image>, spec §1.6)
ACTIVATION_SLACK = 1 << 30  # bytes beside the prefill's tensors: cuBLAS workspaces, allocator rounding


class BatchFit(NamedTuple):
    """Whether one batch size fits the device (:func:`plan_device_batches`), and the bytes it needs."""

    batch: int
    fits: bool
    need_bytes: int  # weights + KV cache + activations
    weight_bytes: int
    cache_bytes: int
    activation_bytes: int


def activation_bytes(config, batch: int, prompt: int, element_size: int = 2) -> int:
    """A margin for the largest working set of a measurement, the prefill of ``batch`` × ``prompt`` tokens in
    one forward (a decode step holds far less): per token, four residual-width vectors, the MLP's gate, up and
    product at the widest layer, the queries, K and V repeated to every head and the attention output at the
    widest head dim, and every layer's per-layer input, all in ``element_size`` bytes; one float32 score block
    (B, N, P, P), as SDPA's math kernel holds; float32 logits of one position; and :data:`ACTIVATION_SLACK`."""
    head_dim = max(config.layer_head_dim(i) for i in range(config.n_layers))
    d_ff = max(config.layer_d_ff(i) for i in range(config.n_layers))
    moe = config.top_k_experts * config.moe_d_ff  # the routed experts' hidden units per token
    per_token = 4 * config.d_model + 3 * max(d_ff, moe) + 4 * config.n_heads * head_dim
    per_token += config.n_layers * config.ple_dim
    scores = batch * config.n_heads * prompt * prompt * 4
    logits = batch * config.vocab_size * 4
    return batch * prompt * per_token * element_size + scores + logits + ACTIVATION_SLACK


def plan_device_batches(
    config, batches: Sequence[int], prompt: int, new_tokens: int, free_bytes: int | None, dtype=None
) -> list[BatchFit]:
    """Which batch sizes of the device mode fit ``free_bytes`` of device memory (None: unknown, every one is
    tried): the text decoder's weights (parameter count × the dtype's size, bfloat16 by default), the KV cache
    of ``batch`` rows of ``prompt + new_tokens`` tokens (``model.cache.cache_bytes``, what our ``generate``
    allocates) and :func:`activation_bytes`. Pure arithmetic on the config; each engine runs alone in its
    process, so one batch needs these bytes once."""
    import torch

    from model.cache import cache_bytes

    dtype = dtype or torch.bfloat16
    size = torch.empty((), dtype=dtype).element_size()
    weights = config.num_parameters()["total"] * size
    plan = []
    for batch in batches:
        cache = cache_bytes(config, batch, prompt + new_tokens, dtype)
        activations = activation_bytes(config, batch, prompt, size)
        need = weights + cache + activations
        plan.append(BatchFit(batch, free_bytes is None or need <= free_bytes, need, weights, cache, activations))
    return plan


def _skip_line(group: str, fit: BatchFit, free_bytes: int, device: str) -> str:
    return (
        f"{group:<11} skipped, does not fit: needs {fit.need_bytes / 1e9:.1f} GB (weights "
        f"{fit.weight_bytes / 1e9:.1f} GB + KV cache {fit.cache_bytes / 1e9:.1f} GB + activations "
        f"{fit.activation_bytes / 1e9:.1f} GB), {free_bytes / 1e9:.1f} GB free on {device}"
    )


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


def _calls(engine: str, model, ids, new_tokens: int, cuda_graphs: bool = True):
    """(prefill() → first tokens (B,), generate(n) → new tokens (B, n)) of one engine for prompt ids (B, P)."""
    import torch

    rows, prompt = ids.shape
    if engine == "ours":
        from data_specs.batch import Batch
        from runtime.generate import generate

        batch = Batch.from_ids(ids.cpu()).to(ids.device)

        def prefill():
            cache = model.new_cache(rows, prompt + new_tokens)  # what generate allocates for its prefill
            return model(batch, logits_to_keep=1, cache=cache)[:, -1].argmax(dim=-1)

        def run(n: int):
            results = generate(model, batch, max_new_tokens=n, stop_ids=(), cuda_graphs=cuda_graphs)
            return torch.tensor([r.token_ids for r in results])

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


def _measure_batch(
    engine: str, model, ids, new_tokens: int, repeat: int, device, cuda_graphs: bool = True
) -> tuple[dict, dict]:
    """Timings (seconds, best of ``repeat`` after a warm-up) and peak bytes of one batch; and the tokens."""
    import torch

    prefill, run = _calls(engine, model, ids, new_tokens, cuda_graphs)

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
                    spec["engine"], model, ids, spec["new_tokens"], spec["repeat"], device, spec["cuda_graphs"]
                )
            except torch.OutOfMemoryError as exc:
                timings = {"error": "out of memory: " + str(exc).splitlines()[0]}
            report["batches"].append({"rows": rows, **timings})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    torch.save(tokens, spec["out"])
    print(json.dumps(report))


def _measure_device(engine: str, config, directory: str, spec: dict, timeout: float) -> dict:
    """Run :func:`_device_child` for one engine and size; its report with the tokens, or {"failed": message}
    (the process failed or ran past ``timeout`` seconds and was killed)."""
    import torch

    from model.checkpoint import text_to_hf

    out = os.path.join(directory, f"tokens-{engine}.pt")
    spec = dict(spec, engine=engine, text_config=text_to_hf(config), out=out)
    # The 31B at batch 32 holds ~61 GB of weights and ~28 GB of cache beside the prefill's activations: growable
    # segments keep the allocator's fragmentation from failing it (either engine; set here, the entry point).
    env = {"PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")}
    script = "import sys; from bench.bench_generate import _device_child; _device_child(sys.argv[1])"
    try:
        line = _python(["-c", script, json.dumps(spec)], timeout, f"the {engine} process", env)
    except MeasurementError as exc:
        return {"failed": str(exc)}
    report = json.loads(line)
    report["tokens"] = torch.load(out)
    return report


def _probe_child(device_name: str, size_bytes: int) -> None:
    """In a fresh process (a CUDA context is not left behind in the parent, where it would hold memory the
    measuring processes need): the device's name, its free memory (read before anything is allocated, after
    this process's own CUDA context, as a measuring process will find it) and its streaming read bandwidth
    (:func:`memory_bandwidth`), as one JSON line."""
    import torch

    from model.device import free_memory

    device = torch.device(device_name)
    free = free_memory(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    bandwidth = memory_bandwidth(size_bytes, device=device)
    print(json.dumps({"name": name, "free_bytes": free, "bandwidth": bandwidth}))


def _probe(device: str, size_bytes: int, timeout: float) -> dict:
    """:func:`_probe_child`'s report and the probe's size; :class:`MeasurementError` if it fails or times out."""
    script = "import sys; from bench.bench_generate import _probe_child; _probe_child(sys.argv[1], int(sys.argv[2]))"
    report = json.loads(_python(["-c", script, device, str(size_bytes)], timeout, f"the {device} probe"))
    return dict(report, size_bytes=size_bytes)


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
    bandwidth_bytes: int = BANDWIDTH_BYTES,
    timeout: float = DEVICE_TIMEOUT_S,
    cuda_graphs: bool = True,
) -> list[Row]:
    """The device mode: a probe of the device (free memory, streaming read bandwidth), then per size the batch
    sizes that fit (:func:`plan_device_batches`; the others are skip lines with the figures), ours and then the
    reference each in a fresh process (see the module docstring); three rows per size and measured batch
    (prefill tok/s, decode tok/s with the greedy agreement, peak memory), and per size the batch-1 decode rate
    against the weight-read bound. Our decode steps run as CUDA graphs unless ``cuda_graphs`` is False. Every
    process runs under ``timeout`` seconds; ``bandwidth_bytes`` sizes the
    bandwidth probe. Every process's start-up and model construction count in the wall time printed at the end.
    Raises ``ValueError`` for bad settings or an unusable device (before any process starts), and
    :class:`MeasurementError` once everything else is printed if a process failed or timed out."""
    import torch

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
    spec = {"device": device, "dtype": dtype, "prompt": prompt, "new_tokens": new_tokens, "repeat": repeat}
    spec["cuda_graphs"] = cuda_graphs
    spec |= {"seed": seed}
    emit(
        f"gemma4 bench generate --device {device}: random text decoders, {dtype}, prompt {prompt} random tokens, "
        f"{new_tokens} new tokens, greedy, no early stop; batch {', '.join(map(str, batches))}; each engine and size "
        f"in a fresh process that builds its model on the device; best of {repeat} after a warm-up"
    )
    emit(
        "prefill = B·P ÷ seconds of one prompt forward to the first token; decode = B·(N−1) ÷ (seconds of the whole "
        "generate − prefill); peak = " + ("max_memory_allocated" if device == "cuda" else "the process's peak RSS")
    )
    failed: list[str] = []
    try:
        probe = _probe(device, bandwidth_bytes, timeout)
        free = probe["free_bytes"]
        emit(
            f"device: {probe['name']}, "
            + (f"{free / 1e9:.1f} GB free" if free is not None else "free memory unknown")
            + f"; {_bandwidth_text(probe['bandwidth'], bandwidth_bytes, device)}"
        )
    except MeasurementError as exc:  # every batch is then tried, and no bound line printed
        probe, free = None, None
        failed.append("the device probe")
        emit(f"device probe: {exc}")
    aim = CUDA_BANDWIDTH_AIM if device == "cuda" else BANDWIDTH_AIM
    element_size = torch.empty((), dtype=DTYPES[dtype]).element_size()
    rows: list[Row] = []
    for size in sizes:
        config, label = PRESETS[SIZES[size]].text, LABELS.get(size, size)
        plan = plan_device_batches(config, batches, prompt, new_tokens, free, DTYPES[dtype])
        fitting = [fit.batch for fit in plan if fit.fits]
        count = config.num_parameters()["total"]
        size_text = f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.2f} M"
        results = {}
        if fitting:
            with tempfile.TemporaryDirectory(prefix="gemma4-bench-generate-") as tmp:
                for engine in engines:
                    result = _measure_device(engine, config, tmp, dict(spec, batches=fitting), timeout)
                    if "failed" in result:
                        failed.append(f"{label} {engine}")
                        emit(f"{label}: {engine} failed, {result['failed']}")
                    else:
                        results[engine] = result
            built = ", ".join(f"{e} {r['built_s']:.1f} s" for e, r in results.items())
            emit(f"{label}: {size_text} parameters; built on {device} in {built or 'no process'}")
        else:
            emit(f"{label}: {size_text} parameters; no batch size fits, nothing built")
        for fit in plan:
            group = f"{label} b{fit.batch}"
            if not fit.fits:
                emit(_skip_line(group, fit, free, device))
            elif "ours" in results:
                rows += _device_rows(group, fit.batch, results["ours"], results.get("reference"), spec, emit)
        if probe is not None and "ours" in results:
            rows += _bound_row(f"{label} b1", config, results["ours"], probe, element_size, aim, spec, emit)
    emit(f"wall time {time.perf_counter() - started:.0f} s (process start-up, model construction, measurements)")
    if failed:
        raise MeasurementError(f"these measurements failed (their errors are above): {', '.join(failed)}")
    return rows


def _bound_row(group: str, config, ours: dict, probe: dict, element_size: int, aim: float, spec, emit) -> list[Row]:
    """Our batch-1 decode rate against the weight-read bound (device streaming bandwidth ÷ weight bytes per token
    in the measured dtype), emitted; none where batch 1 was not measured."""
    from model.device import human_bytes

    mine = next((b for b in ours["batches"] if b["rows"] == 1 and "error" not in b), None)
    if mine is None:
        return []
    weights = weight_bytes_per_token(config, element_size)
    row = Row(
        group,
        "decode vs bandwidth bound",
        probe["bandwidth"] / weights,
        (spec["new_tokens"] - 1) / mine["decode_s"],
        aim,
        unit="tok/s",
        baseline_label="bound",
        note=f"{_bandwidth_text(probe['bandwidth'], probe['size_bytes'], spec['device'])}, "
        f"{human_bytes(weights)} of {spec['dtype']} weights read per token",
    )
    emit(format_row(row))
    return [row]


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
