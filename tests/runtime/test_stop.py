"""Stop strings (OpenAI's and vLLM's ``stop``): a request ends on the step whose token completes one, its company is
unaffected, and the text is cut before the stop string."""

from __future__ import annotations

import pytest

from data_specs.manifest import ManifestError, check_stop
from runtime.engine import Engine, Request
from runtime.generate import generate
from runtime.request import FinishReason
from runtime.stop import StopStrings, cut_at_stop
from tests.model.helpers import left_padded, text_model

PIECES = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "\n", 6: "!"}


def fake_decode(ids) -> str:
    """Pieces that only form a character together, as byte-fallback tokens do: 10 then 11 is "é"."""
    text, pending = "", False
    for token in ids:
        if token == 10:
            pending = True
        elif token == 11 and pending:
            text, pending = text + "é", False
        else:
            text += PIECES.get(token, f"<{token}>")
    return text + ("\ufffd" if pending else "")


def feed(watch: StopStrings, tokens) -> int | None:
    """The position of the token on which ``watch`` reports a stop, else None."""
    for position, token in enumerate(tokens):
        if watch.feed(token):
            return position
    return None


def test_a_stop_string_across_tokens_is_found_on_the_token_that_completes_it():
    watch = StopStrings(["lo w"], fake_decode)
    assert feed(watch, [1, 2, 3, 4]) == 2
    assert watch.matched == "lo w"
    assert watch.cut(fake_decode([1, 2, 3])) == "Hel"


def test_the_earliest_stop_string_in_the_text_is_the_one_reported():
    watch = StopStrings(["world", "wor"], fake_decode)
    assert feed(watch, [1, 2, 3, 4]) == 2
    assert watch.matched == "wor"


def test_a_character_split_over_two_tokens_waits_for_the_second():
    watch = StopStrings(["é!"], fake_decode)
    assert feed(watch, [1, 10, 11, 6]) == 3
    assert StopStrings(["\ufffd"], fake_decode).feed(10) is False  # half a character is not text yet


def test_no_stop_string_no_stop_and_cut_keeps_everything():
    watch = StopStrings(["xyz"], fake_decode)
    assert feed(watch, [1, 2, 3, 4, 5, 6]) is None and watch.matched is None
    assert cut_at_stop("Hello", ["xyz"]) == "Hello"
    assert cut_at_stop("a\n\nb\n\nc", ["\n\n", "b"]) == "a"


@pytest.mark.parametrize(
    "value, match",
    [
        ("", None),
        ([""], "item 0 is empty"),
        ([1], "item 0 must be a string"),
        ({"a": 1}, "a string or a list of strings"),
        (["x"] * 65, "at most 64"),
        (["y" * 1001], "at most 1000"),
    ],
)
def test_bad_stop_values_are_refused_by_name(value, match):
    if match is None:  # one empty string: a single empty stop string would end every reply at once
        with pytest.raises(ManifestError, match="is empty"):
            check_stop(value, "row 3")
        return
    with pytest.raises(ManifestError, match=f"row 3: .*{match}"):
        check_stop(value, "row 3")


def test_stop_strings_are_deduplicated_in_order():
    assert check_stop(["b", "a", "b"], "w") == ("b", "a")
    assert check_stop(None, "w") == () and check_stop("x", "w") == ("x",)


def _text(ids) -> str:
    return "".join(f"<{i}>" for i in ids)


def test_the_engine_ends_a_request_on_its_stop_string_and_leaves_the_others_alone():
    model = text_model("tiny-e2b")
    prompts = [[5, 17, 99, 3, 41, 7, 8], [12, 13], [300, 2, 77, 91, 4]]
    free = [c.token_ids for c in generate(model, left_padded(prompts), max_new_tokens=12, stop_ids=())]
    tokens = free[0]
    stop_at = next(k for k in range(1, len(tokens)) if _text(tokens[k - 1 : k + 1]) not in _text(tokens[:k]))
    stop = _text(tokens[stop_at - 1 : stop_at + 1])  # spans two tokens' text
    engine = Engine(model, slots=2, context=32)
    for i, prompt in enumerate(prompts):
        watch = StopStrings([stop], _text) if i == 0 else None
        engine.submit(Request(prompt=prompt, max_new_tokens=12, stop_ids=(), id=i, stop_strings=watch))
    done = {c.id: c for c in engine.run()}
    assert done[0].token_ids == tokens[: stop_at + 1]
    assert done[0].finish_reason == FinishReason.STOP and done[0].stop_string == stop
    for i in (1, 2):
        assert done[i].token_ids == free[i] and done[i].stop_string is None
        assert done[i].finish_reason == FinishReason.LENGTH
    assert engine._watched == 0


def test_stop_strings_must_be_a_watcher():
    with pytest.raises(TypeError, match="runtime.stop.StopStrings"):
        Request(prompt=[1, 2], max_new_tokens=2, stop_strings=["x"])
