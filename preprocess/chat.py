"""Chat messages (and tools) → the prompt string of the Gemma 4 instruction-tuned format (spec §5.4.1), with
protected text.

Messages take the transformers chat form: ``[{"role": …, "content": str | [parts] | None, "tool_calls"?: […],
"tool_responses"?: […]}]``, roles ``system``, ``developer``, ``user``, ``assistant`` (written ``model``),
``model`` and ``tool``. Parts: ``{"type": "text", "text": …}``, ``{"type": "image", "image": …, "budget": 280?}``,
``{"type": "audio", "audio": path | bytes | (array, sample_rate)}``, ``{"type": "video", "video": …,
"num_frames": 32?, "budget": 70?}``, a media part located by ``"url"`` (a ``file:`` or ``data:`` URL, or a path)
or ``"path"`` instead of its data (transformers' form), and OpenAI's ``image_url`` / ``input_audio`` parts (both
converted by :mod:`preprocess.openai_parts`; remote URLs are refused, nothing is fetched). ``tool_calls`` are
OpenAI's ``{"type": "function", "id"?: …, "function": {"name", "arguments": mapping | JSON str}}`` (or
``{"name", "arguments"}``): a JSON string of arguments is parsed to its object, as vLLM does (``None`` or a blank
string is ``{}``; anything but a JSON object is an error). ``tool_responses`` are ``{"name", "response"}`` (Gemma's
form); ``tools`` are OpenAI-style function specs.

OpenAI's tool history is folded into Gemma's form before rendering, so it renders exactly as the hand-written
Gemma form does: the run of ``{"role": "tool", "tool_call_id": ID, "content": …}`` messages right after an
assistant message with ``tool_calls`` becomes that message's ``tool_responses`` (after any it has), in order,
each ``{"name": the name of the call whose "id" is ID, "response": the content}`` (a string as it is, a list of
text parts as their concatenated text); the tool messages disappear. Without ids on the calls, the tool
message's own ``name`` names the response. An ID that matches no call, a tool message with an ID that does not
follow such an assistant message (only other such tool messages may stand between) or that also holds
``tool_responses`` is an error; a tool message without ``tool_call_id`` renders as its own turn, as before.

Rendering. With no template, the built-in layout: our Python implementation of the rules of spec §5.4.1, byte
for byte what the checkpoints' ``chat_template.jinja`` renders for every conversation it accepts (the system
turn with ``<|think|>`` and tool declarations, text stripped, blank lines around images and videos, tool calls
and responses in the format of :mod:`preprocess.tool_format`, thinking removed from model turns, the empty
thought channel after the generation prompt when thinking is off). One deliberate difference: a first
``system``/``developer`` message whose content is a list of text parts is written as its text (the template
would print the Python list). Both renderers see the conversation after the conversions above (JSON arguments
parsed, OpenAI's tool messages folded, media parts in our form), where the template would write a string of
arguments as is and give each tool message a turn of its own. With a checkpoint's template, it is rendered
instead in a sandboxed Jinja environment (``trim_blocks``, ``lstrip_blocks``, as transformers renders chat
templates), receiving what transformers gives it: the messages (string content stays a string, unknown keys
pass through, media parts keep their type and options but not their data), ``tools``, ``add_generation_prompt``,
``enable_thinking``, ``bos_token``/``eos_token``/``pad_token`` and any ``template_kwargs``; a template is compiled
once and its code shared by later renderings. :func:`builtin_template_text` is the built-in layout written as
such a template (``preprocess/assets/chat_template.jinja``, our own), for checkpoints that ship none.

A template is code from a checkpoint, so its rendering is bounded (``MediaLimits.max_template_seconds`` and
``max_template_chars``; :class:`ChatFormatError` names the limit): the elapsed time is checked at every loop
step (every ``for`` iterates through a guard), call, filter and intercepted operator; ``range`` yields at most
100 000 items; strings and lists made by ``*``, ``+``, ``%``, calls, filters and ``namespace`` assignments are
refused beyond the size limit, before they are built where the arguments tell (``"x" * 10**10``,
``center(10**10)``, ``"%010000000000d"``, ``join``, ``replace``); and every character written, in loops,
macros and ``set`` blocks included, counts against a budget of 4 × ``max_template_chars``. Recursion too deep
for Python, a ``MemoryError`` or an arithmetic error become :class:`ChatFormatError` too. This bounds the
known ways to exhaust time and memory from a template; it is a guard in process, not an operating-system limit.

Protection: before rendering, every control string inside text from anyone but the model (system, developer,
user and tool text, tool responses, tool declarations) and any private-use sentinel character is replaced by a
sentinel ``\\ue000<k>\\ue001``; :class:`RenderedPrompt` keeps the originals so the tokenizer encodes them as
plain text. Text of model turns and tool-call arguments are the model's own output and keep their control
strings (so thought channels can be removed), except media placeholders. Every media placeholder in the
rendered prompt therefore belongs to a media part, in order.

Assistant spans (for training labels). :attr:`RenderedPrompt.assistant_spans` are the character ranges of the
rendered text the model writes, read from the turn structure of spec §5.4.1 the same way for the built-in layout
and for any checkpoint template: in each model turn, everything after its opener ``<|turn>model\\n`` up to and
including the ``<turn|>`` that closes it. That is the convention of transformers' ``{% generation %}`` blocks
(``return_assistant_tokens_mask``) and TRL's assistant-only loss: the model's content and its end marker, not the
opener (the prompt writes it) nor the line break after ``<turn|>`` (generation stops at ``<turn|>``). The Gemma 4
checkpoints' own template has no ``{% generation %}`` markers (transformers would give an all-zero mask), hence
the structural reading. Inside a model turn, tool responses (``<|tool_response>…<tool_response|>``, written by
the caller) and media placeholders are left out, except the ``<|tool_response>`` right after the model's last
``<tool_call|>``: the model writes it to end its calls (it is a stop token, spec §5.4.1) as it writes ``<turn|>``
to end a turn. System, user and tool turns, ``<bos>`` and the generation prompt (the trailing opener and empty
thought channel, or what follows tool responses) are never the model's. Only the model's own text can hold
control strings (everyone else's are protected), so the markers read are the template's or the model's. A
template that writes model turns in another form gets the spans that form's markers give.

``continue_final_message=True`` (with ``add_generation_prompt=False``) ends the prompt inside the last message,
which must be a model turn (after OpenAI's tool messages are folded into it): the conversation is rendered as a
finished one and cut before the ``<turn|>`` that closes the last turn (and the template's line break after it),
as transformers' ``apply_chat_template(continue_final_message=True)`` and vLLM do. The last message is rendered as
any model turn is (stripped, thought channels removed): text the template changed cannot be continued and is an
error, as in transformers. The partial turn belongs to the assistant spans.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

from .errors import ChatFormatError
from .limits import DEFAULT_LIMITS, MediaLimits
from .openai_parts import OPENAI_PART_TYPES, normalize_part
from .tokenizer import SPECIAL_STRINGS

__all__ = [
    "ChatFormatError",
    "MediaPart",
    "RenderedPrompt",
    "assistant_spans",
    "builtin_template_text",
    "render_chat",
    "strip_thinking",
]

ROLES = ("system", "developer", "user", "assistant", "model", "tool")
MEDIA_KINDS = ("image", "audio", "video")
PLACEHOLDERS = {kind: SPECIAL_STRINGS[kind] for kind in MEDIA_KINDS}  # image → "<|image|>", …
SENTINEL_OPEN, SENTINEL_CLOSE = "\ue000", "\ue001"
_SENTINEL_RE = re.compile(f"{SENTINEL_OPEN}(\\d+){SENTINEL_CLOSE}")
_SENTINELS = f"|[{SENTINEL_OPEN}{SENTINEL_CLOSE}]"
_QUOTE = 40  # characters of a user's value (a tool-call id, JSON arguments) an error message may show
_PROTECT_RE = re.compile(
    "|".join(re.escape(s) for s in sorted(SPECIAL_STRINGS.values(), key=len, reverse=True)) + _SENTINELS
)
_PROTECT_MEDIA_RE = re.compile("|".join(re.escape(s) for s in PLACEHOLDERS.values()) + _SENTINELS)
# What the layout writes around each media part (spec §5.4.1 item 3).
_MEDIA_TEXT = {
    "image": f"\n\n{PLACEHOLDERS['image']}\n\n",
    "audio": PLACEHOLDERS["audio"],
    "video": f"\n\n{PLACEHOLDERS['video']}\n\n",
}


@dataclass(frozen=True)
class MediaPart:
    """One media item of the conversation, in order of appearance."""

    kind: str  # "image" | "audio" | "video"
    source: Any
    options: Mapping[str, Any]  # e.g. {"budget": 280} or {"num_frames": 32}
    where: str  # "messages[1].content[2]", for error messages


@dataclass(frozen=True)
class RenderedPrompt:
    """The rendered prompt; ``protected[k]`` is the literal text hidden behind sentinel ``k``;
    ``assistant_spans`` the ``[start, end)`` character ranges of ``text`` the model writes, in order and disjoint
    (see the module docstring)."""

    text: str
    protected: tuple[str, ...]
    media: tuple[MediaPart, ...]
    assistant_spans: tuple[tuple[int, int], ...] = ()

    def literal(self) -> str:
        """The prompt as plain text, sentinels replaced by what they hide (what a template renders from the raw
        messages; tokenising it would turn the hidden control strings into control tokens)."""
        return "".join(run for _, run in unprotect_segments(self.text, self.protected))


def _short(value: object) -> str:
    """``repr(value)`` cut to :data:`_QUOTE` characters, for error messages."""
    shown = repr(value)
    return shown if len(shown) <= _QUOTE else shown[:_QUOTE] + "…"


def _kind_of(part: object) -> str:
    """A part's type and keys, never its values (they may hold media bytes)."""
    if isinstance(part, Mapping):
        return f"a {type(part).__name__} with keys {sorted(map(str, part))[:8]}"
    return type(part).__name__


