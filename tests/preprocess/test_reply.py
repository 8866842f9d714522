"""Replies split into thinking, answer and tool calls: complete, cut by the token limit, broken, round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preprocess.reply import TERMINATORS, Reply, ToolCall, parse_reply
from preprocess.tool_format import format_call

Q = '<|"|>'
WEATHER_CALL = f"<|tool_call>call:get_weather{{city:{Q}Paris{Q},days:3}}<tool_call|>"


def test_thought_then_answer():
    reply = parse_reply("<|channel>thought\nThe user greets me.\n<channel|>Hello! How can I help?<turn|>")
    assert reply == Reply(
        thinking="The user greets me.", content="Hello! How can I help?", terminator="<turn|>", tool_calls=()
    )
    assert reply.truncated is None and reply.problems == ()


def test_no_channel_empty_channel_and_no_terminator():
    plain = parse_reply("  Just an answer. ")
    assert plain.thinking is None and plain.content == "Just an answer." and plain.truncated is None
    assert plain.terminator is None  # no terminator: still complete
    empty = parse_reply("<|channel>thought\n<channel|>Answer<eos>")
    assert empty.thinking == "" and empty.content == "Answer" and empty.terminator == "<eos>"


def test_several_tool_calls_around_text():
    second = f"<|tool_call>call:get_time{{tz:{Q}Europe/Paris{Q}}}<tool_call|>"
    reply = parse_reply(f"<|channel>thought\nNeed data.<channel|>Checking. {WEATHER_CALL}{second}<|tool_response>")
    assert reply.thinking == "Need data."
    assert reply.content == "Checking."
    assert reply.tool_calls == (
        ToolCall("get_weather", {"city": "Paris", "days": 3}),
        ToolCall("get_time", {"tz": "Europe/Paris"}),
    )
    name, arguments = reply.tool_calls[0]  # unpacks as (name, arguments)
    assert name == "get_weather" and arguments["days"] == 3
    assert reply.terminator == "<|tool_response>" and reply.truncated is None


def test_arguments_of_every_kind():
    arguments = {
        "text": "a, b} c: d\nsecond {line} [x]",
        "count": -7,
        "ratio": 0.25,
        "big": 1e20,
        "flag": True,
        "off": False,
        "nothing": None,
        "where": {"lat": 48.85, "Tags": ["x", {"deep": [1, 2.5]}]},
        "list": [],
    }
    reply = parse_reply(format_call("do", arguments) + "<|tool_response>")
    assert reply.tool_calls == (ToolCall("do", arguments),)
    assert reply.content == "" and reply.problems == ()


def test_text_after_the_terminator_is_ignored():
    reply = parse_reply("Done.<turn|>\n<|turn>user\nmore<turn|>" + WEATHER_CALL)
    assert reply.content == "Done." and reply.tool_calls == () and reply.terminator == "<turn|>"


def test_reply_ending_with_tool_response_opener():
    reply = parse_reply(WEATHER_CALL + "<|tool_response>response:get_weather{temp:21}<tool_response|>")
    assert reply.tool_calls == (ToolCall("get_weather", {"city": "Paris", "days": 3}),)
    assert reply.terminator == "<|tool_response>" and reply.content == ""


def test_interleaved_thinking_between_calls():
    reply = parse_reply(f"<|channel>thought\nfirst<channel|>{WEATHER_CALL}<|channel>thought\nsecond<channel|>Ok")
    assert reply.thinking == "first\n\nsecond" and reply.content == "Ok" and len(reply.tool_calls) == 1


# --- cut by the token limit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "thinking"),
    [
        ("<|channel>thought\nLet me think about", "Let me think about"),
        ("<|channel>thou", ""),
        ("<|channel>", ""),
    ],
)
def test_cut_inside_the_thought(text, thinking):
    reply = parse_reply(text)
    assert reply.thinking == thinking and reply.content == "" and reply.tool_calls == ()
    assert reply.truncated == "cut inside the thought channel"


@pytest.mark.parametrize(
    ("tail", "where"),
    [
        ("<|tool_call>", "cut inside tool call 2"),
        ("<|tool_call>cal", "cut inside tool call 2"),
        ("<|tool_call>call:get_we", "cut inside tool call 2"),
        ("<|tool_call>call:get_weather{", "cut inside tool call 2 ('get_weather') inside its arguments"),
        ("<|tool_call>call:get_weather{ci", "cut inside tool call 2 ('get_weather') inside an argument name"),
        (
            f"<|tool_call>call:get_weather{{city:{Q}Par",
            "cut inside tool call 2 ('get_weather') inside a string argument",
        ),
        ("<|tool_call>call:get_weather{city:<|", "cut inside tool call 2 ('get_weather') inside a string argument"),
        ("<|tool_call>call:get_weather{days:3", "cut inside tool call 2 ('get_weather') inside its arguments"),
        ("<|tool_call>call:get_weather{days:tr", "cut inside tool call 2 ('get_weather') before an argument's value"),
        ("<|tool_call>call:get_weather{at:[1,2", "cut inside tool call 2 ('get_weather') inside a list argument"),
        ("<|tool_call>call:get_weather{at:{x:1", "cut inside tool call 2 ('get_weather') inside an object argument"),
        ("<|tool_call>call:get_weather{days:3}", "cut inside tool call 2 ('get_weather') after its arguments"),
        ("<|tool_call>call:get_weather{days:3}<tool_", "cut inside tool call 2 ('get_weather') after its arguments"),
    ],
)
def test_cut_inside_a_call_keeps_what_was_complete(tail, where):
    reply = parse_reply(f"<|channel>thought\nplan<channel|>Looking it up. {WEATHER_CALL} And{tail}")
    assert reply.thinking == "plan"
    assert reply.content == "Looking it up.  And"  # the answer before the cut call is kept
    assert reply.tool_calls == (ToolCall("get_weather", {"city": "Paris", "days": 3}),)
    assert reply.truncated is not None and reply.truncated.startswith(where)
    assert reply.problems == ()


# --- broken, not cut -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "broken",
    [
        "<|tool_call>get_weather{}<tool_call|>",  # no "call:"
        "<|tool_call>call:get_weather<tool_call|>",  # no braces
        "<|tool_call>call:{a:1}<tool_call|>",  # no name
        "<|tool_call>call:f{a:maybe}<tool_call|>",  # a bare word is not a value
        "<|tool_call>call:f{a:1}}<tool_call|>",  # junk before the end marker
        "<|tool_call>call:f{a:1,}<tool_call|>",
    ],
)
def test_broken_call_is_kept_as_text_with_a_problem(broken):
    reply = parse_reply(f"Before {broken} after {WEATHER_CALL}<turn|>")
    assert reply.content == f"Before {broken} after"
    assert reply.tool_calls == (ToolCall("get_weather", {"city": "Paris", "days": 3}),)
    assert reply.truncated is None
    assert len(reply.problems) == 1 and reply.problems[0].startswith("tool call 1 is malformed")


def test_broken_call_without_end_marker_stops_at_the_next_call():
    reply = parse_reply("<|tool_call>call:f{a:?" + WEATHER_CALL)
    assert reply.content == "<|tool_call>call:f{a:?"
    assert [c.name for c in reply.tool_calls] == ["get_weather"]
    assert len(reply.problems) == 1


def test_stray_closers_and_odd_channels_are_problems_not_errors():
    reply = parse_reply("A<channel|>B<tool_call|>C<|channel>notes\nx<channel|>")
    assert reply.content == "A<channel|>B<tool_call|>C" and reply.thinking == "notes\nx"
    assert len(reply.problems) == 3


def test_parse_reply_requires_text():
    with pytest.raises(TypeError, match="str"):
        parse_reply(b"bytes")


# --- round trip ----------------------------------------------------------------------------------------------

KEYS = st.text(min_size=1, max_size=12).filter(lambda k: k == k.strip() and not set(k) & set(":,{}[]<>"))
# A string holding a terminator cannot come out of generation (it would have stopped there).
STRINGS = st.text(max_size=20).filter(lambda s: Q not in s and not any(t in s for t in TERMINATORS))
SCALARS = st.one_of(STRINGS, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)
CALLS = st.lists(
    st.tuples(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,15}", fullmatch=True), st.dictionaries(KEYS, VALUES, max_size=5)
    ),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(calls=CALLS, thinking=st.booleans())
@pytest.mark.slow
def test_written_calls_read_back_equal(calls, thinking):
    head = "<|channel>thought\nhmm<channel|>" if thinking else ""
    reply = parse_reply(head + "Calling." + "".join(format_call(n, a) for n, a in calls) + "<|tool_response>")
    assert reply.tool_calls == tuple(ToolCall(n, a) for n, a in calls)
    assert reply.content == "Calling." and reply.truncated is None and reply.problems == ()
    assert reply.thinking == ("hmm" if thinking else None)


PIECES = st.sampled_from(
    [
        "<|channel>",
        "thought\n",
        "<channel|>",
        "<|tool_call>",
        "call:",
        "f",
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        Q,
        "1",
        "-2.5e3",
        "true",
        "None",
        "a",
        " ",
        "\n",
        "<tool_call|>",
        "<turn|>",
        "<|tool_response>",
        "<eos>",
        "<|",
        "x",
    ]
)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(PIECES, max_size=40))
def test_any_text_parses_without_raising(pieces):
    reply = parse_reply("".join(pieces))
    assert isinstance(reply.content, str) and all(isinstance(c, ToolCall) for c in reply.tool_calls)
