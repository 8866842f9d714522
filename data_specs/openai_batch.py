"""OpenAI batch files as ``gemma4 infer`` reads and writes them: chat-completion requests in, responses out.

Input: JSON Lines, one request a line, the format of the OpenAI Batch API and ``vllm run-batch``::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gemma-4", "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 64}}

``is_openai_batch(first_row)`` tells such a file from a manifest (:mod:`data_specs.manifest`) by its first row.
``read_request(raw, index)`` gives a line's :class:`~data_specs.manifest.ManifestRow` (``custom_id`` is the row
id; the messages pass through unchanged: OpenAI content parts are the chat code's to read) and its
:class:`~data_specs.manifest.RowOptions` (``max_completion_tokens``, or the older ``max_tokens``; ``temperature``,
``top_p``, ``seed``, ``stop`` (a string or a list of strings); vLLM's ``top_k``). Body keys:

* ignored, harmless to an offline job: ``model`` (the response names it, unless the job gives
  ``--served-model-name``), ``user``, ``metadata``,
  ``store``, ``service_tier``, ``stream_options``, ``safety_identifier``, ``prompt_cache_key``;
* accepted only at their default, since anything else asks for behaviour the job does not implement: ``n`` (1),
  ``stream`` (false), ``logprobs`` (false), ``top_logprobs`` (0), ``response_format`` (``{"type": "text"}``),
  ``tool_choice`` (``"auto"``, or ``"none"`` when the request declares no tools: with tools it
  would have to forbid calls the model may still make), ``parallel_tool_calls`` (true), ``frequency_penalty``
  and ``presence_penalty`` (0), ``logit_bias`` (empty), ``modalities`` (``["text"]``), ``audio``,
  ``prediction``, ``reasoning_effort``, ``web_search_options`` (null), vLLM's ``repetition_penalty`` (1),
  ``min_p`` (0), ``min_tokens`` (0), ``chat_template_kwargs`` (empty: thinking is the job's ``--enable-thinking``);
* any other key is refused, as OpenAI refuses an unknown argument: a misspelt option must not pass unnoticed.

Every refusal is a ``ManifestError`` naming the row and the key, so the job files the line in its errors table and
goes on. A request's ``tools`` follow the manifest's rule (:func:`~data_specs.manifest.check_tools`): missing or
empty means the job's ``--tools``. Ids (``custom_id``) must be unique within the file: :func:`check_unique_ids`
refuses the whole file otherwise, before anything runs, as OpenAI does.

Output: one line per input line, in the format of the Batch API's output file. ``response_line(result, model=…,
created=…)`` turns one result row of the job into a ``chat.completion`` response; ``error_line(error)`` turns one
errors-table row into an error line (``code`` the stage, ``message`` "ErrorType: message"). The ids the API would
draw at random (``batch_req_…``, ``req_…``, ``chatcmpl-…``, ``call_…``) are hashes of the custom id, so a rerun
writes the same file. A reply's thinking goes in ``reasoning_content``, as vLLM writes it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .manifest import (
    MAX_ID_CHARS,
    ManifestError,
    ManifestRow,
    RowOptions,
    check_option,
    check_stop,
    check_tools,
    check_values,
    short_repr,
)

__all__ = ["CHAT_COMPLETIONS_URL", "check_unique_ids", "is_openai_batch", "read_request", "response_line", "error_line"]

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
FINISH_REASONS = ("stop", "length")  # a result row's; "tool_calls" is derived from "stop"

_IGNORED = frozenset(
    {"model", "user", "metadata", "store", "service_tier", "stream_options", "safety_identifier", "prompt_cache_key"}
)
# body key → option field; max_completion_tokens wins over the older max_tokens when both are given
_OPTION_KEYS = {
    "max_completion_tokens": "max_new_tokens",
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
}


def _is(*defaults: Any) -> Callable[[Any], bool]:
    """A test that a value is one of ``defaults`` (``None`` always passes: null means the default). Booleans are
    compared as booleans, so ``1`` is not ``true``."""
    return lambda value: value is None or any(type(value) is type(d) and value == d for d in defaults)


# key → (accepted values, what we do not support); checked after "messages" and "tools"
_DEFAULT_ONLY: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (_is(1), "only n = 1 is supported (n > 1 is not: one choice per request)"),
    "stream": (_is(False), "streaming is not supported in a batch"),
    "logprobs": (_is(False), "log probabilities are not returned"),
    "top_logprobs": (_is(0), "log probabilities are not returned"),
    "response_format": (_is({"type": "text"}), "only text responses are supported (no JSON mode or schema)"),
    "tool_choice": (_is("auto", "none"), "only 'auto' is supported (or 'none' without tools)"),
    "parallel_tool_calls": (_is(True), "limiting a reply to one tool call is not supported"),
    "frequency_penalty": (_is(0, 0.0), "penalties are not supported"),
    "presence_penalty": (_is(0, 0.0), "penalties are not supported"),
    "logit_bias": (_is({}), "logit bias is not supported"),
    "modalities": (_is(["text"]), "only text output is supported"),
    "audio": (_is(), "audio output is not supported"),
    "prediction": (_is(), "predicted outputs are not supported"),
    "reasoning_effort": (_is(), "thinking is the job's setting (--enable-thinking), not a request's"),
    "web_search_options": (_is(), "web search is not supported"),
    "repetition_penalty": (_is(1, 1.0), "penalties are not supported"),
    "min_p": (_is(0, 0.0), "min_p is not supported"),
    "min_tokens": (_is(0), "min_tokens is not supported"),
    "chat_template_kwargs": (_is({}), "thinking is the job's setting (--enable-thinking), not a request's"),
}
_KNOWN = _IGNORED | set(_OPTION_KEYS) | set(_DEFAULT_ONLY) | {"messages", "tools", "stop"}


def is_openai_batch(first_row: Any) -> bool:
    """Whether an input's first raw row is an OpenAI batch request (an object with ``custom_id`` and ``body``)
    rather than a manifest row."""
    return isinstance(first_row, Mapping) and "custom_id" in first_row and "body" in first_row


def check_unique_ids(rows: Iterable[Any], source: str | os.PathLike) -> None:
    """Refuse a batch in which two requests share a ``custom_id``, as OpenAI refuses such a file as a whole:
    ``ManifestError`` naming the id and both rows. Rows that are not request objects are the rows' own errors."""
    seen: dict[str, int] = {}
    for index, raw in enumerate(rows):
        custom_id = raw.get("custom_id") if isinstance(raw, Mapping) else None
        if not isinstance(custom_id, str) or not custom_id:
            continue
        if custom_id in seen:
            raise ManifestError(
                f"{os.fspath(source)}: custom_id {short_repr(custom_id)} is used by rows {seen[custom_id]} and "
                f"{index}; the requests of a batch need distinct ids (OpenAI refuses such a file as a whole)"
            )
        seen[custom_id] = index