class _Protector:
    """Hides control strings behind sentinels ``\\ue000<k>\\ue001`` and remembers them. Text from anyone but the
    model loses every control string; the model's own turns keep theirs (they are its output: thought channels,
    tool calls) except media placeholders, which only media parts may put in a prompt."""

    def __init__(self) -> None:
        self.protected: list[str] = []

    def _hide(self, match: re.Match) -> str:
        self.protected.append(match.group())
        return f"{SENTINEL_OPEN}{len(self.protected) - 1}{SENTINEL_CLOSE}"

    def text(self, text: str, *, model: bool = False) -> str:
        return (_PROTECT_MEDIA_RE if model else _PROTECT_RE).sub(self._hide, text)

    def values(self, value: Any, *, model: bool = False) -> Any:
        """Every string inside ``value`` (mapping values, list items) protected; mapping keys are kept."""
        if isinstance(value, str):
            return self.text(value, model=model)
        if isinstance(value, Mapping):
            return {key: self.values(item, model=model) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.values(item, model=model) for item in value]
        return value


class _Conversation:
    """Validated messages in the shape transformers hands a chat template (string content stays a string; unknown
    keys pass through), with protected text, and the media parts in order."""

    def __init__(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> None:
        if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
            raise ChatFormatError("messages must be a non-empty list of {'role': …, 'content': …} dicts")
        self.protect = _Protector()
        self.media: list[MediaPart] = []
        self.messages: list[dict[str, Any]] = []
        # An assistant message with tool calls waits for the run of tool messages answering them (OpenAI's form),
        # to be validated with their results as its tool_responses: text is protected in Gemma's order.
        caller: tuple[Mapping[str, Any], int, list[tuple[Mapping[str, Any], int]]] | None = None
        for index, message in enumerate(messages):
            if _answers_a_call(message):
                if caller is None:
                    raise ChatFormatError(
                        f"messages[{index}] answers the tool call {_short(message['tool_call_id'])}, but does not "
                        "follow an assistant message with tool_calls (only tool messages answering its calls may "
                        "stand between)"
                    )
                caller[2].append((message, index))
                continue
            if caller is not None:
                self.messages.append(self._message(*caller))
                caller = None
            if _calls_tools(message):
                caller = (message, index, [])
            else:
                self.messages.append(self._message(message, index))
        if caller is not None:
            self.messages.append(self._message(*caller))
        self.tools = self._tools(tools)

    def _message(
        self, message: Any, index: int, answers: Sequence[tuple[Mapping[str, Any], int]] = ()
    ) -> dict[str, Any]:
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise ChatFormatError(f"{where} must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ChatFormatError(f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}")
        model = role in ("assistant", "model")
        out = dict(message)
        calls = self._tool_calls(message.get("tool_calls"), where, model)
        given = message.get("tool_responses")
        if answers:  # OpenAI's tool messages become Gemma's tool_responses, after any the message has
            had = [] if given is None else [response for _, response in _entries(given, f"{where}.tool_responses")]
            given = [*had, *(_tool_result(answer, at, calls or [], index) for answer, at in answers)]
        responses = self._tool_responses(given, where)
        if calls is not None:
            out["tool_calls"] = calls
        if responses is not None:
            out["tool_responses"] = responses
        content = message.get("content")
        if isinstance(content, str):
            out["content"] = self.protect.text(content, model=model)
        elif content is None and (calls or responses):
            pass  # absent (or None) stays as given: a template sees what transformers would pass
        elif isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
            out["content"] = [self._part(part, f"{where}.content[{j}]", model) for j, part in enumerate(content)]
            if role in ("system", "developer") and index == 0 and any(p["type"] != "text" for p in out["content"]):
                raise ChatFormatError(f"{where}: a {role} message holds text only (its media would be lost)")
        else:
            raise ChatFormatError(f"{where}.content must be a string or a list of parts, got {type(content).__name__}")
        return out

    def _part(self, part: Any, where: str, model: bool) -> dict[str, Any]:
        part = normalize_part(part, where)  # OpenAI's parts and url/path media parts → ours; the rest as it is
        if not isinstance(part, Mapping) or "type" not in part:
            raise ChatFormatError(f"{where} must be a dict with a 'type', got {_kind_of(part)}")
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ChatFormatError(f"{where}: a text part needs a string 'text'")
            return dict(part, text=self.protect.text(part["text"], model=model))
        if kind not in MEDIA_KINDS:
            raise ChatFormatError(
                f"{where}: unknown content type {kind!r}; expected text, image, audio, video (or OpenAI's "
                f"{', '.join(OPENAI_PART_TYPES)})"
            )
        if part.get(kind) is None:
            raise ChatFormatError(f"{where}: an {kind} part needs its data under {kind!r} (or a 'url' or 'path')")
        options = {k: v for k, v in part.items() if k not in ("type", kind)}
        self.media.append(MediaPart(kind, part[kind], options, where))
        return {"type": kind, **options}  # the data stays out of the template's reach

    def _tool_calls(self, calls: Any, where: str, model: bool) -> list[dict[str, Any]] | None:
        if calls is None:
            return None
        out = []
        for at, call in _entries(calls, f"{where}.tool_calls"):
            if not isinstance(call, Mapping):
                raise ChatFormatError(f"{at} must be a dict, got {type(call).__name__}")
            # OpenAI's {"type": "function", "function": {…}}, or {name, arguments}
            function = call.get("function", call)
            if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or not function["name"]:
                raise ChatFormatError(f"{at} needs a function name (a string)")
            arguments = _arguments(function.get("arguments"), f"{at}.function" if "function" in call else at)
            function = dict(function, arguments=self.protect.values(arguments, model=model))
            extra = {k: v for k, v in call.items() if k not in ("function", "name", "arguments")}
            out.append({"type": "function", **extra, "function": function})
        return out

    def _tool_responses(self, responses: Any, where: str) -> list[dict[str, Any]] | None:
        if responses is None:
            return None
        out = []
        for at, response in _entries(responses, f"{where}.tool_responses"):
            if not isinstance(response, Mapping) or "response" not in response:
                raise ChatFormatError(f"{at} must be a dict with a 'response' (and a 'name')")
            if not isinstance(response.get("name", ""), str):
                raise ChatFormatError(f"{at}: name must be a string")
            out.append(self.protect.values(dict(response)))  # a tool's output: none of its text is a control string
        return out

    def _tools(self, tools: Any) -> list[dict[str, Any]] | None:
        if tools is None:
            return None
        if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence):
            raise ChatFormatError(f"tools must be a list of tool specs, got {type(tools).__name__}")
        for j, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, Mapping) else None
            if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                raise ChatFormatError(
                    f"tools[{j}] must be {{'type': 'function', 'function': {{'name': …, 'description': …, "
                    f"'parameters': …}}}}, got {_kind_of(tool)}"
                )
        return [self.protect.values(dict(tool)) for tool in tools]


