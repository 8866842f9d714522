"""The runtime on CUDA: decode steps captured as CUDA graphs give the eager steps' tokens, and an engine step reads
back only its finished flags (and, when requests finish, their tokens).

Shapes: S slots, R rows of a step.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from runtime.engine import Engine, Request
from runtime.sampler import Sampling

PRESETS = ["tiny-e2b", "tiny-31b", "tiny-moe"]


def requests(vocab: int) -> list[Request]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for i, n in enumerate((5, 19, 3, 40, 11)):
        prompt = torch.randint(3, vocab, (n,), generator=generator).tolist()
        sampling = Sampling(temperature=0.8, top_k=20, seed=i) if i % 2 else Sampling()
        out.append(Request(prompt=prompt, max_new_tokens=24, sampling=sampling, stop_ids=(), id=i))
    return out


@pytest.mark.parametrize("name", PRESETS)
def test_cuda_graphs_give_the_eager_tokens(name, tiny_text_model):
    model = tiny_text_model(name)
    runs = {}
    for graphs in (True, False):
        engine = Engine(model, slots=3, context=96, prefill_chunk=16, cuda_graphs=graphs)
        runs[graphs] = {c.id: c.token_ids for c in engine.run(requests(model.config.text.vocab_size))}
        if graphs:
            assert engine.runner.graphs.enabled, "a capture failed: the engine fell back to eager decode"
            assert engine.runner.graphs.graphs, "no decode step was captured"
    same = sum(a == b for i in runs[True] for a, b in zip(runs[True][i], runs[False][i], strict=True))
    total = sum(len(tokens) for tokens in runs[True].values())
    # A replay runs the kernels the eager step launches, on the same shapes: the same tokens (an agreement share,
    # not equality, as GPU.md §2 asks of GPU comparisons).
    assert same / total >= 0.98, (same, total)


@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("name", PRESETS)
def test_an_engine_step_syncs_once(name, graphs, tiny_text_model):
    model = tiny_text_model(name)
    engine = Engine(model, slots=3, context=96, prefill_chunk=16, cuda_graphs=graphs)
    for request in requests(model.config.text.vocab_size):
        engine.submit(request)
    engine.step()  # the first step (first-call work: cuBLAS handles, lazy kernel loading) is not what is checked
    counts = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        while not engine.idle:
            captured = len(engine.runner.graphs.graphs)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                done = engine.step()
            syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
            if len(engine.runner.graphs.graphs) == captured:  # a capture synchronises (torch.cuda.graph): not a step's
                counts.append((len(done), len(syncs)))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # the finished flags; a step that finishes requests also reads their tokens, once each
    assert len(counts) > 10 and all(syncs == 1 + finished for finished, syncs in counts), counts