def read_request(raw: Any, index: int) -> tuple[ManifestRow, RowOptions]:
    """The row (id = ``custom_id``, the body's messages and tools) and options of one request line;
    ``ManifestError`` naming the row and the offending key otherwise."""
    where = f"row {index}"
    if not isinstance(raw, Mapping):
        raise ManifestError(
            f"{where}: expected a request object with 'custom_id', 'method', 'url' and 'body', got {type(raw).__name__}"
        )
    custom_id = raw.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise ManifestError(f"{where}: 'custom_id' must be a non-empty string, got {short_repr(custom_id)}")
    if len(custom_id) > MAX_ID_CHARS:
        raise ManifestError(f"{where}: 'custom_id' has {len(custom_id)} characters; at most {MAX_ID_CHARS}")
    check_values(raw, where if len(custom_id) > 200 else f"{where} (custom_id {custom_id!r})")
    where = f"{where} (custom_id {custom_id!r})"
    if raw.get("method", "POST") != "POST":
        raise ManifestError(f"{where}: 'method' must be 'POST', got {short_repr(raw['method'])}")
    if raw.get("url", CHAT_COMPLETIONS_URL) != CHAT_COMPLETIONS_URL:
        raise ManifestError(
            f"{where}: 'url' is {short_repr(raw['url'])}; only chat completions ({CHAT_COMPLETIONS_URL!r}) are served"
        )
    body = raw.get("body")
    if not isinstance(body, Mapping):
        raise ManifestError(f"{where}: 'body' must be a chat completion request object, got {type(body).__name__}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ManifestError(f"{where}: 'body.messages' must be a non-empty list of chat messages")
    tools = check_tools(body.get("tools"), where)
    unknown = sorted(map(str, set(body) - _KNOWN))
    if unknown:
        raise ManifestError(
            f"{where}: 'body' holds {short_repr(unknown)}, not chat completion parameters this job reads (the known "
            "ones are listed in data_specs/openai_batch.py)"
        )
    for key, (accepted, unsupported) in _DEFAULT_ONLY.items():
        if key in body and not accepted(body[key]):
            raise ManifestError(f"{where}: 'body.{key}' is {short_repr(body[key])}: {unsupported}")
    if body.get("tool_choice") == "none" and tools is not None:
        raise ManifestError(
            f"{where}: 'body.tool_choice' is 'none' with tools: forbidding tool calls is not supported (drop "
            "'tools' instead)"
        )
    options: dict[str, Any] = {}
    for key, name in _OPTION_KEYS.items():
        value = check_option(name, body.get(key), where, f"body.{key}")
        if value is not None and name not in options:
            options[name] = value
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model or len(model) > 256):
        raise ManifestError(
            f"{where}: 'body.model' must be a model name (1 to 256 characters), got {short_repr(model)}"
        )
    if model is not None:
        options["model"] = model
    stop = body.get("stop")
    if stop is not None and stop not in ("", []):  # an empty string or list means none, as in OpenAI's API
        options["stop"] = check_stop(stop, f"{where}: body")
    return ManifestRow(custom_id, messages, tools), RowOptions(**options)