def _arguments(arguments: Any, where: str) -> Mapping[str, Any]:
    """A tool call's arguments as a mapping: a JSON string (OpenAI's form) parsed, as vLLM parses it; ``None`` or a
    blank string is ``{}``. ``where`` names the call's function (``messages[2].tool_calls[0].function``)."""
    if arguments is None or isinstance(arguments, str) and not arguments.strip():
        return {}
    if isinstance(arguments, Mapping):
        return arguments
    if not isinstance(arguments, str):
        raise ChatFormatError(
            f"{where}.arguments must be a mapping or a JSON string of one, got {type(arguments).__name__}"
        )
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise ChatFormatError(
            f"{where}.arguments is not valid JSON ({exc.msg} at character {exc.pos}): {_short(arguments)}"
        ) from None
    except (ValueError, RecursionError) as exc:  # an integer of too many digits; nesting too deep for Python
        problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(":")[0]
        raise ChatFormatError(f"{where}.arguments cannot be read as JSON ({problem}): {_short(arguments)}") from None
    if not isinstance(parsed, dict):
        raise ChatFormatError(
            f"{where}.arguments must be a JSON object, got a JSON {_JSON_TYPES.get(type(parsed), 'value')}: "
            f"{_short(arguments)}"
        )
    return parsed


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _answers_a_call(message: Any) -> bool:
    """An OpenAI tool message: ``role`` tool with a ``tool_call_id``."""
    return isinstance(message, Mapping) and message.get("role") == "tool" and message.get("tool_call_id") is not None


