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
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

from .benchmarking import Row, alternate, format_row, reference

__all__ = ["run", "weight_bytes_per_token", "memory_bandwidth"]

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
