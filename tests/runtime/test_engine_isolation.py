"""Per-request isolation in the engine: a bad request (refused at submission, failed at admission, non-finite
logits) ends alone, as an ``ERROR`` completion saying why, and every other request gets exactly the tokens
``generate`` gives it alone. Sampling values: one validation point, shared by ``Sampling`` and the manifest, and
a value that passes never fails in the engine."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from data_specs.checks import MAX_SEED, MAX_TEMPERATURE, MAX_TOP_K
from data_specs.manifest import ManifestError, read_options
from runtime.engine import Engine, Request
from runtime.generate import generate
from runtime.request import FinishReason
from runtime.sampler import Sampling
from tests.model.helpers import left_padded, text_model

VOCAB = 512  # the tiny presets'
WARM = Sampling(temperature=1.3, seed=7)
HOT = Sampling(temperature=4.0, top_k=200, top_p=0.99, seed=1234)
PROMPTS = [[5, 17, 99, 3, 41, 7, 8], [12, 13], [300, 2, 77, 91, 4], [8], [40, 41, 42, 43, 44, 45, 46, 47, 48]]


def alone(model, request: Request) -> list[int]:
    """The tokens ``generate`` gives ``request`` (a list-of-ids prompt) alone."""
    return generate(
        model,
        left_padded([list(request.prompt)]),
        max_new_tokens=request.max_new_tokens,
        stop_ids=request.stop_ids,
        sampling=[request.sampling],
    )[0].token_ids


def overflowing(sampling: Sampling, **values) -> Sampling:
    """``sampling`` with values its checks refuse, set past them (as an old pickle or a bug elsewhere would)."""
    for name, value in values.items():
        object.__setattr__(sampling, name, value)
    return sampling


def good_requests() -> list[Request]:
    settings = [Sampling(), HOT, WARM, Sampling(), HOT, WARM]
    limits = [6, 3, 9, 4, 7, 5]
    return [
        Request(prompt=PROMPTS[k % len(PROMPTS)], max_new_tokens=limit, sampling=sampling, stop_ids=(), id=f"good{k}")
        for k, (sampling, limit) in enumerate(zip(settings, limits, strict=True))
    ]


def bad_requests() -> dict[str, tuple[object, str]]:
    """Requests the engine cannot serve, by id, each with what its error must say."""
    return {
        "id beyond vocab": (Request(prompt=[5, VOCAB, 7], max_new_tokens=3, id="id beyond vocab"), f"token id {VOCAB}"),
        "negative id": (Request(prompt=[5, -1], max_new_tokens=3, id="negative id"), "token id -1"),
        "huge id": (Request(prompt=[2**64], max_new_tokens=3, id="huge id"), "outside the vocabulary"),
        "stop beyond vocab": (
            Request(prompt=[5, 6], max_new_tokens=3, stop_ids=[1, VOCAB + 3], id="stop beyond vocab"),
            "stop_ids holds the token id 515",
        ),
        "too long": (Request(prompt=list(range(1, 30)), max_new_tokens=8, id="too long"), "context of 32"),
        "overflowing temperature": (
            Request(
                prompt=[5, 6],
                max_new_tokens=3,
                sampling=overflowing(Sampling(temperature=1.0), temperature=1e39),
                id="overflowing temperature",
            ),
            "at admission",
        ),
        "overflowing top_k": (
            Request(
                prompt=[7, 8, 9],
                max_new_tokens=3,
                sampling=overflowing(Sampling(temperature=1.0, top_k=5), top_k=2**63),
                id="overflowing top_k",
            ),
            "at admission",
        ),
    }


def test_a_stream_with_bad_requests_interleaved_completes_every_good_one():
    model = text_model("tiny-e2b")
    good, bad = good_requests(), bad_requests()
    expected = {r.id: alone(model, r) for r in good}
    wrong = [request for request, _ in bad.values()]
    stream = [r for pair in itertools.zip_longest(good, wrong) for r in pair if r is not None]
    stream[3:3] = ["not a request", None]  # None: "none ready yet"
    stream.append({"prompt": [1, 2]})
    engine = Engine(model, slots=2, context=32)
    results = list(engine.run(stream))
    done = {c.id: c for c in results if c.finish_reason != FinishReason.ERROR}
    errors = [c for c in results if c.finish_reason == FinishReason.ERROR]
    assert {key: c.token_ids for key, c in done.items()} == expected
    assert all(c.error is None and c.finish_reason == "length" for c in done.values())
    assert len(errors) == len(bad) + 2  # one per bad request, and one per thing that is not a request
    by_id = {c.id: c for c in errors if c.id is not None}
    assert sorted(by_id) == sorted(bad)
    for key, (_, message) in bad.items():
        assert message in by_id[key].error, (key, by_id[key].error)
        assert by_id[key].token_ids == [] and by_id[key].finish_reason == "error"
    strangers = [c for c in errors if c.id is None]
    assert all("TypeError" in c.error and "runtime.engine.Request" in c.error for c in strangers)
    assert engine.idle


def test_submit_still_raises_for_a_bad_request_and_the_engine_goes_on():
    model = text_model("tiny-e2b")
    engine = Engine(model, slots=2, context=32)
    good = good_requests()[:3]
    engine.submit(good[0])
    for request, message in bad_requests().values():
        if message == "at admission":
            continue  # nothing to refuse at submit: it fails when admitted
        with pytest.raises(ValueError, match=message):
            engine.submit(request)
    with pytest.raises(TypeError, match="runtime.engine.Request"):
        engine.submit("not a request")
    engine.submit(good[1])
    results = {c.id: c.token_ids for c in engine.run(good[2:])}
    assert results == {r.id: alone(model, r) for r in good}


def test_a_request_that_fails_at_admission_ends_alone_while_others_decode():
    model = text_model("tiny-31b")
    good = good_requests()
    bad = Request(
        prompt=PROMPTS[0],
        max_new_tokens=4,
        sampling=overflowing(Sampling(temperature=1.0), temperature=1e39),
        id="bad",
    )
    engine = Engine(model, slots=2, context=32)
    results = list(engine.run([good[2], bad, *good[3:]]))  # admitted while good2 decodes
    (error,) = [c for c in results if c.id == "bad"]
    assert error.finish_reason == "error" and error.token_ids == [] and error.slot in (0, 1)
    assert error.error.startswith("at admission: RuntimeError") and "overflow" in error.error
    assert {c.id: c.token_ids for c in results if c.id != "bad"} == {r.id: alone(model, r) for r in good[2:]}


def test_a_request_whose_admission_fails_alone_in_its_step_frees_its_slot():
    model = text_model("tiny-e2b")
    bad = Request(prompt=[5, 6], max_new_tokens=3, sampling=overflowing(Sampling(), seed=2**64), id="bad")
    later = Request(prompt=PROMPTS[0], max_new_tokens=4, stop_ids=(), id="later")
    engine = Engine(model, slots=1, context=16)
    engine.submit(bad)
    (failed,) = engine.step()  # the step ran nothing else: no model step
    assert failed.id == "bad" and failed.finish_reason == "error" and engine.steps == 0 and engine.idle
    assert [c.token_ids for c in engine.run([later])] == [alone(model, later)]


def test_one_result_per_request_id():
    model = text_model("tiny-e2b")
    engine = Engine(model, slots=1, context=32)
    first = Request(prompt=PROMPTS[0], max_new_tokens=3, stop_ids=(), id="a")
    engine.submit(first)
    with pytest.raises(ValueError, match="request 'a' is waiting or running already"):
        engine.submit(first)
    with pytest.raises(ValueError, match="request 'a' is waiting or running already"):
        engine.submit(Request(prompt=PROMPTS[1], max_new_tokens=2, id="a"))
    anonymous = Request(prompt=PROMPTS[1], max_new_tokens=2, stop_ids=())
    engine.submit(anonymous)
    engine.submit(Request(prompt=PROMPTS[1], max_new_tokens=2, stop_ids=()))  # another request without an id
    with pytest.raises(ValueError, match="request None is waiting or running already"):
        engine.submit(anonymous)  # the same request twice
    assert [(c.id, c.finish_reason) for c in engine.run()] == [("a", "length"), (None, "length"), (None, "length")]
    engine.submit(first)  # finished: its id may come again
    assert [c.token_ids for c in engine.run()] == [alone(model, first)]


def test_a_duplicate_pulled_by_run_is_an_error_completion_and_the_live_request_is_served():
    model = text_model("tiny-e2b")
    engine = Engine(model, slots=2, context=32)
    first = Request(prompt=PROMPTS[0], max_new_tokens=4, stop_ids=(), id="a")
    other = Request(prompt=PROMPTS[1], max_new_tokens=2, stop_ids=(), id="b")
    engine.submit(first)
    results = list(engine.run([Request(prompt=PROMPTS[3], max_new_tokens=2, id="a"), other]))
    assert [(c.id, c.finish_reason) for c in results] == [("a", "error"), ("b", "length"), ("a", "length")]
    assert "request 'a' is waiting or running already" in results[0].error
    assert results[2].token_ids == alone(model, first) and results[1].token_ids == alone(model, other)


def poison_token(model, token: int) -> None:
    """NaN in the per-layer-embedding row of ``token`` (an input table only, unlike the tied embeddings, whose NaN
    row would reach every row's logits): every prompt holding ``token`` gets NaN hidden states, no other does."""
    with torch.no_grad():
        model.language_model.embed_tokens_per_layer.weight[token] = math.nan


def test_non_finite_logits_end_that_request_with_an_error_and_the_others_go_on():
    model = text_model("tiny-e2b")
    poison_token(model, 300)  # PROMPTS[2] holds it
    poisoned = Request(prompt=[*PROMPTS[2], *PROMPTS[4]], max_new_tokens=5, sampling=WARM, stop_ids=(), id="nan")
    assert generate(model, left_padded([list(poisoned.prompt)]), max_new_tokens=3)[0].finish_reason == "error"
    good = [r for r in good_requests() if 300 not in r.prompt]
    expected = {r.id: alone(model, r) for r in good}
    engine = Engine(model, slots=2, context=32)
    results = list(engine.run([poisoned, *good]))  # later requests take the poisoned request's slot
    (error,) = [c for c in results if c.id == "nan"]
    assert error.finish_reason == FinishReason.ERROR and error.token_ids == []
    assert "logits were not finite" in error.error and "new token 1 of request 'nan'" in error.error
    assert {c.id: c.token_ids for c in results if c.id != "nan"} == expected
    assert {c.slot for c in results if c.id != "nan"} == {0, 1}


def test_a_nan_in_a_decode_step_ends_that_request_and_not_its_company(monkeypatch):
    model = text_model("tiny-31b")
    target = Request(prompt=PROMPTS[0], max_new_tokens=8, sampling=HOT, stop_ids=(), id="target")
    others = [r for r in good_requests() if r.id != "good0"]
    expected = {r.id: alone(model, r) for r in others}
    decode, calls = model.language_model.decode, []

    def nan_in_slot_0_on_the_third_decode(*args, **kwargs):
        logits = decode(*args, **kwargs)  # (R, 1, V)
        calls.append(len(calls))
        if len(calls) == 3:
            logits[0, -1, 5] = math.nan  # one logit of the target's row (slot 0)
        return logits

    monkeypatch.setattr(model.language_model, "decode", nan_in_slot_0_on_the_third_decode)
    engine = Engine(model, slots=2, context=32, cuda_graphs=False)
    for request in [target, *others]:
        engine.submit(request)
    results = []
    while not engine.idle:
        drawn: dict = {}
        finished = engine.step(drawn)  # the tokens read with the codes, as stream does
        if any(c.id == "target" for c in finished):
            assert "target" not in drawn  # the NaN step's draw is not handed out
        results += finished
    (error,) = [c for c in results if c.id == "target"]
    assert error.finish_reason == "error" and error.token_ids == []
    assert re.search(r"not finite .* new token \d of request 'target'", error.error), error.error
    assert {c.id: c.token_ids for c in results if c.id != "target"} == expected


# --- sampling values: one rule per value, at every boundary ----------------------------------------------------

REFUSED = [
    ("temperature", True),
    ("temperature", -0.5),
    ("temperature", math.inf),
    ("temperature", math.nan),
    ("temperature", 1e39),
    ("temperature", math.nextafter(MAX_TEMPERATURE, math.inf)),
    ("temperature", 10**400),
    ("temperature", [1]),
    ("top_k", 0),
    ("top_k", True),
    ("top_k", 1.5),
    ("top_k", MAX_TOP_K + 1),
    ("top_k", 2**63),
    ("top_p", 0),
    ("top_p", 1.5),
    ("top_p", True),
    ("top_p", math.nan),
    ("seed", -1),
    ("seed", 2**63),
    ("seed", True),
    ("seed", 2.5),
]
ACCEPTED = [
    ("temperature", 0),
    ("temperature", 0.7),
    ("temperature", MAX_TEMPERATURE),
    ("top_k", 1),
    ("top_k", MAX_TOP_K),
    ("top_p", 1e-30),
    ("top_p", 1),
    ("seed", 0),
    ("seed", MAX_SEED),
]


@pytest.mark.parametrize("name, value", REFUSED)
def test_sampling_refuses_what_the_engine_cannot_hold_naming_it(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be .*, got {re.escape(repr(value))}$"):
        Sampling(**{name: value})
    with pytest.raises(ManifestError, match=name):  # a manifest row or OpenAI body: the same rule
        read_options({name: value}, "row 0")


@pytest.mark.parametrize("name, value", ACCEPTED)
def test_a_value_every_boundary_accepts_runs_in_the_engine(name, value):
    settings = {"temperature": 1.0, name: value}  # the sampling path, unless temperature itself is tested
    assert getattr(read_options({name: value}, "row 0"), name) == value
    model = text_model("tiny-e2b")
    request = Request(prompt=PROMPTS[0], max_new_tokens=3, sampling=Sampling(**settings), stop_ids=(), id="x")
    (done,) = Engine(model, slots=1, context=16).run([request])
    assert done.finish_reason == "length" and len(done.token_ids) == 3 and done.error is None


def test_a_top_k_above_the_vocabulary_keeps_every_token():
    model = text_model("tiny-e2b")
    tokens = {}
    for top_k in (None, VOCAB, VOCAB + 1, MAX_TOP_K):
        request = Request(prompt=PROMPTS[0], max_new_tokens=6, sampling=Sampling(temperature=2.0, top_k=top_k, seed=3))
        tokens[top_k] = alone(model, request)
    assert len(set(map(tuple, tokens.values()))) == 1, tokens


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ({"stop_ids": [14.7]}, ValueError, "stop_ids must be a sequence of token ids"),
        ({"stop_ids": [True]}, ValueError, "stop_ids"),
        ({"stop_ids": [-2]}, ValueError, "stop_ids"),
        ({"stop_ids": "ab"}, ValueError, "stop_ids"),
        ({"id": ["unhashable"]}, TypeError, "hashable"),
    ],
)
def test_bad_request_fields_are_named(bad, error, match):
    with pytest.raises(error, match=match):
        Request(prompt=[1, 2], max_new_tokens=2, **bad)