def _calls_tools(message: Any) -> bool:
    """An assistant message whose tool calls the following tool messages may answer."""
    return (
        isinstance(message, Mapping)
        and message.get("role") in ("assistant", "model")
        and isinstance(message.get("tool_calls"), list | tuple)
        and len(message["tool_calls"]) > 0
    )


def _tool_result(message: Mapping[str, Any], index: int, calls: Sequence[Mapping[str, Any]], caller: int) -> dict:
    """OpenAI's tool message ``messages[index]`` as a Gemma tool response ``{"name", "response"}``: the name of the
    call of ``messages[caller]`` (validated ``calls``) whose ``id`` is its ``tool_call_id``, or without ids on the
    calls its own ``name``; the response its content, text parts joined."""
    where, call_id = f"messages[{index}]", message["tool_call_id"]
    if message.get("tool_responses") is not None:
        raise ChatFormatError(f"{where} holds both a tool_call_id and tool_responses; give one or the other")
    if any(call.get("id") is not None for call in calls):
        names = [call["function"]["name"] for call in calls if call.get("id") == call_id]
        if not names:
            raise ChatFormatError(
                f"{where}.tool_call_id {_short(call_id)} matches no tool call of messages[{caller}] (by its 'id')"
            )
        name = names[0]
    else:
        name = message.get("name")
        if not isinstance(name, str) or not name:
            raise ChatFormatError(
                f"{where} answers the tool call {_short(call_id)}, but the tool calls of messages[{caller}] have no "
                f"'id' and {where} has no 'name' to say which function answered"
            )
    content = message.get("content")
    if isinstance(content, str):
        return {"name": name, "response": content}
    if not isinstance(content, list | tuple):
        raise ChatFormatError(
            f"{where}.content: a tool result must be a string or a list of text parts, got {type(content).__name__}"
        )
    texts = []
    for at, part in _entries(content, f"{where}.content"):
        if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ChatFormatError(f"{at}: a tool result holds text parts only, got {_kind_of(part)}")
        texts.append(part["text"])
    return {"name": name, "response": "".join(texts)}


