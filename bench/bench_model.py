"""``gemma4 bench model``: prefill throughput of our text decoder against the reference, side by side.

One small random model (about 100 M parameters; PLE and KV sharing, sliding window 512, float32) is saved once
as a checkpoint; each measurement then runs in a fresh process that loads it (the reference through
``Gemma4ForCausalLM.from_pretrained``, ours through ``load_text_decoder``) and times a batch-1 forward pass of
T tokens: best of ``repeat`` after a warm-up. The engines alternate over ``rounds`` processes each and the
best process counts, since one process's speed on a shared machine varies by several percent.

A prefill (the target lines) needs the logits of the last position only, as generation does; both engines are
asked for just those (the reference's ``logits_to_keep=1``). The full forward with logits at every position
is printed too, without a target. Peak memory is the process's maximum resident set size, so it includes the
weights and the framework.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace

from .benchmarking import Row, alternate, format_row, reference

__all__ = ["run", "bench_config"]

TARGET_2048 = 1.3
TARGET_512 = 1.0
TOLERANCE = 1e-3  # float32 logits of the same weights; the engines differ only in rounding (kernels, op order)


def bench_config():
    from model.config import FULL, SLIDING, preset

    layers = 12
    types = tuple(FULL if (i + 1) % 4 == 0 else SLIDING for i in range(layers))
    return replace(
        preset("tiny-e2b").text,
        vocab_size=16_000,
        ple_vocab_size=16_000,
        d_model=768,
        n_layers=layers,
        n_heads=4,
        n_kv_heads=1,
        head_dim=256,
        global_head_dim=512,
        d_ff=1536,
        layer_types=types,
        sliding_window=512,
        n_kv_shared_layers=4,
        ple_dim=64,
    )


_CHILD = r"""
import json, resource, sys, time, torch
engine, path = sys.argv[1], sys.argv[2]
tokens, repeat, keep, vocab = (int(a) for a in sys.argv[3:7])
out = sys.argv[7]
torch.manual_seed(0)
if engine == "reference":
    import oracles
    model = oracles.load("hf_decoder").load(path)
    forward = lambda ids: model(input_ids=ids, logits_to_keep=keep).logits
else:
    from model.checkpoint import load_text_decoder
    model = load_text_decoder(path)
    forward = lambda ids: model(ids, logits_to_keep=keep)
ids = torch.randint(10, vocab, (1, tokens))
with torch.no_grad():
    forward(ids)
    best = min((lambda s: (forward(ids), time.perf_counter() - s)[1])(time.perf_counter()) for _ in range(repeat))
    torch.save(forward(ids)[0, -1].clone(), out)  # the last position's logits: the engines must agree
print(json.dumps({"tokens_per_s": tokens / best, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _measure(engine: str, path: str, tokens: int, repeat: int, keep: int, vocab: int) -> dict:
    """One fresh process: best tokens/s, peak memory, and the last position's logits (a tensor)."""
    import torch

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    out = os.path.join(path, f"logits-{engine}.pt")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, engine, path, str(tokens), str(repeat), str(keep), str(vocab), out],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{engine} at {tokens} tokens failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), last_logits=torch.load(out))


def run(
    lengths: Sequence[int] = (512, 2048),
    *,
    repeat: int = 3,
    all_logits: bool = True,
    emit: Callable[[str], None] = print,
    config=None,
    rounds: int = 2,
) -> list[Row]:
    import torch

    from model.checkpoint import save_text_decoder
    from model.decoder import TextDecoder

    config = config or bench_config()
    oracle = reference("hf_decoder")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gemma4-bench-model-") as tmp:
        torch.manual_seed(0)
        save_text_decoder(TextDecoder(config), tmp)
        count = config.num_parameters()["total"]
        emit(
            f"gemma4 bench model: {count / 1e6:.0f} M parameters ({config.n_layers} layers, d_model {config.d_model}, "
            f"PLE {config.ple_dim}, {config.n_kv_shared_layers} KV-shared layers, window {config.sliding_window}), "
            f"float32, batch 1, {torch.get_num_threads()} threads, best of {repeat} passes × {rounds} processes"
        )
        cases = [(t, 1, "prefill (last logits)") for t in lengths]
        if all_logits:
            cases += [(t, 0, "forward, all logits") for t in lengths]
        for tokens, keep, case in cases:
            vocab = min(config.vocab_size, 15_000)
            ours, theirs = alternate(
                lambda e, t=tokens, k=keep, v=vocab: _measure(e, tmp, t, repeat, k, v), oracle is not None, rounds
            )
            target = (TARGET_2048 if tokens >= 2048 else TARGET_512) if keep else None
            note = f"peak memory: ours {ours['peak_mb']:.0f} MB" + (
                f", reference {theirs['peak_mb']:.0f} MB" if theirs else ""
            )
            agree = True
            if theirs:
                error = float((ours["last_logits"] - theirs["last_logits"]).abs().max())
                agree = error <= TOLERANCE
                note += f"; last logits max |Δ| {error:.1e} (bound {TOLERANCE:.0e})"
            row = Row(
                f"{tokens} tokens",
                case,
                theirs["tokens_per_s"] if theirs else None,
                ours["tokens_per_s"],
                target,
                unit="tok/s",
                note=note,
                extra_ok=agree,
            )
            rows.append(row)
            emit(format_row(row))
    return rows
