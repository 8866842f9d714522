"""OpenAI batch files: per-row options (manifest and request), request lines validated, response and error lines
in the Batch API's output format, and a round trip through JSON."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest

from data_specs.manifest import MAX_SEED, ManifestError, RowOptions, read_options, read_row
from data_specs.openai_batch import (
    CHAT_COMPLETIONS_URL,
    error_line,
    is_openai_batch,
    read_request,
    response_line,
)

HELLO = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WHERE = "row 3 (id 'a')"


def request(custom_id: str = "q1", **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT_COMPLETIONS_URL, "body": {"messages": HELLO, **body}}


def result(custom_id: str = "q1", **fields) -> dict:
    """A result row of the job, as the infer job writes it."""
    row = {
        "id": custom_id,
        "row": 0,
        "text": "Hello!",
        "thinking": None,
        "tool_calls": [],
        "finish_reason": "stop",
        "completion_ids": [1, 2, 3],
        "completion_tokens": 3,
        "prompt_tokens": 10,
        "text_tokens": 10,
        "image_tokens": 0,
        "audio_tokens": 0,
        "video_tokens": 0,
        "problems": [],
        "raw_text": "Hello!<turn|>",
        "queue_s": 0.0,
        "prefill_s": 0.01,
        "decode_s": 0.02,
    }
    return {**row, **fields}


# --- read_options (manifest rows) -------------------------------------------------------------------------------


def test_a_row_without_options_keeps_the_jobs_settings():
    assert read_options({"id": "a", "messages": HELLO}, WHERE) == RowOptions()
    nulls = dict.fromkeys(["max_new_tokens", "max_tokens", "temperature", "top_k", "top_p", "seed"])
    assert read_options({"id": "a", "messages": HELLO, **nulls}, WHERE) == RowOptions()


def test_options_are_read_and_normalized():
    row = {"id": "a", "messages": HELLO, "max_new_tokens": 64, "temperature": 1, "top_k": 40, "top_p": 0.9, "seed": 0}
    options = read_options(row, WHERE)
    assert options == RowOptions(max_new_tokens=64, temperature=1.0, top_k=40, top_p=0.9, seed=0)
    assert isinstance(options.temperature, float)
    assert read_options({"top_p": 1, "seed": MAX_SEED}, WHERE) == RowOptions(top_p=1.0, seed=MAX_SEED)


def test_max_tokens_is_an_alias_of_max_new_tokens():
    assert read_options({"max_tokens": 32}, WHERE).max_new_tokens == 32
    assert read_options({"max_tokens": 32, "max_new_tokens": 32}, WHERE).max_new_tokens == 32
    assert read_options({"max_tokens": None, "max_new_tokens": 8}, WHERE).max_new_tokens == 8
    with pytest.raises(ManifestError, match=r"row 3 \(id 'a'\): 'max_new_tokens' \(8\) and its alias 'max_tokens' \(9"):
        read_options({"max_tokens": 9, "max_new_tokens": 8}, WHERE)


def test_csv_cells_and_float_columns_are_read():
    # CSV holds every column as text (an empty cell is missing); pandas writes an integer column with gaps as float
    cells = {"max_new_tokens": "64", "temperature": "0.7", "top_k": "", "top_p": " ", "seed": "null"}
    assert read_options(cells, WHERE) == RowOptions(max_new_tokens=64, temperature=0.7)
    floats = read_options({"max_new_tokens": 64.0, "top_k": 5.0, "seed": 7.0}, WHERE)
    assert floats == RowOptions(max_new_tokens=64, top_k=5, seed=7)
    assert all(isinstance(v, int) for v in (floats.max_new_tokens, floats.top_k, floats.seed))


@pytest.mark.parametrize(
    "key, value, rule",
    [
        ("max_new_tokens", 0, "a positive integer"),
        ("max_new_tokens", -5, "a positive integer"),
        ("max_new_tokens", True, "a positive integer"),
        ("max_new_tokens", 1.5, "a positive integer"),
        ("max_new_tokens", [64], "a positive integer"),
        ("max_tokens", 0, "a positive integer"),
        ("temperature", -0.1, "a finite number ≥ 0"),
        ("temperature", math.inf, "a finite number ≥ 0"),
        ("temperature", math.nan, "a finite number ≥ 0"),
        ("temperature", 10**400, "a finite number ≥ 0"),
        ("temperature", False, "a finite number ≥ 0"),
        ("top_k", 0, "a positive integer"),
        ("top_k", 2.5, "a positive integer"),
        ("top_p", 0, "a number in (0, 1]"),
        ("top_p", 1.01, "a number in (0, 1]"),
        ("top_p", math.nan, "a number in (0, 1]"),
        ("seed", -1, "an integer from 0 to 2**63"),
        ("seed", MAX_SEED + 1, "an integer from 0 to 2**63"),
        ("seed", math.inf, "an integer from 0 to 2**63"),
        ("seed", {"s": 1}, "an integer from 0 to 2**63"),
    ],
)
def test_bad_options_are_errors_naming_the_row_the_field_and_the_value(key, value, rule):
    with pytest.raises(ManifestError) as info:
        read_options({"id": "a", "messages": HELLO, key: value}, WHERE)
    message = str(info.value)
    assert message.startswith(f"{WHERE}: {key!r} must be {rule}")
    assert f"got {value!r}"[:40] in message or "characters)" in message  # the value, shortened when long


@pytest.mark.parametrize("cell", ["hot", '"0.5"', "[1]", "9" * 5000])
def test_a_cell_that_is_no_number_is_an_error_naming_the_field(cell):
    with pytest.raises(ManifestError, match=r"row 3 \(id 'a'\): 'temperature'") as info:
        read_options({"temperature": cell}, WHERE)
    assert len(str(info.value)) < 300


def test_read_options_refuses_a_row_that_is_no_object():
    with pytest.raises(ManifestError, match="row 3 .*expected an object, got list"):
        read_options([], WHERE)


def test_row_options_validate_when_built_directly():
    with pytest.raises(ManifestError, match="RowOptions: 'top_p' must be a number in"):
        RowOptions(top_p=2.0)
    with pytest.raises(TypeError):
        RowOptions(64)  # keyword-only
    with pytest.raises(AttributeError):
        RowOptions().seed = 1  # frozen


def test_read_row_still_ignores_the_option_keys():
    row = {"id": "a", "messages": HELLO, "max_new_tokens": -1, "temperature": "hot", "top_k": 40}
    checked = read_row(row, 3)
    assert (checked.id, checked.messages, checked.tools) == ("a", HELLO, None)


# --- requests ------------------------------------------------------------------------------------------------------


def test_an_openai_batch_is_told_from_a_manifest_by_its_first_row():
    assert is_openai_batch(request())
    assert is_openai_batch({"custom_id": "q", "body": {}})
    assert not is_openai_batch({"id": "a", "messages": HELLO})
    assert not is_openai_batch({"custom_id": "q", "messages": HELLO})
    assert not is_openai_batch(ManifestError("row 0: line 1 is not valid JSON"))
    assert not is_openai_batch(None)


def test_a_plain_request_becomes_a_row_without_options():
    raw = request()
    before = copy.deepcopy(raw)
    row, options = read_request(raw, 0)
    assert (row.id, row.messages, row.tools) == ("q1", HELLO, None)
    assert options == RowOptions()
    assert raw == before
    # method and url may be left out
    row, _ = read_request({"custom_id": "q2", "body": {"messages": HELLO}}, 1)
    assert row.id == "q2"


def test_messages_pass_through_unchanged():
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "text", "text": "What is this?"},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {}}]},
        {"role": "tool", "tool_call_id": "c", "content": "{}"},
    ]
    row, _ = read_request(request(messages=copy.deepcopy(messages)), 0)
    assert row.messages == messages


def test_tools_and_options_are_read_from_the_body():
    raw = request(
        model="gemma-4-e4b",
        user="u1",
        metadata={"k": "v"},
        tools=[WEATHER],
        tool_choice="auto",
        max_completion_tokens=128,
        max_tokens=16,  # the older name loses to max_completion_tokens
        temperature=0.5,
        top_p=0.95,
        top_k=40,
        seed=7,
        n=1,
        stream=False,
        logprobs=False,
        stop=[],
        response_format={"type": "text"},
        frequency_penalty=0,
    )
    row, options = read_request(raw, 4)
    assert row.tools == [WEATHER]
    assert options == RowOptions(max_new_tokens=128, temperature=0.5, top_k=40, top_p=0.95, seed=7, model="gemma-4-e4b")
    assert read_request(request(stop="\n"), 0)[1].stop == ("\n",)
    assert read_request(request(stop=["END", "\n\n"]), 0)[1].stop == ("END", "\n\n")
    assert read_request(request(stop=""), 0)[1].stop is None  # empty: none, as OpenAI reads it
    assert read_request(request(max_tokens=16), 0)[1].max_new_tokens == 16
    assert read_request(request(max_completion_tokens=None, max_tokens=16), 0)[1].max_new_tokens == 16


def test_tool_choice_none_is_accepted_without_tools_only():
    assert read_request(request(tool_choice="none"), 0)[0].tools is None
    with pytest.raises(ManifestError, match=r"row 0 \(custom_id 'q1'\): 'body.tool_choice' is 'none' with tools"):
        read_request(request(tools=[WEATHER], tool_choice="none"), 0)


@pytest.mark.parametrize(
    "raw, problem",
    [
        ([1, 2], r"row 5: expected a request object .* got list"),
        ({"body": {"messages": HELLO}}, r"row 5: 'custom_id' must be a non-empty string, got None"),
        ({"custom_id": "", "body": {"messages": HELLO}}, r"row 5: 'custom_id' must be a non-empty string, got ''"),
        ({"custom_id": 7, "body": {"messages": HELLO}}, r"row 5: 'custom_id' must be a non-empty string, got 7"),
        ({**request(), "method": "GET"}, r"row 5 \(custom_id 'q1'\): 'method' must be 'POST', got 'GET'"),
        (
            {**request(), "url": "/v1/embeddings"},
            r"row 5 \(custom_id 'q1'\): 'url' is '/v1/embeddings'; only chat completions .* are served",
        ),
        ({**request(), "body": "hi"}, r"'body' must be a chat completion request object, got str"),
        ({**request(), "body": None}, r"'body' must be a chat completion request object, got NoneType"),
        (request(messages=[]), r"row 5 \(custom_id 'q1'\): 'body.messages' must be a non-empty list"),
        (request(messages="hi"), r"'body.messages' must be a non-empty list"),
        (request(tools=[{"type": "function"}]), r"row 5 \(custom_id 'q1'\): tools\[0\] must be"),
        (request(tools="get_weather"), r"'tools' must be a list of tool specs, got str"),
        (request(n=2), r"'body.n' is 2: only n = 1 is supported \(n > 1 is not"),
        (request(n=True), r"'body.n' is True"),
        (request(stream=True), r"'body.stream' is True: streaming is not supported"),
        (request(logprobs=True), r"'body.logprobs' is True: log probabilities"),
        (request(top_logprobs=5), r"'body.top_logprobs' is 5"),
        (request(response_format={"type": "json_object"}), r"'body.response_format' is .*json_object.*only text"),
        (request(stop=[""]), r"body: 'stop' item 0 is empty"),
        (request(stop=["a", 3]), r"body: 'stop' item 1 must be a string"),
        (request(model=""), r"'body.model' must be a model name"),
        (request(tool_choice="required"), r"'body.tool_choice' is 'required': only 'auto'"),
        (
            request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}),
            r"'body.tool_choice' is \{'type': 'function'",
        ),
        (request(parallel_tool_calls=False), r"'body.parallel_tool_calls' is False"),
        (request(presence_penalty=0.5), r"'body.presence_penalty' is 0.5: penalties"),
        (request(logit_bias={"42": 5}), r"'body.logit_bias'"),
        (request(repetition_penalty=1.2), r"'body.repetition_penalty' is 1.2"),
        (request(modalities=["text", "audio"]), r"'body.modalities'"),
        (request(reasoning_effort="high"), r"'body.reasoning_effort' is 'high': thinking is the job's setting"),
        (request(chat_template_kwargs={"enable_thinking": True}), r"'body.chat_template_kwargs'"),
        (request(max_tokenz=5, functions=[]), r"'body' holds \['functions', 'max_tokenz'\], not chat completion"),
        (request(max_completion_tokens=0), r"row 5 \(custom_id 'q1'\): 'body.max_completion_tokens' must be a pos"),
        (request(max_tokens="64"), r"'body.max_tokens' must be a positive integer, got '64'"),
        (request(temperature=-1), r"'body.temperature' must be a finite number ≥ 0 and ≤ .*, got -1"),
        (request(top_p=0), r"'body.top_p' must be a number in \(0, 1\], got 0"),
        (request(top_k=0), r"'body.top_k' must be a positive integer ≤ .*, got 0"),
        (request(seed=-3), r"'body.seed' must be an integer from 0 to 2\*\*63"),
        (request(messages=[{"role": "user", "content": "\ud800"}]), r"row 5 \(custom_id 'q1'\): .*not valid Unicode"),
    ],
)
def test_bad_requests_are_errors_naming_the_row_and_the_key(raw, problem):
    with pytest.raises(ManifestError, match=problem):
        read_request(raw, 5)


def test_a_request_nested_too_deeply_is_refused():
    value: object = "x"
    for _ in range(100):
        value = [value]
    with pytest.raises(ManifestError, match=r"row 0 \(custom_id 'q1'\): nested more than"):
        read_request(request(metadata={"deep": value}), 0)


# --- responses -----------------------------------------------------------------------------------------------------


def test_a_response_line_follows_the_batch_output_format():
    line = response_line(result(), model="gemma-4-e4b", created=1_700_000_000)
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert line["custom_id"] == "q1" and line["error"] is None and line["id"].startswith("batch_req_")
    response = line["response"]
    assert response["status_code"] == 200 and response["request_id"].startswith("req_")
    body = response["body"]
    assert body["id"].startswith("chatcmpl-")
    assert (body["object"], body["created"], body["model"]) == ("chat.completion", 1_700_000_000, "gemma-4-e4b")
    (choice,) = body["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "Hello!"},
        "finish_reason": "stop",
        "logprobs": None,
    }
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}


def test_ids_are_deterministic_and_distinct():
    first = response_line(result("a", tool_calls=[{"name": "f", "arguments": "{}"}] * 2), model="m", created=1)
    again = response_line(result("a", tool_calls=[{"name": "f", "arguments": "{}"}] * 2), model="m", created=2)
    other = response_line(result("b"), model="m", created=1)

    def ids(line):
        body = line["response"]["body"]
        calls = [c["id"] for c in body["choices"][0]["message"].get("tool_calls", [])]
        return [line["id"], line["response"]["request_id"], body["id"], *calls]

    assert ids(first) == ids(again)
    assert len(set(ids(first))) == 5
    assert not set(ids(first)) & set(ids(other))
    assert error_line({"id": "a", "row": 0, "stage": "s", "error_type": "E", "message": "m"})["id"] == first["id"]
    assert all(i.split("_")[-1].split("-")[-1].isalnum() for i in ids(first))


@pytest.mark.parametrize(
    "finish_reason, calls, expected",
    [("stop", 0, "stop"), ("length", 0, "length"), ("stop", 1, "tool_calls"), ("length", 1, "length")],
)
def test_finish_reason_becomes_tool_calls_when_a_reply_stopped_after_calls(finish_reason, calls, expected):
    tool_calls = [{"name": "get_weather", "arguments": '{"city": "Paris"}'}] * calls
    line = response_line(result(finish_reason=finish_reason, tool_calls=tool_calls), model="m", created=0)
    assert line["response"]["body"]["choices"][0]["finish_reason"] == expected


def test_message_content_thinking_and_tool_calls():
    calls = [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    message = response_line(result(text="", thinking="Paris, then.", tool_calls=calls), model="m", created=0)
    message = message["response"]["body"]["choices"][0]["message"]
    assert message["content"] is None  # no text beside the calls
    assert message["reasoning_content"] == "Paris, then."
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    # text beside calls is kept; an empty answer without calls stays ""; empty thinking is still thinking
    with_text = response_line(result(text="Let me check.", tool_calls=calls), model="m", created=0)
    assert with_text["response"]["body"]["choices"][0]["message"]["content"] == "Let me check."
    empty = response_line(result(text="", thinking="", tool_calls=None), model="m", created=0)
    assert empty["response"]["body"]["choices"][0]["message"] == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "",
    }


def test_a_result_with_an_unknown_finish_reason_is_refused():
    with pytest.raises(ValueError, match="result 'q1': 'finish_reason' must be 'stop' or 'length', got 'abort'"):
        response_line(result(finish_reason="abort"), model="m", created=0)


def test_an_error_line_follows_the_batch_output_format():
    error = {"id": "row 7", "row": 7, "stage": "manifest", "error_type": "ManifestError", "message": "row 7: bad"}
    line = error_line(error)
    assert line["id"].startswith("batch_req_")
    assert {k: v for k, v in line.items() if k != "id"} == {
        "custom_id": "row 7",
        "response": None,
        "error": {"code": "manifest", "message": "ManifestError: row 7: bad"},
    }


# --- a round trip --------------------------------------------------------------------------------------------------


def test_a_batch_round_trips_through_requests_results_and_output_lines():
    lines = [
        json.dumps(request("plain", model="gemma-4")),
        json.dumps(request("tools", tools=[WEATHER], max_completion_tokens=50, temperature=0.3, top_k=20, seed=1)),
        json.dumps({**request("embed"), "url": "/v1/embeddings"}),
    ]
    results, errors = [], []
    for index, line in enumerate(lines):
        try:
            row, options = read_request(json.loads(line), index)
        except ManifestError as exc:
            errors.append({"id": "embed", "row": index, "stage": "manifest", "error_type": type(exc).__name__,
                           "message": str(exc)})  # fmt: skip
            continue
        if row.tools:
            assert options == RowOptions(max_new_tokens=50, temperature=0.3, top_k=20, seed=1)
            calls = [{"name": row.tools[0]["function"]["name"], "arguments": json.dumps({"city": "Oslo"})}]
            results.append(result(row.id, row=index, text="", thinking="Oslo.", tool_calls=calls, prompt_tokens=90,
                                  completion_tokens=22))  # fmt: skip
        else:
            assert options == RowOptions(model="gemma-4")
            results.append(result(row.id, row=index, text="Hi there.", finish_reason="length", completion_tokens=50))

    written = [json.dumps(response_line(r, model="gemma-4-e4b", created=1)) for r in results]
    written += [json.dumps(error_line(e)) for e in errors]
    out = {line["custom_id"]: line for line in map(json.loads, written)}

    assert list(out) == ["plain", "tools", "embed"]
    assert len({line["id"] for line in out.values()}) == 3
    plain = out["plain"]["response"]["body"]
    assert plain["choices"][0]["message"]["content"] == "Hi there."
    assert plain["choices"][0]["finish_reason"] == "length"
    assert plain["usage"] == {"prompt_tokens": 10, "completion_tokens": 50, "total_tokens": 60}
    tools = out["tools"]["response"]["body"]
    choice = tools["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["reasoning_content"] == "Oslo."
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert tools["usage"]["total_tokens"] == 112
    embed = out["embed"]
    assert embed["response"] is None and embed["error"]["code"] == "manifest"
    assert embed["error"]["message"].startswith("ManifestError: row 2 (custom_id 'embed'): 'url' is '/v1/embeddings'")
    assert "only chat completions" in embed["error"]["message"]


def test_the_module_imports_nothing_from_the_runtime_packages():
    code = (
        "import sys, data_specs.openai_batch\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('preprocess', 'model', 'pipelines', 'torch', 'numpy', 'pyarrow')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