def _entries(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """``(where[j], item)`` of a list; ``ChatFormatError`` naming ``where`` for anything else."""
    if not isinstance(value, list | tuple):
        raise ChatFormatError(f"{where} must be a list, got {type(value).__name__}")
    return ((f"{where}[{j}]", item) for j, item in enumerate(value))


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    enable_thinking: bool = False,
    chat_template: str | None = None,
    limits: MediaLimits | None = None,
    **template_kwargs: Any,
) -> RenderedPrompt:
    """Render ``messages`` (see the module docstring) and ``tools`` (OpenAI-style function specs) into a prompt
    string with protected text and the assistant spans. ``template_kwargs`` reach a checkpoint template (the
    built-in layout reads none); ``limits`` (default ``MediaLimits()``) bounds the rendering of ``chat_template``.
    ``continue_final_message`` ends the prompt inside the last (model) message; it needs
    ``add_generation_prompt=False``, and a last message that is not a model turn is a :class:`ChatFormatError`."""
    if continue_final_message and add_generation_prompt:
        raise ChatFormatError(
            "continue_final_message=True continues the last (model) message, so no generation prompt may follow "
            "it: pass add_generation_prompt=False"
        )
    conversation = _Conversation(messages, tools)
    if continue_final_message and conversation.messages[-1]["role"] not in ("assistant", "model"):
        raise ChatFormatError(
            f"continue_final_message=True continues the last message, which must be a model (assistant) turn; "
            f"messages[{len(messages) - 1}] is a {conversation.messages[-1]['role']!r} message"
        )
    if chat_template is None:
        if template_kwargs:
            raise ChatFormatError(
                f"template arguments {sorted(template_kwargs)} given, but there is no chat template to receive them "
                "(the built-in layout takes none)"
            )
        text = _render_builtin(conversation, add_generation_prompt, enable_thinking)
    else:
        text = _render_template(
            chat_template,
            conversation,
            add_generation_prompt,
            enable_thinking,
            limits or DEFAULT_LIMITS,
            template_kwargs,
        )
    if continue_final_message:
        text = _open_final_turn(text, conversation.messages[-1], len(messages) - 1)
    media = conversation.media
    for kind in MEDIA_KINDS:
        wanted = sum(m.kind == kind for m in media)
        found = text.count(PLACEHOLDERS[kind])
        if found != wanted:
            raise ChatFormatError(
                f"the chat template wrote {found} {PLACEHOLDERS[kind]} placeholder(s) for {wanted} {kind} part(s)"
            )
    return RenderedPrompt(
        text=text,
        protected=tuple(conversation.protect.protected),
        media=tuple(media),
        assistant_spans=assistant_spans(text, generation_prompt=add_generation_prompt),
    )


def _open_final_turn(text: str, last: Mapping[str, Any], index: int) -> str:
    """``text`` (a finished conversation) cut before the ``<turn|>`` closing its last turn and what follows it; a
    last turn that ends with tool responses and no content is left open as it is. The last message's final text
    must survive rendering to be continued (as transformers requires)."""
    s = SPECIAL_STRINGS
    end = text.rstrip()  # the template's line break after <turn|>
    if end.endswith(s["turn_end"]):
        text = end[: -len(s["turn_end"])]
    elif not end.endswith(s["tool_response_end"]):
        raise ChatFormatError(
            f"continue_final_message=True: the rendered prompt does not end with the {s['turn_end']} of "
            f"messages[{index}] (it ends with {_short(end[-_QUOTE:])}), so it cannot be left open"
        )
    content = last.get("content")
    if isinstance(content, list) and content:
        content = content[-1].get("text") if content[-1]["type"] == "text" else None
    if isinstance(content, str) and not text.endswith(content.strip()):
        raise ChatFormatError(
            f"continue_final_message=True: the text of messages[{index}] does not end the rendered prompt (the "
            "chat template changed it: a model turn is stripped and loses its thought channels), so it cannot be "
            "continued"
        )
    return text


# The markers that delimit what the model writes (module docstring, "Assistant spans").
_STRUCTURE_RE = re.compile(
    "|".join(
        re.escape(SPECIAL_STRINGS[role])
        for role in ("turn_start", "turn_end", "tool_response_start", "tool_response_end", *MEDIA_KINDS)
    )
)
_MODEL_OPENER = "model\n"  # after <|turn>


def assistant_spans(text: str, *, generation_prompt: bool) -> tuple[tuple[int, int], ...]:
    """The ``[start, end)`` character ranges of a rendered prompt ``text`` that the model writes: the content of
    each model turn and the ``<turn|>`` closing it (see the module docstring). A model turn still open at the end
    of ``text`` is the generation prompt after its last closed part when ``generation_prompt``, else a partial
    turn the model writes (``continue_final_message``)."""
    s = SPECIAL_STRINGS
    spans: list[tuple[int, int]] = []
    start: int | None = None  # where the model's current run of text began; None outside model turns
    model = in_response = False

    def close(end: int) -> None:
        if start is not None and end > start:
            spans.append((start, end))

    for match in _STRUCTURE_RE.finditer(text):
        marker = match.group()
        if marker == s["turn_start"]:  # a new turn; a model turn left open (tool responses, no content) ends
            close(match.start())
            model = text.startswith(_MODEL_OPENER, match.end())
            start = match.end() + len(_MODEL_OPENER) if model else None
            in_response = False
        elif not model:
            continue
        elif in_response:
            if marker == s["tool_response_end"]:
                in_response, start = False, match.end()
        elif marker == s["turn_end"]:
            close(match.end())
            model, start = False, None
        elif marker == s["tool_response_start"]:  # the model's own stop marker only right after its calls
            close(match.end() if text.endswith(s["tool_call_end"], 0, match.start()) else match.start())
            in_response, start = True, None
        elif marker != s["tool_response_end"]:  # a media placeholder: the model does not write soft tokens
            close(match.start())
            start = match.end()
    if model and not in_response and not generation_prompt:
        close(len(text))
    return tuple(spans)


@functools.cache
def builtin_template_text() -> str:
    """The built-in layout written as a Jinja chat template (``preprocess/assets/chat_template.jinja``, our own,
    from spec §5.4.1): rendered by :func:`render_chat` or by transformers, it writes byte for byte what the
    built-in layout writes, for every conversation the layout accepts. A checkpoint that ships no
    ``chat_template.jinja`` can ship this one."""
    from importlib.resources import files

    return files(__package__).joinpath("assets", "chat_template.jinja").read_text(encoding="utf-8")


