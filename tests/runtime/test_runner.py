"""The runner and its CUDA graphs, on the CPU: the captured step is the eager step (same function, lazily captured
once per shape key, replayed after), a failed capture falls back to eager decode with one warning, an engine step
reads back one small vector, and the sampler's fast paths give the full sampler's tokens."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from bench.dispatch_count import HostReadCounter
from runtime.engine import Engine, Request
from runtime.graphs import DecodeGraphs
from runtime.runner import NONFINITE, RUNNING, bucket
from runtime.sampler import Sampling, sample
from tests.model.helpers import text_model


def test_buckets():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9, 16, 17, 40)] == [1, 2, 4, 8, 8, 16, 16, 32, 48]


def test_the_graphs_capture_the_eager_step_lazily_once_per_key(monkeypatch):
    model = text_model("tiny-e2b")
    engine = Engine(model, slots=4, context=48, cuda_graphs=True)
    runner = engine.runner
    assert runner.graphs.step == runner._decode  # what a capture records is the eager step itself
    assert not runner.graphs.enabled  # no CUDA here: the same step runs eagerly
    captured = []

    class Replay:  # a stand-in graph: replaying runs what was captured
        def __init__(self, args):
            self.args = args

        def replay(self):
            runner.graphs.step(*self.args)

    def capture(self, args):
        captured.append(args)
        return Replay(args)

    monkeypatch.setattr(DecodeGraphs, "_capture", capture)
    runner.graphs.enabled = True
    for i, n in enumerate((3, 5, 4)):
        engine.submit(Request(prompt=list(range(10, 10 + n)), max_new_tokens=6, stop_ids=(), id=i))
    graphed = {c.id: c.token_ids for c in engine.run()}
    keys = list(runner.graphs.graphs)
    assert len(keys) == len(set(keys)) == len(captured) and captured  # one capture per key, replays after
    eager = Engine(model, slots=4, context=48, cuda_graphs=False)
    for i, n in enumerate((3, 5, 4)):
        eager.submit(Request(prompt=list(range(10, 10 + n)), max_new_tokens=6, stop_ids=(), id=i))
    assert {c.id: c.token_ids for c in eager.run()} == graphed


def test_a_failed_capture_decodes_eagerly_with_one_warning(monkeypatch, caplog):
    model = text_model("tiny-31b")
    engine = Engine(model, slots=2, context=32)

    def fail(self, args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(DecodeGraphs, "_capture", fail)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    engine.runner.graphs.enabled = True
    with caplog.at_level(logging.WARNING, logger="runtime.graphs"):
        tokens = [c.token_ids for c in engine.run([Request(prompt=[5, 6, 7], max_new_tokens=5, stop_ids=())])]
    assert len(tokens[0]) == 5 and not engine.runner.graphs.enabled
    assert sum("capture failed" in r.message for r in caplog.records) == 1


def test_an_engine_step_reads_back_one_small_vector():
    model = text_model("tiny-moe")
    engine = Engine(model, slots=3, context=40, prefill_chunk=4)
    for i, n in enumerate((9, 3, 6)):
        engine.submit(Request(prompt=list(range(20, 20 + n)), max_new_tokens=8, stop_ids=(), id=i))
    reads = []
    with torch.no_grad():
        while not engine.idle:
            with HostReadCounter() as counter:
                done = engine.step()
            reads.append((len(done), counter.reads))
    for finished, step_reads in reads:  # the flags; a finishing step also reads its requests' tokens, once each
        assert step_reads == ["Tensor.tolist"] * (1 + finished), step_reads
    assert any(finished == 0 for finished, _ in reads)


def test_a_step_codes_non_finite_logits_in_its_one_read(monkeypatch):
    """The decode step (the function a CUDA graph captures) flags a row whose logits hold a NaN; the flag rides in
    the step's one read, and that request alone ends with an error."""
    model = text_model("tiny-e2b")
    free = Request(prompt=[7, 8, 9], max_new_tokens=6, stop_ids=(), id="free")
    (expected,) = Engine(model, slots=1, context=40).run([free])
    decode = model.language_model.decode

    def nan_in_row_1(*args, **kwargs):
        logits = decode(*args, **kwargs)  # (R, 1, V)
        if len(logits) > 1:  # slot 1 still runs
            logits[1, -1, 0] = math.nan
        return logits

    monkeypatch.setattr(model.language_model, "decode", nan_in_row_1)
    engine = Engine(model, slots=2, context=40)
    engine.submit(free)
    engine.submit(Request(prompt=[7, 8], max_new_tokens=6, stop_ids=(), id="nan"))
    codes, step = [], engine.runner.step

    def recording(plan):
        finished, slots = step(plan)
        codes.append(finished.clone())
        return finished, slots

    monkeypatch.setattr(engine.runner, "step", recording)
    reads, results = [], {}
    with torch.no_grad():
        while not engine.idle:
            with HostReadCounter() as counter:
                done = engine.step()
            reads.append((sum(c.error is None for c in done), counter.reads))
            results.update((c.id, c) for c in done)
    assert codes[0].tolist() == [RUNNING, RUNNING]  # the prompts (extend, not decode): nothing poisoned
    assert codes[1].dtype == torch.int64 and codes[1].tolist() == [RUNNING, NONFINITE]
    assert results["nan"].finish_reason == "error" and results["free"].token_ids == expected.token_ids
    for answered, step_reads in reads:  # the codes; an answered request's tokens once (none for an error)
        assert step_reads == ["Tensor.tolist"] * (1 + answered), step_reads


def test_top_k_candidates_give_the_full_sort_tokens():
    torch.manual_seed(0)
    logits = torch.randn(4, 300)
    settings = (torch.tensor([0.7, 1.0, 2.0, 0.0]), torch.tensor([5, 40, 1, 0]), torch.tensor([0.9, 1.0, 1.0, 1.0]))
    seeds = torch.tensor([1, 2, 3, 4])
    for step in range(30):
        full = sample(logits, *settings, seeds, step)
        assert torch.equal(sample(logits, *settings, seeds, step, candidates=40), full)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_the_greedy_fast_path_and_the_sampler_agree_with_generate(temperature):
    from runtime.generate import generate

    model = text_model("tiny-e2b")
    engine = Engine(model, slots=2, context=40)
    sampling = Sampling(temperature=temperature, top_k=16 if temperature else None, seed=3)
    assert engine.runner.sampler.kind([0]) == 0  # nothing admitted: argmax
    ids = [7, 8, 9, 10]
    got = [c.token_ids for c in engine.run([Request(prompt=ids, max_new_tokens=6, sampling=sampling, stop_ids=())])]
    from data_specs.batch import Batch

    alone = generate(model, Batch.from_ids(torch.tensor([ids])), max_new_tokens=6, sampling=[sampling], stop_ids=())
    assert got[0] == alone[0].token_ids
    assert engine.runner.sampler.kind([0]) == (16 if temperature else 0)