def response_line(result: Mapping, *, model: str, created: int) -> dict:
    """The output line of one result row of the job (keys ``id``, ``text``, ``thinking``, ``tool_calls``,
    ``finish_reason``, ``prompt_tokens``, ``completion_tokens``, …): a 200 response holding a ``chat.completion``
    that names ``model`` and was ``created`` (Unix seconds). ``ValueError`` naming the row if its finish reason is
    neither "stop" nor "length"."""
    custom_id = result["id"]
    calls = list(result.get("tool_calls") or ())
    finish_reason = result["finish_reason"]
    if finish_reason not in FINISH_REASONS:
        raise ValueError(f"result {custom_id!r}: 'finish_reason' must be 'stop' or 'length', got {finish_reason!r}")
    text = result["text"]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if result.get("thinking") is not None:
        message["reasoning_content"] = result["thinking"]
    if calls:
        message["tool_calls"] = [
            {
                "id": _ref("call", custom_id, k),
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            for k, call in enumerate(calls)
        ]
    prompt_tokens, completion_tokens = int(result["prompt_tokens"]), int(result["completion_tokens"])
    completion = {
        "id": _ref("chatcmpl", custom_id, sep="-"),
        "object": "chat.completion",
        "created": int(created),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if calls and finish_reason == "stop" else finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return {
        "id": _ref("batch_req", custom_id),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": _ref("req", custom_id), "body": completion},
        "error": None,
    }


def error_line(error: Mapping) -> dict:
    """The output line of one errors-table row (``id``, ``row``, ``stage``, ``error_type``, ``message``): no
    response, an error whose code is the stage that failed."""
    custom_id = error["id"]  # None for a line with no readable custom_id: its id comes from its position
    return {
        "id": _ref("batch_req", custom_id) if custom_id is not None else _ref("batch_req_line", str(error["row"])),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": error["stage"], "message": f"{error['error_type']}: {error['message']}"},
    }


def _ref(prefix: str, custom_id: str, *more: int, sep: str = "_") -> str:
    """A deterministic id in the API's style: ``prefix`` and 32 hex digits of a hash of the custom id (and
    ``more``, e.g. a tool call's index); the prefix is hashed too, so a request's ids differ from each other."""
    key = "\0".join([prefix, custom_id, *map(str, more)])
    return f"{prefix}{sep}{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"