def strip_thinking(text: str) -> str:
    """A model turn's text without its thought channels (spec §5.4.1 item 6): of each piece before a
    ``<channel|>``, only what precedes its ``<|channel>`` is kept; the result is stripped."""
    opening, closing = SPECIAL_STRINGS["channel_start"], SPECIAL_STRINGS["channel_end"]
    return "".join(piece.split(opening)[0] if opening in piece else piece for piece in text.split(closing)).strip()


def _render_builtin(conversation: _Conversation, add_generation_prompt: bool, thinking: bool) -> str:
    """The instruction-tuned checkpoints' layout (spec §5.4.1), byte for byte, in Python."""
    from .tool_format import format_call, format_declaration, format_response

    s = SPECIAL_STRINGS
    messages, tools = conversation.messages, conversation.tools
    out = [s["bos"]]
    last = None  # what the last message ended with: "tool_call", "tool_response" or a media kind
    if thinking or tools or messages[0]["role"] in ("system", "developer"):
        out.append(f"{s['turn_start']}system\n")
        if thinking:
            out.append(s["think"])
        if messages[0]["role"] in ("system", "developer"):
            content = messages[0]["content"]
            out.append((content if isinstance(content, str) else "".join(p["text"] for p in content)).strip())
            messages = messages[1:]
        for tool in tools or ():
            out.append(f"{s['tool_start']}{format_declaration(tool)}{s['tool_end']}")
        out.append(f"{s['turn_end']}\n")
    for message in messages:
        last = None
        role = "model" if message["role"] == "assistant" else message["role"]
        out.append(f"{s['turn_start']}{role}\n")
        for call in message.get("tool_calls") or ():
            out.append(format_call(call["function"]["name"], call["function"].get("arguments")))
            last = "tool_call"
        for response in message.get("tool_responses") or ():
            out.append(format_response(response.get("name", "unknown"), response["response"]))
            last = "tool_response"
        content = message.get("content")
        if isinstance(content, str):
            out.append(strip_thinking(content) if role == "model" else content.strip())
        for part in content if isinstance(content, list) else ():
            if part["type"] == "text":
                out.append(strip_thinking(part["text"]) if role == "model" else part["text"].strip())
            else:
                out.append(_MEDIA_TEXT[part["type"]])
                last = part["type"]
        if not (message.get("tool_responses") and not content):
            out.append(f"{s['turn_end']}\n")
    if add_generation_prompt:
        if last != "tool_response":
            out.append(f"{s['turn_start']}model\n")
        if not thinking:
            out.append(f"{s['channel_start']}thought\n{s['channel_end']}")
    return "".join(out)


MAX_RANGE = 100_000  # items one range() may yield in a template (Jinja's sandbox uses the same bound)
_WRITTEN_FACTOR = 4  # characters written anywhere (macros, set blocks) per character of allowed output
_DIGITS_RE = re.compile(r"\d+")
_PERCENT_SPEC_RE = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?")  # "%(key)-010.3f": width, precision
_BRACE_SPEC_RE = re.compile(r"\{[^{}:]*:([^{}]*)\}")  # "{0:>10.3}": the spec after the colon
_NESTED_SPEC_RE = re.compile(r"\{[^{}]*\{")  # "{:{width}}": a width taken from the arguments


