"""``gemma4 bench prefill``: what a long prompt's prefill into the KV cache costs in memory, chunked against one
pass and against the reference, side by side.

The model is the ~110 M-parameter text config of ``gemma4 bench model`` (PLE, KV sharing, window 512), random,
float32, saved once as a checkpoint. Each measurement runs in a fresh process that loads it and prefills one
random prompt of T tokens into a cache, keeping the last position's logits: ours through ``Gemma4.prefill`` in
chunks of ``runtime.engine.PREFILL_CHUNK`` tokens (what ``generate`` and the engine do) and in one pass
(``prefill_chunk=None``), the reference through a forward with ``use_cache=True`` and ``logits_to_keep=1``
(its ``generate``'s prefill). The figure is the growth of the process's peak resident memory over what it held
once the weights were loaded (the cache itself included), so the weights and the framework do not count. Speed
(prompt tokens per second) and the agreement of the last logits are printed beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

from .benchmarking import Row, format_row, reference

__all__ = ["run"]

TOLERANCE = 1e-3  # float32 logits of the same weights, chunked or not: they differ only in rounding

_CHILD = r"""
import json, resource, sys, time, torch
engine, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
tokens, vocab, chunk = (int(a) for a in sys.argv[4:7])
torch.manual_seed(0)
ids = torch.randint(10, vocab, (1, tokens))
if engine == "reference":
    import oracles
    model = oracles.load("hf_decoder").load(path)
    def prefill():
        return model(input_ids=ids, use_cache=True, logits_to_keep=1).logits[0, -1]
else:
    from data_specs.batch import Batch
    from model.checkpoint import load_pretrained
    model = load_pretrained(path)
    batch = Batch.from_ids(ids)
    def prefill():
        cache = model.new_cache(1, tokens)
        *_, logits = model.prefill(batch, cache, chunk=chunk or None)
        return logits[0, -1]
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    start = time.perf_counter()
    logits = prefill()
    elapsed = time.perf_counter() - start
torch.save(logits.clone(), out)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"tokens_per_s": tokens / elapsed, "growth_mb": (peak - loaded) / 1024}))
"""


def _measure(engine: str, path: str, tokens: int, vocab: int, chunk: int) -> dict:
    import torch

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    out = os.path.join(path, f"logits-{engine}-{chunk}.pt")
    args = [str(a) for a in (tokens, vocab, chunk)]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, engine, path, out, *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{engine} prefill of {tokens} tokens failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), logits=torch.load(out))


def run(
    lengths: Sequence[int] = (8192,),
    *,
    chunk: int | None = None,
    emit: Callable[[str], None] = print,
    config=None,
) -> list[Row]:
    import torch

    from model.checkpoint import save_text_decoder
    from model.decoder import TextDecoder
    from runtime.engine import PREFILL_CHUNK

    from .bench_model import bench_config

    config = config or bench_config()
    chunk = chunk or PREFILL_CHUNK
    oracle = reference("hf_decoder")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gemma4-bench-prefill-") as tmp:
        torch.manual_seed(0)
        save_text_decoder(TextDecoder(config), tmp)
        emit(
            f"gemma4 bench prefill: {config.num_parameters()['total'] / 1e6:.0f} M parameters, float32, batch 1, "
            f"{torch.get_num_threads()} threads; MB = peak resident memory over the loaded weights (cache included)"
        )
        vocab = min(config.vocab_size, 15_000)
        for tokens in lengths:
            chunked = _measure("ours", tmp, tokens, vocab, chunk)
            whole = _measure("ours", tmp, tokens, vocab, 0)
            theirs = _measure("reference", tmp, tokens, vocab, 0) if oracle is not None else None
            error = float((chunked["logits"] - whole["logits"]).abs().max())
            note = (
                f"ours in one pass {whole['growth_mb']:.0f} MB at {whole['tokens_per_s']:.0f} tok/s; chunked "
                f"{chunked['tokens_per_s']:.0f} tok/s"
                + (f", reference {theirs['tokens_per_s']:.0f} tok/s" if theirs else "")
                + f"; last logits chunked vs one pass max |Δ| {error:.1e}"
            )
            if theirs:
                note += f", vs reference {float((chunked['logits'] - theirs['logits']).abs().max()):.1e}"
            row = Row(
                f"{tokens} tokens",
                f"prefill in chunks of {chunk}",
                theirs["growth_mb"] if theirs else None,
                chunked["growth_mb"],
                None,
                unit="MB",
                note=note,
                lower_is_better=True,
                extra_ok=error <= TOLERANCE,
            )
            rows.append(row)
            emit(format_row(row))
    return rows
