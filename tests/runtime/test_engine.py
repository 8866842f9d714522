"""Continuous batching: every request gets exactly the tokens ``generate`` gives it alone, whatever its company,
slot or admission time; slots are refilled as soon as they free up; requests beyond the context are refused (bad
requests in a stream: tests/runtime/test_engine_isolation.py)."""

from __future__ import annotations

import pytest
import torch

from model.gemma4 import Gemma4
from preprocess.collate import collate
from preprocess.prompt import build_example
from runtime.engine import Completion, Engine, Request
from runtime.generate import generate
from runtime.sampler import Sampling, sample
from tests.model.helpers import left_padded, messages, text_model, tiny_config

GREEDY = Sampling()
HOT = Sampling(temperature=4.0, top_k=200, top_p=0.99, seed=1234)
WARM = Sampling(temperature=1.3, seed=7)
NARROW = Sampling(temperature=0.5, top_p=0.5, seed=99)

PROMPTS = [[5, 17, 99, 3, 41, 7, 8], [12, 13], [300, 2, 77, 91, 4], [8], [40, 41, 42, 43, 44, 45, 46, 47, 48]]


def alone(model, request: Request) -> list[int]:
    stop = request.stop_ids
    return generate(
        model,
        left_padded([list(request.prompt)]),
        max_new_tokens=request.max_new_tokens,
        stop_ids=stop,
        sampling=[request.sampling],
    )[0].token_ids


def mixed_requests(model) -> list[Request]:
    """Nine requests: lengths, limits and sampling all differ; some stop early on a token they would draw."""
    settings = [GREEDY, HOT, WARM, NARROW, GREEDY, WARM, HOT, GREEDY, NARROW]
    limits = [12, 3, 20, 7, 1, 15, 9, 25, 5]
    requests = []
    for i, (sampling, limit) in enumerate(zip(settings, limits, strict=True)):
        request = Request(prompt=PROMPTS[i % len(PROMPTS)], max_new_tokens=limit, sampling=sampling, stop_ids=(), id=i)
        if i in (0, 5, 7):  # stop on the token it draws fourth (or its last, if shorter)
            free = alone(model, request)
            request = Request(
                prompt=request.prompt, max_new_tokens=limit, sampling=sampling, stop_ids=[free[min(3, limit - 1)]], id=i
            )
        requests.append(request)
    return requests


@pytest.mark.parametrize("name", ["tiny-e2b", "tiny-31b", "tiny-moe"])
def test_each_request_gets_what_generate_gives_it_alone(name):
    model = text_model(name)
    requests = mixed_requests(model)
    engine = Engine(model, slots=3, context=40)
    for request in requests:
        engine.submit(request)
    results = {c.id: c for c in engine.run()}
    assert sorted(results) == list(range(len(requests)))
    stopped = 0
    for request in requests:
        got = results[request.id]
        expected = alone(model, request)
        assert got.token_ids == expected, (name, request.id)
        assert got.prompt_tokens == len(request.prompt)
        stop = bool(request.stop_ids) and expected[-1] in request.stop_ids
        stopped += stop
        assert got.finish_reason == ("stop" if stop else "length")
        assert got.queue_s >= 0 and got.prefill_s >= 0 and got.decode_s >= 0
    assert stopped >= 2  # some did stop early


def test_a_seeded_request_is_the_same_in_every_slot_and_admission_order():
    model = text_model("tiny-31b")
    target = Request(prompt=PROMPTS[0], max_new_tokens=10, sampling=HOT, stop_ids=(), id="target")
    expected = alone(model, target)
    assert expected != alone(model, Request(prompt=PROMPTS[0], max_new_tokens=10, stop_ids=()))  # it samples
    others = [
        Request(prompt=PROMPTS[k % 5], max_new_tokens=2 + 3 * k, sampling=[WARM, NARROW, GREEDY][k % 3], stop_ids=())
        for k in range(5)
    ]
    slots_seen = set()
    for position in range(len(others) + 1):  # admitted first, later (into a freed slot), last
        engine = Engine(model, slots=3, context=32)
        for request in others[:position] + [target] + others[position:]:
            engine.submit(request)
        (got,) = [c for c in engine.run() if c.id == "target"]
        assert got.token_ids == expected, position
        slots_seen.add(got.slot)
    assert slots_seen == {0, 1, 2}