class _Guard:
    """The time and size bounds of one template rendering."""

    def __init__(self, limits: MediaLimits) -> None:
        seconds = limits.max_template_seconds
        self.seconds = seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.chars = limits.max_template_chars
        self.written = 0

    def fail(self, problem: str) -> ChatFormatError:
        return ChatFormatError(f"chat template: {problem}")

    def tick(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise self.fail(f"rendering took longer than {self.seconds:g} s (raise MediaLimits.max_template_seconds)")

    def too_big(self, size: int, what: str) -> ChatFormatError:
        return self.fail(
            f"{what} would hold {size} items, more than {self.chars} (raise MediaLimits.max_template_chars)"
        )

    def size(self, size: int, what: str) -> None:
        if self.chars is not None and size > self.chars:
            raise self.too_big(size, what)

    def value(self, value: object, what: str) -> object:
        if isinstance(value, str | bytes | list | tuple | dict | set):
            self.size(len(value), what)
        return value

    def write(self, count: int) -> None:
        self.written += count
        if self.chars is not None and self.written > _WRITTEN_FACTOR * self.chars:
            raise self.fail(
                f"the template wrote more than {_WRITTEN_FACTOR * self.chars} characters "
                f"({_WRITTEN_FACTOR} × MediaLimits.max_template_chars) while rendering"
            )

    def numbers(self, values: Sequence[object], what: str) -> None:
        """Integer arguments (widths, counts, tab sizes) are refused above the size limit."""
        for value in values:
            if isinstance(value, Integral) and not isinstance(value, bool) and self.chars is not None:
                if abs(int(value)) > self.chars:
                    raise self.fail(
                        f"{what} got the number {int(value)}, more than {self.chars} "
                        "(raise MediaLimits.max_template_chars)"
                    )

    def format_string(self, fmt: object, what: str, args: Sequence[object] = ()) -> None:
        """Widths and precisions in a format string (``"%0999999999d"``, ``"{:>999999999}"``), and in its
        arguments when the string takes them from there (``"%*d"``, ``"{:{}}"``)."""
        if isinstance(fmt, str) and self.chars is not None:
            if "*" in fmt or _NESTED_SPEC_RE.search(fmt):
                self.numbers(args, what)
            widths = [w for match in _PERCENT_SPEC_RE.finditer(fmt) for w in match.groups() if w]
            widths += [w for match in _BRACE_SPEC_RE.finditer(fmt) for w in _DIGITS_RE.findall(match.group(1))]
            for digits in widths:
                if len(digits) > len(str(self.chars)) or int(digits) > self.chars:
                    raise self.fail(f"{what} asks for a width of {digits}, more than {self.chars} characters")

    def expansion(self, name: str, subject: object, args: Sequence[object]) -> None:
        """Pre-checks of the string operations whose result can be far larger than their inputs."""
        if not isinstance(subject, str):
            return
        if name in ("format", "format_map"):
            self.format_string(
                subject,
                f"{name}()",
                [*args, *(args[0].values() if name == "format_map" and args and isinstance(args[0], Mapping) else ())],
            )
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            old, new = args[0], args[1]
            count = len(subject) + 1 if old == "" else subject.count(old)
            self.size(len(subject) + count * max(len(new) - len(old), 0), "replace()")
        elif name == "join" and args and isinstance(args[0], Sequence):
            self.size(len(subject) * max(len(args[0]) - 1, 0), "join()")
        elif name == "expandtabs" and args and isinstance(args[0], Integral):
            self.size(len(subject) + subject.count("\t") * int(args[0]), "expandtabs()")

    def binop(self, operator: str, left: object, right: object) -> None:
        sized = str | bytes | list | tuple
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, sized) and isinstance(n, Integral):
                    self.size(len(seq) * max(int(n), 0), "a repetition (*)")
        elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            self.size(len(left) + len(right), "a concatenation (+)")
        elif operator == "**" and isinstance(left, Integral) and isinstance(right, Integral):
            if int(right) > 0 and abs(int(left)) > 1 and int(left).bit_length() * int(right) > 1_000_000:
                raise self.fail(f"{left} ** {right} is too large a number")
        elif operator == "%" and isinstance(left, str):
            values = right if isinstance(right, tuple) else right.values() if isinstance(right, Mapping) else (right,)
            self.format_string(left, "a % format", list(values))

    def iterate(self, iterable: object, literal_chars: int) -> Iterator[object]:
        """Every ``for`` loop's iterable: time checked at each step, the loop body's literal text counted."""
        for item in iterable:  # type: ignore[attr-defined]
            self.tick()
            if literal_chars:
                self.write(literal_chars)
            yield item


class _GuardedRange:
    """``range`` for templates: at most ``MAX_RANGE`` items, lazily, with the time checked at each step."""

    def __init__(self, guard: _Guard, *args: int) -> None:
        self.range = range(*args)
        try:
            length = len(self.range)
        except OverflowError:
            length = MAX_RANGE + 1
        if length > MAX_RANGE:
            raise guard.fail(f"range{args} has more than {MAX_RANGE} items")
        self.guard = guard

    def __len__(self) -> int:
        return len(self.range)

    def __iter__(self) -> Iterator[int]:
        for item in self.range:
            self.guard.tick()
            yield item

    def __reversed__(self) -> Iterator[int]:
        for item in reversed(self.range):
            self.guard.tick()
            yield item

    def __getitem__(self, index):
        return self.range[index]

    def __contains__(self, item: object) -> bool:
        return item in self.range


def _literal_chars(nodes_: Sequence[Any]) -> int:
    from jinja2 import nodes

    return sum(len(data.data) for node in nodes_ for data in node.find_all(nodes.TemplateData)) + sum(
        len(node.data) for node in nodes_ if isinstance(node, nodes.TemplateData)
    )


def _environment(guard: _Guard):
    """A sandboxed, immutable Jinja environment whose every loop, call, filter and operator is bounded."""
    from jinja2 import Environment, nodes
    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    injected = (Context, EvalContext, Environment)  # what pass_context & co. put before a filter's value

    class BoundedNamespace(Namespace):
        def __setitem__(self, name: str, value: Any) -> None:
            guard.tick()
            super().__setitem__(name, guard.value(value, f"namespace attribute {name!r}"))

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "+", "%", "**"})

        def _parse(self, source, name, filename):
            tree = super()._parse(source, name, filename)
            for loop in list(tree.find_all(nodes.For)):  # every for-loop iterates through the guard
                literal = nodes.Const(_literal_chars(loop.body), lineno=loop.lineno)
                loop.iter = nodes.Call(
                    nodes.Name("_bounded_iterate", "load", lineno=loop.lineno),
                    [loop.iter, literal],
                    [],
                    None,
                    None,
                    lineno=loop.lineno,
                )
            tree.set_environment(self)
            return tree

        def call_binop(self, context, operator, left, right):
            guard.tick()
            guard.binop(operator, left, right)
            return guard.value(super().call_binop(context, operator, left, right), f"a {operator} result")

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
            guard.tick()
            name = getattr(__obj, "__name__", type(__obj).__name__)
            subject = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)  # str.format is wrapped
            for value in (*args, *kwargs.values()):
                guard.value(value, f"an argument of {name}()")
            if isinstance(subject, str | list | tuple) and name not in ("format", "format_map"):  # ljust, zfill, …
                guard.numbers([*args, *kwargs.values()], f"{name}()")
            guard.expansion(name, subject, args)
            result = super().call(__context, __obj, *args, **kwargs)
            if isinstance(result, str):
                guard.write(len(result))
            return guard.value(result, f"the result of {name}()")

    def bounded_filter(name: str, function):
        @functools.wraps(function)  # keeps Jinja's pass_context / pass_environment marks
        def wrapper(*args, **kwargs):
            guard.tick()
            values = [a for a in args if not isinstance(a, injected)]  # the filtered value, then its arguments
            if name == "format" and values:  # value|format(*args): the arguments are what gets formatted
                guard.format_string(values[0], "the format filter", [*values[1:], *kwargs.values()])
            else:  # widths and counts: center(80), indent(4), truncate(255), …
                guard.numbers([*values[1:], *kwargs.values()], f"the {name} filter")
            if name in ("replace", "join") and values:
                guard.expansion(*_filter_subject(name, values, kwargs))
            return guard.value(function(*args, **kwargs), f"the result of the {name} filter")

        return wrapper

    def finalize(value: Any) -> Any:
        if isinstance(value, str):
            guard.write(len(value))
        return value

    env = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, finalize=finalize, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson  # as chat templates expect it: plain JSON, not HTML-escaped, keys in order
    env.filters = {name: bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals["strftime_now"] = _strftime_now
    env.globals["range"] = functools.partial(_GuardedRange, guard)
    env.globals["namespace"] = BoundedNamespace
    env.globals["_bounded_iterate"] = guard.iterate
    return env


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False
) -> str:
    """The ``tojson`` filter chat templates are written for: ``json.dumps`` with these defaults (Jinja's own
    escapes ``<`` and ``>`` for HTML, which would break control strings, and sorts keys)."""
    import json

    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
    """The current local time, formatted (templates write today's date into system prompts)."""
    import datetime

    return datetime.datetime.now().strftime(format)


