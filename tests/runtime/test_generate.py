"""Generation: greedy tokens equal the argmax of full forwards and the reference's generate; a batch equals each
row alone; seeded sampling does not depend on batch company; stop ids; streaming."""

from __future__ import annotations

import pytest
import torch

from data_specs.batch import Batch
from model.checkpoint import load_pretrained
from model.gemma4 import Gemma4
from runtime.generate import generate, stream
from runtime.sampler import Sampling, sample
from tests.model.helpers import PROMPTS, left_padded, ours_batch, reference_inputs, text_model, tiny_config

TINY = ["tiny-e2b", "tiny-31b", "tiny-moe"]


def greedy_by_full_forwards(model: Gemma4, row: list[int], steps: int) -> list[int]:
    ids = list(row)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(Batch.from_ids(torch.tensor([ids])))[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(row) :]


@pytest.mark.parametrize("name", TINY)
def test_greedy_tokens_equal_full_forwards_and_rows_alone(name):
    model = text_model(name)
    steps = 2 * model.config.text.sliding_window + 3  # past the window
    results = generate(model, left_padded(PROMPTS), max_new_tokens=steps, stop_ids=())
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert result.token_ids == greedy_by_full_forwards(model, prompt, steps), name
        assert result.finish_reason == "length" and result.prompt_tokens == len(prompt)
        alone = generate(model, left_padded([prompt]), max_new_tokens=steps, stop_ids=())[0]
        assert alone.token_ids == result.token_ids


def test_stop_ids_end_a_row_and_the_rest_go_on():
    model = text_model("tiny-e2b")
    free = generate(model, left_padded(PROMPTS), max_new_tokens=12, stop_ids=())
    stop = free[0].token_ids[3]  # row 0's fourth token
    results = generate(model, left_padded(PROMPTS), max_new_tokens=12, stop_ids=[stop])
    first = free[0].token_ids.index(stop)
    assert results[0].token_ids == free[0].token_ids[: first + 1] and results[0].finish_reason == "stop"
    for free_row, row in zip(free[1:], results[1:], strict=True):
        cut = free_row.token_ids.index(stop) + 1 if stop in free_row.token_ids else len(free_row.token_ids)
        assert row.token_ids == free_row.token_ids[:cut]
    assert model.config.tokens.stop_ids == (1, 106, 50)  # the spec's, unless a checkpoint says otherwise


def test_seeded_sampling_does_not_depend_on_batch_company():
    model = text_model("tiny-31b")
    request = Sampling(temperature=4.0, top_k=200, top_p=0.99, seed=1234)
    others = [Sampling(temperature=1.3, seed=7), Sampling(), Sampling(temperature=0.5, top_p=0.5, seed=99)]
    alone = generate(model, left_padded([PROMPTS[0]]), max_new_tokens=20, stop_ids=(), sampling=[request])[0]
    for slot in range(3):  # the request in every row of a batch of strangers
        company = others[:slot] + [request] + others[slot:2]
        prompts = [PROMPTS[(slot + k) % 3] for k in range(3)]
        prompts[slot] = PROMPTS[0]
        results = generate(model, left_padded(prompts), max_new_tokens=20, stop_ids=(), sampling=company)
        assert results[slot].token_ids == alone.token_ids
    greedy = generate(model, left_padded([PROMPTS[0]]), max_new_tokens=20, stop_ids=())[0]
    assert alone.token_ids != greedy.token_ids  # it did sample
    again = generate(model, left_padded([PROMPTS[0]]), max_new_tokens=20, stop_ids=(), sampling=[request])[0]
    assert again.token_ids == alone.token_ids


def test_sampling_respects_top_k_and_top_p():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]] * 4)
    seen = set()
    for step in range(200):
        tokens = sample(
            logits,
            torch.tensor([1.0, 1.0, 0.0, 50.0]),
            torch.tensor([2, 0, 0, 1]),
            torch.tensor([1.0, 0.7, 1.0, 1.0]),
            torch.tensor([1, 2, 3, 4]),
            step,
        )
        assert tokens[0] in (0, 1) and tokens[1] == 0 and tokens[2] == 0 and tokens[3] == 0
        seen.add(int(tokens[0]))
    assert seen == {0, 1}