def test_requests_pulled_lazily_and_submitted_while_running():
    model = text_model("tiny-e2b")
    requests = [Request(prompt=PROMPTS[k % 5], max_new_tokens=4 + k, stop_ids=(), id=k) for k in range(6)]
    pulled = []

    def source():
        for request in requests[:4]:
            pulled.append(request.id)
            yield request

    engine = Engine(model, slots=2, context=24)
    results = []
    for completion in engine.run(source()):
        assert len(pulled) - len(results) <= 2  # never more pulled than slots can hold
        if not results:
            engine.submit(requests[4])
            engine.submit(requests[5])
        results.append(completion)
    assert sorted(c.id for c in results) == list(range(6))
    for c in results:
        assert c.token_ids == alone(model, requests[c.id])


def test_slots_stay_busy():
    """Steps follow the total work divided among the slots, not the slowest request times the rounds."""
    model = text_model("tiny-e2b")
    limits = [20, 2] * 4
    engine = Engine(model, slots=2, context=32)
    for k, limit in enumerate(limits):
        engine.submit(Request(prompt=PROMPTS[k % 5], max_new_tokens=limit, stop_ids=(), id=k))
    results = list(engine.run())
    assert [len(c.token_ids) for c in sorted(results, key=lambda c: c.id)] == limits
    work = sum(limit - 1 for limit in limits)  # the first token of each comes from its prefill
    static = (len(limits) // 2) * (max(limits) - 1)  # fixed batches of two wait for their slowest row
    # a step runs both slots: a decode each, or a newcomer's prefill beside the other's decode (its first token
    # comes from the prefill); only when both slots free at once does a step run prefills alone
    assert engine.steps <= work // 2 + len(limits) // 2
    assert engine.steps < static
    assert results[0].id == 1  # a short request comes back as soon as it finishes, not with its batch


def test_empty_runs_finish():
    model = text_model("tiny-e2b")
    engine = Engine(model, slots=2, context=16)
    assert list(engine.run()) == [] and list(engine.run([])) == [] and engine.steps == 0


def test_a_request_beyond_the_context_is_refused_by_both_numbers():
    model = text_model("tiny-e2b")
    engine = Engine(model, slots=2, context=16)
    request = Request(prompt=PROMPTS[0], max_new_tokens=10, id="long")
    with pytest.raises(ValueError, match=r"7 prompt tokens \+ max_new_tokens 10 = 17 .* context of 16"):
        engine.submit(request)
    with pytest.raises(ValueError, match="context of 16"):
        engine.check(request)
    (refused,) = engine.run([request])  # pulled by run: an error completion, not an exception
    assert refused.id == "long" and refused.finish_reason == "error" and refused.token_ids == []
    assert "context of 16" in refused.error and refused.slot == -1 and refused.prompt_tokens == 0
    engine.check(Request(prompt=PROMPTS[0], max_new_tokens=9))  # exactly the context fits


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"prompt": [], "max_new_tokens": 2}, "prompt"),
        ({"prompt": [1, 2], "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": left_padded([[1, 2], [3]]), "max_new_tokens": 2}, "one row"),
    ],
)
def test_bad_requests_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        Request(**bad)


def test_bad_engine_arguments_are_named():
    model = text_model("tiny-e2b")
    with pytest.raises(ValueError, match="slots"):
        Engine(model, slots=0, context=16)
    with pytest.raises(ValueError, match="context"):
        Engine(model, slots=1, context=0)


def test_per_row_steps_equal_one_step_at_a_time():
    """The engine passes ``sample`` a (B,) tensor of steps: each row must draw as it would with its own int."""
    torch.manual_seed(3)
    logits = torch.randn(4, 50)
    settings = (torch.tensor([1.0, 2.0, 0.7, 0.0]), torch.tensor([0, 5, 0, 0]), torch.tensor([1.0, 1.0, 0.8, 1.0]))
    seeds = torch.tensor([1, 2, 3, 2**40 + 5])
    steps = torch.tensor([0, 7, 3, 11])
    together = sample(logits, *settings, seeds, steps)
    for row in range(4):
        one = sample(
            logits[row : row + 1], *(s[row : row + 1] for s in settings), seeds[row : row + 1], int(steps[row])
        )
        assert together[row] == one[0]


def test_a_prefill_through_a_rows_view_fills_only_those_rows():
    model = text_model("tiny-31b")
    big = model.new_cache(3, 20)
    for t in (*big.keys.values(), *big.values.values()):
        t.fill_(7.0)
    big.lengths.fill_(5)
    small = model.new_cache(2, 20)
    for t in (*small.keys.values(), *small.values.values()):
        t.fill_(7.0)  # slots the prompts do not reach keep what they held, in both
    batch = left_padded([PROMPTS[2], PROMPTS[0]])
    with torch.no_grad():
        model(batch, logits_to_keep=1, cache=big.rows(2))
        model(batch, logits_to_keep=1, cache=small)
    assert big.lengths.tolist() == [len(PROMPTS[2]), len(PROMPTS[0]), 5]
    for store, pair in ((big.keys, small.keys), (big.values, small.values)):
        for layer, t in store.items():
            torch.testing.assert_close(t[:2], pair[layer], rtol=0, atol=0)
            assert bool((t[2] == 7.0).all())