def _filter_subject(name: str, values: list, kwargs: dict) -> tuple[str, object, list]:
    """(string method name, the string it acts on, its arguments) for the replace and join filters."""
    if name == "replace":  # value|replace(old, new)
        return "replace", values[0], values[1:]
    separator = values[1] if len(values) > 1 else kwargs.get("d", "")
    items = values[0] if isinstance(values[0], Sequence) else ()
    return "join", separator, [items]


_COMPILED: dict[tuple[str, int | None], Any] = {}  # (template, max_template_chars) → compiled code, oldest first
_COMPILED_KEPT = 8
_COMPILED_LOCK = threading.Lock()


def _compiled(env: Any, template: str, chars: int | None) -> Any:
    """A template's compiled code, shared by its renderings under the same size limit (compiling a checkpoint's
    template takes far longer than rendering it). Compiling runs in the rendering's own bounded environment, as
    Jinja evaluates constant filter calls then (``'x'|center(10**10)``): a refusal raises and caches nothing,
    and what was allowed under one size limit is reused only under the same limit. The code looks the environment
    (its guard, filters and globals) up when it runs, so each rendering keeps its own bounds and clock."""
    key = (template, chars)
    code = _COMPILED.get(key)
    if code is None:
        code = env.compile(template)
        with _COMPILED_LOCK:
            _COMPILED[key] = code
            while len(_COMPILED) > _COMPILED_KEPT:
                del _COMPILED[next(iter(_COMPILED))]
    return code


def _render_template(
    template: str,
    conversation: _Conversation,
    add_generation_prompt: bool,
    thinking: bool,
    limits: MediaLimits,
    template_kwargs: Mapping[str, Any],
) -> str:
    from jinja2 import TemplateError

    def raise_exception(message: str) -> None:
        raise ChatFormatError(f"chat template: {message}")

    guard = _Guard(limits)
    env = _environment(guard)
    env.globals["raise_exception"] = raise_exception
    out: list[str] = []
    length = 0
    try:
        context = {
            "bos_token": SPECIAL_STRINGS["bos"],
            "eos_token": SPECIAL_STRINGS["eos"],
            "pad_token": SPECIAL_STRINGS["pad"],
            **template_kwargs,
            # as transformers passes them: the conversation, its tools (None when there are none), the two flags
            "messages": conversation.messages,
            "tools": conversation.tools,
            "add_generation_prompt": add_generation_prompt,
            "enable_thinking": thinking,
        }
        code = _compiled(env, template, limits.max_template_chars)
        compiled = env.template_class.from_code(env, code, env.make_globals(None), None)
        chunks = compiled.generate(**context)
        for chunk in chunks:  # the output is checked as it grows, the clock between chunks
            length += len(chunk)
            guard.size(length, "the rendered prompt")
            guard.tick()
            out.append(chunk)
    except TemplateError as exc:
        raise ChatFormatError(f"chat template failed: {exc}") from exc
    except RecursionError:
        raise guard.fail("recursion too deep") from None
    except MemoryError:
        raise guard.fail("out of memory while rendering") from None
    except ArithmeticError as exc:
        raise ChatFormatError(f"chat template failed: {type(exc).__name__}: {exc}") from None
    return "".join(out)


def unprotect_segments(text: str, protected: Sequence[str]) -> list[tuple[bool, str]]:
    """Split rendered text into (is_user_literal, text) runs: sentinels become their original strings."""
    out: list[tuple[bool, str]] = []
    position = 0
    for match in _SENTINEL_RE.finditer(text):
        if match.start() > position:
            out.append((False, text[position : match.start()]))
        out.append((True, protected[int(match.group(1))]))
        position = match.end()
    if position < len(text):
        out.append((False, text[position:]))
    return out