def test_stream_yields_tokens_as_generate_returns_them():
    model = text_model("tiny-e2b")
    batch = left_padded(PROMPTS)
    full = generate(model, batch, max_new_tokens=10, stop_ids=())
    steps = list(stream(model, batch, max_new_tokens=10, stop_ids=()))
    assert len(steps) == 10
    for row, result in enumerate(full):
        assert [step[row] for step in steps] == result.token_ids
    stop = full[1].token_ids[2]
    first = full[1].token_ids.index(stop)
    stopped = list(stream(model, batch, max_new_tokens=10, stop_ids=[stop]))
    after = [step[1] for step in stopped[first + 1 :]]
    assert stopped[first][1] == stop and after and all(token is None for token in after)


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"max_new_tokens": 4, "temperature": -1.0}])
def test_bad_arguments_are_named(bad):
    model = text_model("tiny-e2b")
    with pytest.raises(ValueError, match="max_new_tokens|temperature"):
        generate(model, left_padded(PROMPTS), **bad)


@pytest.mark.parametrize(
    "batch, bad, match",
    [
        (Batch.from_ids(torch.zeros(1, 0, dtype=torch.long)), {}, r"at least one prompt token .* shape \(1, 0\)"),
        (Batch.from_ids(torch.zeros(0, 3, dtype=torch.long)), {}, r"shape \(0, 3\)"),
        (left_padded([[5, 6], [7, 8]]), {"stop_ids": [14.7]}, r"stop_ids must be .* got \[14.7\]"),
        (left_padded([[5, 6]]), {"stop_ids": [3, 512]}, "stop_ids holds the token id 512, outside the vocabulary"),
        (left_padded([[5, 6]]), {"stop_ids": [-1]}, r"stop_ids .* got \[-1\]"),
        (left_padded([[5, 6]]), {"temperature": True}, "temperature must be .* got True"),
        (left_padded([[5, 6]]), {"temperature": 1e39}, r"temperature must be .*float32's largest\), got 1e\+39"),
        (left_padded([[5, 6]]), {"temperature": 1.0, "top_k": 2**63}, r"top_k must be .* 2\*\*31"),
        (left_padded([[5, 600]]), {}, "request 0: prompt holds the token id 600"),
        (left_padded([[5, 6]]), {"max_new_tokens": 2**20 + 1}, r"max_new_tokens must be at most 1048576 .* 1048577"),
    ],
)
def test_misuse_is_refused_by_name(batch, bad, match):
    model = text_model("tiny-e2b")
    with pytest.raises(ValueError, match=match):
        generate(model, batch, **{"max_new_tokens": 2, **bad})


def test_an_all_padding_row_is_named():
    model = text_model("tiny-e2b")
    batch = Batch.from_ids(torch.tensor([[5, 6, 7], [0, 0, 0]]), torch.tensor([[1, 1, 1], [0, 0, 0]]).bool())
    with pytest.raises(ValueError, match="row 1 of the batch has no real tokens"):
        generate(model, batch, max_new_tokens=2)
    with pytest.raises(ValueError, match="row 1 of the batch has no real tokens"):
        list(stream(model, batch, max_new_tokens=2))


@pytest.mark.parametrize("name, with_audio", [("tiny-e2b", True), ("tiny-31b", False)])
def test_greedy_equals_the_reference_generate_on_a_multimodal_prompt(name, with_audio, tok, tmp_path, reference_model):
    config = tiny_config(name, tok)
    reference = reference_model(config, tmp_path)
    ours = load_pretrained(tmp_path)
    host = ours_batch(tok, with_audio)
    steps = 12
    with torch.no_grad():
        expected = reference.generate(
            **reference_inputs(host), max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0
        )[:, host.input_ids.shape[1] :]
    got = generate(ours, host, max_new_tokens=steps, stop_ids=())
    assert [g.token_ids for g in got] == expected.tolist()