def test_a_multimodal_request_equals_generate_alone(tok):
    config = tiny_config("tiny-e2b", tok)
    torch.manual_seed(4)
    model = Gemma4(config).eval()
    image = collate([build_example(messages(False), tok)], pad_id=tok.special.pad)
    text = [int(i) for i in collate([build_example([{"role": "user", "content": "Hi."}], tok)], pad_id=0).input_ids[0]]
    expected = generate(model, image, max_new_tokens=8, stop_ids=(), sampling=[WARM])[0].token_ids
    engine = Engine(model, slots=2, context=image.input_ids.shape[1] + 8)
    engine.submit(Request(prompt=text, max_new_tokens=3, stop_ids=(), id="text"))
    engine.submit(Request(prompt=text, max_new_tokens=2, stop_ids=(), id="text2"))
    engine.submit(Request(prompt=image, max_new_tokens=8, sampling=WARM, stop_ids=(), id="image"))
    results: dict = {c.id: c for c in engine.run()}
    assert isinstance(results["image"], Completion) and results["image"].token_ids == expected
    assert results["image"].prompt_tokens == image.input_ids.shape[1]


def test_decode_spans_change_nothing_in_generate_and_the_engine(monkeypatch):
    from model.cache import KVCache

    model = text_model("tiny-31b")
    requests = mixed_requests(model)
    expected = {r.id: alone(model, r) for r in requests}
    monkeypatch.setattr(KVCache, "SPAN_STEP", 3)  # spans of a few slots, growing as the rows do
    engine = Engine(model, slots=2, context=64)
    assert {c.id: c.token_ids for c in engine.run(requests)} == expected
    assert {r.id: alone(model, r) for r in requests} == expected


def test_an_image_prompt_in_small_chunks_beside_decodes_on_a_bidirectional_preset(tok):
    """31B-style presets attend both ways inside an image: the scheduler never ends a chunk inside one, and a
    request prefilled a few tokens per step beside other rows' decodes gets generate's one-pass tokens."""
    from data_specs.media import Modality
    from runtime.runner import Runner

    config = tiny_config("tiny-31b", tok)
    torch.manual_seed(5)
    model = Gemma4(config).eval()
    image = collate([build_example(messages(False), tok)], pad_id=tok.special.pad)
    text = [int(i) for i in collate([build_example([{"role": "user", "content": "Hi."}], tok)], pad_id=0).input_ids[0]]
    expected = generate(model, image, max_new_tokens=6, stop_ids=(), sampling=[WARM], prefill_chunk=None)[0].token_ids
    types = image.mm_token_type_ids[0].tolist()
    vision = [t in (Modality.IMAGE, Modality.VIDEO) for t in types]
    inside = {e for e in range(1, len(types)) if vision[e - 1] and vision[e]}  # an edge here splits an image
    assert inside, "the prompt holds an image"
    edges = []
    step = Runner.step

    def recording(runner, plan):
        edges.extend(chunk.stop for chunk in plan.prefills if chunk.request.prompt_tokens == len(types))
        return step(runner, plan)

    engine = Engine(model, slots=2, context=image.input_ids.shape[1] + 8, prefill_chunk=3)
    engine.runner.step = recording.__get__(engine.runner)
    engine.submit(Request(prompt=text, max_new_tokens=40, stop_ids=(), id="text"))
    engine.submit(Request(prompt=image, max_new_tokens=6, sampling=WARM, stop_ids=(), id="image"))
    results = {c.id: c for c in engine.run()}
    assert results["image"].token_ids == expected
    assert len(edges) > 3 and not inside & set(edges), (sorted(inside), edges)


def test_queue_time_counts_from_when_a_request_was_ready():
    # a job prepares rows ahead and hands them over when a slot frees: their wait is queue time, not zero
    import time

    model = text_model("tiny-e2b")
    engine = Engine(model, slots=1, context=32)
    ready = time.perf_counter() - 5.0  # prepared five seconds ago
    late = Request(prompt=PROMPTS[0], max_new_tokens=2, stop_ids=(), id="late", ready_at=ready)
    now = Request(prompt=PROMPTS[1], max_new_tokens=2, stop_ids=(), id="now")
    results = {c.id: c for c in engine.run([late, now])}
    assert results["late"].queue_s >= 5.0 and results["now"].queue_s < 5.0
    assert all(c.prefill_s >= 0 and c.decode_s >= 0 for c in results.values())
