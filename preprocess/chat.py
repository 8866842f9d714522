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
form); ``tools`` are OpenAI's ``{"type": "function", "function": {"name", "description"?, "parameters"?}}`` or the
bare function ``{"name", …}`` (as :func:`data_specs.manifest.check_tools` accepts it), which is wrapped into the
former before rendering, so that the built-in layout and templates read one form.

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
100 000 items. No string or list longer than the size limit is built: every operation whose result can be far
larger than its inputs has that size computed from its inputs first, and is refused (naming the operation and
the size) before it runs — ``*`` (strings, lists, integers), ``%`` and the ``format`` filter, ``str.format`` and
``format_map`` (fields × (width + the widest argument)), ``~``, ``join`` and ``replace`` (filter and method),
``indent``, ``center``, ``wordwrap``, ``urlize``, ``escape``, ``tojson``, ``pprint``, ``xmlattr``, ``urlencode``,
``string``/``upper``/…, ``expandtabs``, ``translate``, ``sum`` of lists, ``slice``, ``batch``, ``lipsum``,
``strftime_now`` and printing a value. The text of a value (``str``, ``repr`` or JSON) is bounded by walking it
once, each shared part once, stopping as soon as it passes the limit (``[[s] * 1000] * 1000`` is a few bytes
of memory and a thousand million characters of text). Lazy filters (``map``, ``select``, ``batch`` …) are
charged per item as they are consumed, and every character written, in loops, macros and ``set`` blocks
included, counts against a budget of 4 × ``max_template_chars``. Recursion too deep for Python, a
``MemoryError`` or an arithmetic error become :class:`ChatFormatError` too. This bounds the known ways to
exhaust time and memory from a template; it is a guard in process, not an operating-system limit.

Protection: before rendering, every control string inside text from anyone but the model (system, developer,
user and tool text, tool responses, tool declarations) and any private-use sentinel character is replaced by a
sentinel ``\\ue000<k>\\ue001``; :class:`RenderedPrompt` keeps the originals so the tokenizer encodes them as
plain text. Every string a template can reach is protected, at any depth and mapping keys included: the keys of
a tool response, the property names of a declaration's ``parameters``, the argument keys of a call, the fields
of a message or part that the layout does not read (``name``, ``reasoning_content``, a text part's extras) and
the options of a media part (its loader reads them as given). Text of model turns and tool calls (names, ids,
argument keys and values) are the model's own output and keep their control strings (so thought channels can
be removed), except media placeholders; a call is matched to OpenAI's tool messages by its id and name as
given, before protection. Every media placeholder in the rendered prompt therefore belongs to a media part, in
order. A key holding a control string sorts as its sentinel where a template sorts keys (``dictsort``), so its
place among the others may differ from the raw conversation's.

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
from collections.abc import ItemsView, Iterator, KeysView, Mapping, Sequence, Set, Sized, ValuesView
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
        """Every string inside ``value`` protected, at any depth: mapping keys and values, list items. Keys are
        text a template writes too (the property names of a tool declaration, the keys of a tool response or of
        a call's arguments). Protected keys stay distinct: sentinels are numbered and a sentinel character of
        the input is itself protected."""
        if isinstance(value, str):
            return self.text(value, model=model)
        if isinstance(value, Mapping):
            return {self.key(key, model=model): self.values(item, model=model) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.values(item, model=model) for item in value]
        return value

    def key(self, key: Any, *, model: bool = False) -> Any:
        """A mapping key: a string protected as text, any other key (a number) as it is."""
        return self.text(key, model=model) if isinstance(key, str) else key


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
        # Fields a template may write that the layout does not read (a name, an id, a reasoning field) are text
        # too: protected like the rest, keys included.
        out = {
            key if key in _MESSAGE_FIELDS else self.protect.key(key, model=model): (
                value if key in _MESSAGE_FIELDS else self.protect.values(value, model=model)
            )
            for key, value in message.items()
        }
        calls = _tool_calls(message.get("tool_calls"), where)
        given = message.get("tool_responses")
        if answers:  # OpenAI's tool messages become Gemma's tool_responses, after any the message has
            had = [] if given is None else [response for _, response in _entries(given, f"{where}.tool_responses")]
            given = [*had, *(_tool_result(answer, at, calls or [], index) for answer, at in answers)]
        if calls is not None:  # protected after the responses are matched to them (by id and name, as given)
            calls = [self.protect.values(call, model=model) for call in calls]
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
            return self.protect.values(dict(part), model=model)
        if kind not in MEDIA_KINDS:
            raise ChatFormatError(
                f"{where}: unknown content type {kind!r}; expected text, image, audio, video (or OpenAI's "
                f"{', '.join(OPENAI_PART_TYPES)})"
            )
        if part.get(kind) is None:
            raise ChatFormatError(f"{where}: an {kind} part needs its data under {kind!r} (or a 'url' or 'path')")
        options = {k: v for k, v in part.items() if k not in ("type", kind)}
        self.media.append(MediaPart(kind, part[kind], options, where))
        # The data stays out of the template's reach; the options reach it as protected text (the loaders read
        # the options as given).
        return {"type": kind, **self.protect.values(options, model=model)}

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
        return [self.protect.values(_tool_spec(tool, j)) for j, tool in enumerate(tools)]


def _tool_spec(tool: Any, index: int) -> dict[str, Any]:
    """``tools[index]`` as OpenAI's ``{"type": "function", "function": {"name": …, …}}``: a bare function
    ``{"name": …, "description": …, "parameters": …}`` (which :func:`data_specs.manifest.check_tools` accepts, as
    does OpenAI's Responses API with its ``"type": "function"`` beside the name) is wrapped, so templates and the
    built-in layout read one form."""
    if isinstance(tool, Mapping) and "function" not in tool and isinstance(tool.get("name"), str):
        function = {k: v for k, v in tool.items() if not (k == "type" and v == "function")}
        tool = {"type": "function", "function": function}
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise ChatFormatError(
            f"tools[{index}] must be {{'type': 'function', 'function': {{'name': …, 'description': …, "
            f"'parameters': …}}}} or the bare function {{'name': …, …}}, got {_kind_of(tool)}"
        )
    return dict(tool)


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]] | None:
    """A message's tool calls validated, each in OpenAI's form ``{"type": "function", **extra, "function":
    {"name", "arguments": mapping}}`` (a JSON string of arguments parsed); not yet protected."""
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
        extra = {k: v for k, v in call.items() if k not in ("function", "name", "arguments")}
        out.append({"type": "function", **extra, "function": dict(function, arguments=arguments)})
    return out


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


# Message fields validated and rebuilt by _Conversation._message; every other field is protected as it is.
_MESSAGE_FIELDS = frozenset({"role", "content", "tool_calls", "tool_responses"})
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
_ITEM_COST = 64  # size units charged per item a lazy filter yields: about the bytes of a small Python object
_FIELD_SLACK = 330  # characters one format field may add beyond its width and its argument ("%f" % 1e308: 316)
_MAX_BITS = 1_000_000  # the largest integer (in bits) a template may make with ** or *
_OBJECT_TEXT = 200  # an upper bound on the text of any other object a template reaches ("<Macro 'f'>", Undefined)
_DIGITS_RE = re.compile(r"\d+")
_PERCENT_SPEC_RE = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?")  # "%(key)-010.3f": width, precision
_BRACE_SPEC_RE = re.compile(r"\{[^{}:]*:([^{}]*)\}")  # "{0:>10.3}": the spec after the colon
_NESTED_SPEC_RE = re.compile(r"\{[^{}]*\{")  # "{:{width}}": a width taken from the arguments
_ASCII_CONVERSION_RE = re.compile(r"%(?:\([^)]*\))?[-#0 +*\d.]*a|!a")  # "%a", "{!a}": ascii() escapes non-ASCII
_JSON_CONTROLS = "".join(map(chr, range(0x20)))  # what JSON writes as \n or \u00NN
_CONTROLS = _JSON_CONTROLS + "\x7f"  # what repr() writes as \n, \t or \xNN
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines() breaks
# What a regular expression's \s matches (str.isspace()): where the urlize filter splits words.
_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)


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

    def too_big(self, size: int | None, what: str) -> ChatFormatError:
        """``size`` None: a measure stopped as soon as it passed the limit."""
        amount = f"more than {self.chars}" if size is None else f"{size}, more than {self.chars}"
        return self.fail(f"{what} would hold {amount} characters or items (raise MediaLimits.max_template_chars)")

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

    def format_string(self, fmt: object, what: str, args: Sequence[object] = ()) -> int:
        """Widths and precisions in a format string (``"%0999999999d"``, ``"{:>999999999}"``), and in its
        arguments when the string takes them from there (``"%*d"``, ``"{:{}}"``), refused above the size limit;
        the widest of them returned."""
        if not isinstance(fmt, str) or self.chars is None:
            return 0
        taken = "*" in fmt or _NESTED_SPEC_RE.search(fmt)
        if taken:
            self.numbers(args, what)
        widths = [w for match in _PERCENT_SPEC_RE.finditer(fmt) for w in match.groups() if w]
        widths += [w for match in _BRACE_SPEC_RE.finditer(fmt) for w in _DIGITS_RE.findall(match.group(1))]
        for digits in widths:
            if len(digits) > len(str(self.chars)) or int(digits) > self.chars:
                raise self.fail(f"{what} asks for a width of {digits}, more than {self.chars} characters")
        numbers = [abs(int(a)) for a in args if isinstance(a, Integral) and not isinstance(a, bool)] if taken else []
        return max([0, *map(int, widths), *numbers])

    def measure(self, what: str, **options: Any) -> _Measure:
        return _Measure(self, what, **options)

    def text(self, value: object, what: str) -> int:
        """An upper bound on ``len(str(value))``, refused above the size limit before ``str`` builds it."""
        if self.chars is None or isinstance(value, str):
            return len(value) if isinstance(value, str) else 0
        size = self.measure(what).text(value)
        self.size(size, what)
        return size

    def expansion(self, name: str, subject: object, args: Sequence[object], kwargs: Mapping[str, Any]) -> None:
        """Pre-checks of the string methods whose result can be far larger than their inputs: the size of the
        result is computed from the arguments and refused before the method runs."""
        if not isinstance(subject, str | bytes) or self.chars is None:
            return
        what = f"{name}()"
        if name in ("format", "format_map") and isinstance(subject, str):
            given = [*args, *kwargs.values()]
            if name == "format_map" and args and isinstance(args[0], Mapping):
                given = [*args[0].values()]
            self.size(_brace_bound(self, subject, given, what), what)
        elif name == "replace" and len(args) >= 2:
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            self.size(_replace_bound(self, subject, args[0], args[1], count, what), what)
        elif name == "join" and args:
            self.size(_join_bound(self, subject, args[0], what), what)
        elif name == "expandtabs":
            tabsize = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(tabsize, Integral):
                tab = "\t" if isinstance(subject, str) else b"\t"
                self.size(len(subject) + subject.count(tab) * max(int(tabsize), 0), what)  # type: ignore[arg-type]
        elif name == "translate" and args and isinstance(subject, str):
            table = args[0]
            measure = self.measure(what)
            replacements = (
                table.values() if isinstance(table, Mapping) else table if isinstance(table, Sequence) else ()
            )
            widest = max((measure.text(r) for r in replacements if isinstance(r, str)), default=1)
            self.size(len(subject) * max(widest, 1), what)

    def binop(self, operator: str, left: object, right: object) -> None:
        sized = str | bytes | list | tuple
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, sized) and isinstance(n, Integral):
                    self.size(len(seq) * max(int(n), 0), "a repetition (*)")
            if _is_integer(left) and _is_integer(right):
                if int(left).bit_length() + int(right).bit_length() > _MAX_BITS:
                    raise self.fail(
                        f"a product of {int(left).bit_length()}-bit and {int(right).bit_length()}-bit "
                        "integers is too large a number"
                    )
        elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            self.size(len(left) + len(right), "a concatenation (+)")
        elif operator == "**" and isinstance(left, Integral) and isinstance(right, Integral):
            if int(right) > 0 and abs(int(left)) > 1 and int(left).bit_length() * int(right) > _MAX_BITS:
                raise self.fail(f"{left} ** {right} is too large a number")
        elif operator == "%" and isinstance(left, str | bytes) and self.chars is not None:
            fmt = left.decode("latin-1") if isinstance(left, bytes) else left  # b"%9999999s": the same fields
            self.size(_percent_bound(self, fmt, right, "a % format"), "a % format")

    def iterate(self, iterable: object, literal_chars: int) -> Iterator[object]:
        """Every ``for`` loop's iterable: time checked at each step, the loop body's literal text counted."""
        for item in iterable:  # type: ignore[attr-defined]
            self.tick()
            if literal_chars:
                self.write(literal_chars)
            yield item

    def items(self, iterator: Iterator[object], what: str) -> Iterator[object]:
        """What a lazy filter yields (``batch``, ``slice``, ``map`` …), with the time checked at each item and
        :data:`_ITEM_COST` units (plus its length) charged per item against the size limit, so that ``|list``
        cannot gather millions of new objects (``[]|slice(10**7)|list``) before a size check sees them."""
        cost = 0
        for item in iterator:
            self.tick()
            if self.chars is not None:
                cost += _ITEM_COST + (len(item) if isinstance(item, str | bytes | list | tuple | dict) else 0)
                if cost > self.chars:
                    raise self.too_big(None, what)
            yield item

    def collect(self, iterable: object, what: str) -> object:
        """An iterator made a list (through :meth:`items`) so that its size can be known before it is used;
        anything else as it is."""
        if isinstance(iterable, Iterator):
            return list(self.items(iterable, what))
        return iterable


def _is_integer(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


class _Measure:
    """Upper bounds on the length of ``str(value)``, ``repr(value)`` or ``json.dumps(value)``, computed without
    building them: a template can make values whose text is far larger than their memory (``[[s] * 1000] * 1000``
    holds one string a million times). Each container is walked once (a shared one is remembered by its id), and
    the walk stops as soon as its running total passes the size limit, so it takes about ``max_template_chars``
    steps at most, the clock checked as it goes. Besides the characters, :meth:`shape` counts the elements, the
    nesting levels and the widest indentation ``pprint`` may put before a line, for the filters that lay text out
    on lines (``tojson`` with an indent, ``pprint``)."""

    def __init__(
        self,
        guard: _Guard,
        what: str,
        *,
        json: bool = False,
        ensure_ascii: bool = False,
        separators: tuple[str, str] | None = None,
    ) -> None:
        self.guard, self.what = guard, what
        self.limit = guard.chars if guard.chars is not None else float("inf")
        self.json, self.ensure_ascii = json, ensure_ascii
        item, key = separators if separators is not None else (", ", ": ")
        self.item_separator, self.key_separator = len(str(item)), len(str(key))
        from jinja2.utils import Namespace

        self.namespace = Namespace
        self.known: dict[int, tuple[int, int, int, int]] = {}
        self.open: set[int] = set()
        self.steps = 0

    def text(self, value: object) -> int:
        """``len(str(value))`` or ``len(json.dumps(value))``, at most."""
        if isinstance(value, str) and not self.json:
            return len(value)
        return self.shape(value)[0]

    def repr(self, value: object) -> int:
        """``len(repr(value))`` (or ``ascii(value)`` when ``ensure_ascii``), at most."""
        return self.shape(value)[0]

    def shape(self, value: object) -> tuple[int, int, int, int]:
        """(characters, elements at any depth, nesting levels, widest line prefix) of ``repr`` or JSON."""
        if isinstance(value, str):
            head = 0 if self.json or type(value) is str else len(type(value).__name__) + 2  # Markup('…')
            return (head + (_json_length(value, self.ensure_ascii) if self.json else self._repr(value)), 0, 0, 0)
        if value is None or isinstance(value, bool | float):
            return (24, 0, 0, 0)  # repr of a float: at most 24 characters ("-2.2250738585072014e-308")
        if isinstance(value, Integral):
            return (int(value).bit_length() * 146 // 485 + 2, 0, 0, 0)  # 146/485 > log10(2)
        if isinstance(value, bytes | bytearray):
            return (4 * len(value) + 14, 0, 0, 0)  # bytearray(b'\xNN…')
        entries = self._entries(value)
        if entries is None:
            return (_OBJECT_TEXT, 0, 0, 0)
        key = id(value)
        if key in self.known:
            return self.known[key]
        if key in self.open:
            return (5, 0, 0, 0)  # a cycle: repr writes "[...]" ("{...}" for a dict)
        self.open.add(key)
        # What a type adds around its brackets: "set()", "frozenset({…})", "dict_keys([…])", "<Namespace {…}>"
        head = 0 if self.json or type(value) in (list, tuple, dict) else len(type(value).__name__) + 2
        chars, elements, levels, prefix = head + 2, 0, 0, 0
        keyed = isinstance(value, Mapping | self.namespace)
        for entry in entries:
            self.steps += 1
            if self.steps % 4096 == 0:
                self.guard.tick()
            item = entry[1] if keyed else entry
            sub = self.shape(item)
            before = head + 1  # the opening bracket (and a type name) before an element
            if keyed:
                before += self._key(entry[0]) + self.key_separator
            chars += before - head - 1 + sub[0] + self.item_separator
            elements += 1 + sub[1]
            levels = max(levels, sub[2])
            prefix = max(prefix, before + sub[3])
            if chars > self.limit:
                raise self.guard.too_big(None, self.what)
        self.open.discard(key)
        self.known[key] = shape = (chars, elements, levels + 1, prefix)
        return shape

    def _entries(self, value: object) -> Any:
        if isinstance(value, self.namespace):
            return None if self.json else object.__getattribute__(value, "_Namespace__attrs").items()
        if isinstance(value, Mapping):
            return value.items()
        if isinstance(value, list | tuple):
            return value
        if not self.json and isinstance(value, Set | KeysView | ValuesView | ItemsView):
            return value
        return None

    def _key(self, key: object) -> int:
        if self.json and not isinstance(key, str):
            return self.shape(key)[0] + 2  # a number, bool or None key is written as a string
        return self.shape(key)[0]

    def _repr(self, text: str) -> int:
        length = _repr_length(text)
        if self.ensure_ascii and not text.isascii():  # ascii(): every non-ASCII character as \xNN … \UNNNNNNNN
            length += 9 * (len(text) - len(text.encode("ascii", "ignore")))
        return length


def _count(characters: str, text: str) -> int:
    """How many characters of ``text`` are one of ``characters`` (``str.count`` of each: fast, and nothing built)."""
    if text.isascii():
        characters = "".join(c for c in characters if c.isascii())
    return sum(text.count(c) for c in characters)


def _repr_length(text: str) -> int:
    """An upper bound on ``len(repr(text))``: the quotes, an escape before each backslash and quote, ``\\xNN`` for an
    ASCII control character and at most ``\\UNNNNNNNN`` for any other character Python does not print."""
    length = len(text) + 2 + text.count("\\") + text.count("'")
    if not text.isprintable():
        length += 3 * _count(_CONTROLS, text)
        if not text.isascii():
            length += 9 * (len(text) - len(text.encode("ascii", "ignore")))
    return length


def _json_length(text: str, ensure_ascii: bool) -> int:
    """An upper bound on the length of ``text`` as a JSON string: the quotes, ``\\"``, ``\\\\``, ``\\u00NN`` for a
    control character and, with ``ensure_ascii``, ``\\uNNNN\\uNNNN`` for any other non-ASCII character."""
    length = len(text) + 2 + text.count('"') + text.count("\\")
    if not text.isprintable():
        length += 5 * _count(_JSON_CONTROLS, text)
    if ensure_ascii and not text.isascii():
        length += 11 * (len(text) - len(text.encode("ascii", "ignore")))
    return length


# --- the size of a result, from its inputs -----------------------------------------------------------------------
# Each returns an upper bound on the length of what the operation would build; the guard refuses it above the
# size limit before the operation runs. A measure may itself stop early (the arguments' text passed the limit).


def _percent_bound(guard: _Guard, fmt: str, right: object, what: str) -> int:
    """``fmt % right``: the format's own text, then each field its width (or precision) and some slack, and the
    arguments' text once each (a tuple's items and a lone value are used once; a mapping's values may be named
    by many fields)."""
    measure = guard.measure(what, ensure_ascii=bool(_ASCII_CONVERSION_RE.search(fmt)))
    values = list(right) if isinstance(right, tuple) else list(right.values()) if isinstance(right, Mapping) else []
    widest = guard.format_string(fmt, what, values if isinstance(right, tuple) else [])
    fields = fmt.count("%")
    per_field = widest + _FIELD_SLACK
    if isinstance(right, tuple):
        used_once = sum(measure.repr(v) for v in right)
    else:
        used_once = measure.repr(right)
        if isinstance(right, Mapping):
            per_field += max((measure.repr(v) for v in values), default=0)
    return len(fmt) + used_once + fields * per_field


def _brace_bound(guard: _Guard, fmt: str, given: Sequence[object], what: str) -> int:
    """``fmt.format(…)``: any field may name any argument (``"{0}{0}{0}"``), so each field is bounded by its
    width, some slack and twice the widest argument (digit grouping, ``"{:,}"``, lengthens a number)."""
    measure = guard.measure(what, ensure_ascii="!a" in fmt)
    widest = guard.format_string(fmt, what, list(given))
    largest = max((measure.repr(v) for v in given), default=0)
    return len(fmt) + fmt.count("{") * (widest + _FIELD_SLACK + 2 * largest)


def _replace_bound(guard: _Guard, subject: object, old: object, new: object, count: object, what: str) -> int:
    """``str(subject).replace(str(old), str(new), count)``."""
    length = guard.text(subject, what)
    if isinstance(subject, str) and isinstance(old, Integral | float):  # the filter writes str(old): 1 → "1"
        old = str(old)
    if isinstance(subject, str | bytes) and type(old) is type(subject):
        found = len(subject) + 1 if not old else subject.count(old)  # type: ignore[arg-type]
        removed = len(old)  # type: ignore[arg-type]
    else:
        found, removed = length + 1, 0
    if isinstance(count, Integral) and not isinstance(count, bool) and int(count) >= 0:
        found = min(found, int(count))
    added = len(new) if isinstance(new, str | bytes) else guard.text(new, what)
    return length + found * max(added - removed, 0)


def _join_bound(guard: _Guard, separator: object, items: object, what: str) -> int:
    """``separator.join(map(str, items))``: the separator between the items, and every item's text (each
    measured: an item repeated by ``*`` counts each time)."""
    if isinstance(items, str | bytes):
        return len(items) * (1 + guard.text(separator, what))
    if not isinstance(items, Sized) or isinstance(items, Iterator):
        return 0  # consumed as it goes: a for loop's guarded iteration, or an error of the method itself
    measure = guard.measure(what)
    total = guard.text(separator, what) * max(len(items) - 1, 0)
    for item in items:  # type: ignore[attr-defined]
        total += item.__len__() if isinstance(item, str | bytes) else measure.text(item)
        if guard.chars is not None and total > guard.chars:
            raise guard.too_big(None, what)
    return total


def _argument(values: Sequence[object], kwargs: Mapping[str, Any], index: int, name: str, default: Any) -> Any:
    """A filter's argument ``index`` (0 the filtered value), given by position or by ``name``."""
    return values[index] if len(values) > index else kwargs.get(name, default)


def _indent_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    text, width = values[0], _argument(values, kwargs, 1, "width", 4)
    if not isinstance(text, str):
        return 0  # the filter fails on anything but a string
    indent = len(width) if isinstance(width, str) else max(int(width), 0) if isinstance(width, Integral) else 0
    lines = _count(_LINE_BREAKS, text) + 2  # the filter appends a line break, then indents every line
    return len(text) + 1 + lines * indent


def _wordwrap_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    text = values[0]
    wrap = _argument(values, kwargs, 4, "wrapstring", None)
    wrap_length = 1 if wrap is None else guard.text(wrap, what)
    length = guard.text(text, what)
    return length + (length + 1) * wrap_length  # at most one wrap string per character


def _urlize_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    """Each word may become ``<a href="URL" rel="…" target="…">URL</a>``, its characters escaped (at most ×5)."""
    text = values[0]
    length = guard.text(text, what)
    words = (_count(_WHITESPACE, text) if isinstance(text, str) else length) + 1
    extra = sum(
        guard.text(v, what)
        for v in (_argument(values, kwargs, 3, "target", None), _argument(values, kwargs, 4, "rel", None))
        if v is not None
    )
    return 10 * length + words * (100 + extra)


def _escape_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    text = values[0]
    if isinstance(text, str):
        return len(text) + 4 * sum(text.count(c) for c in "&<>'\"")  # &amp; &lt; &gt; &#39; &#34;
    return 5 * guard.text(text, what)


def _tojson_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    value = values[0]
    ensure_ascii = _argument(values, kwargs, 1, "ensure_ascii", False)
    indent = _argument(values, kwargs, 2, "indent", None)
    separators = _argument(values, kwargs, 3, "separators", None)
    if separators is None:
        separators = (", ", ": ") if indent is None else (",", ": ")
    if not (isinstance(separators, Sequence) and len(separators) == 2):
        return 0  # json.dumps refuses it
    measure = guard.measure(what, json=True, ensure_ascii=bool(ensure_ascii), separators=tuple(separators))
    chars, elements, levels, _ = measure.shape(value)
    if indent is None:
        return chars
    step = len(indent) if isinstance(indent, str) else max(int(indent), 0) if isinstance(indent, Integral) else 0
    return chars + (2 * elements + 1) * (1 + levels * step)  # a line per element and per closing bracket


def _pprint_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    """``pprint.pformat``: the repr, each string cut into quoted chunks, and a line per element or chunk with at
    most the widest prefix (brackets, type names and dict keys on the way down) before it."""
    chars, elements, _, prefix = guard.measure(what).shape(values[0])
    return 3 * chars + (elements + chars + 1) * (prefix + 2)


def _slice_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    """``slice(n)`` yields ``n`` lists holding the value's items (and a fill item each), in the units of
    :meth:`_Guard.items`."""
    slices, items = _argument(values, kwargs, 1, "slices", 0), values[0]
    if not _is_integer(slices) or not isinstance(items, Sized):
        return 0
    return max(int(slices), 0) * (_ITEM_COST + 1) + len(items)


def _batch_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    """``batch(n)`` yields a list per ``n`` items of the value (the last one filled up to ``n``)."""
    size, items = _argument(values, kwargs, 1, "linecount", 1), values[0]
    if not _is_integer(size) or int(size) <= 0 or not isinstance(items, Sized):
        return 0
    return -(-len(items) // int(size)) * _ITEM_COST + len(items) + int(size)


def _center_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    width = _argument(values, kwargs, 1, "width", 80)
    return max(guard.text(values[0], what), int(width) if isinstance(width, Integral) else 0)


def _text_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    """Filters that make their value a string first (``string``, ``upper`` …) and change its length little."""
    return guard.text(values[0], what)


def _xmlattr_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    return 6 * guard.text(values[0], what) + 2


def _urlencode_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    return 12 * guard.text(values[0], what) + 2  # %XX for each of up to 4 UTF-8 bytes


def _format_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    fmt = values[0]
    if not isinstance(fmt, str):  # the filter formats str(value): made once its length is known to be bounded
        guard.text(fmt, what)
        fmt = str(fmt)
    return _percent_bound(guard, fmt, kwargs if kwargs else tuple(values[1:]), what)


def _join_filter_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    return _join_bound(guard, _argument(values, kwargs, 1, "d", ""), values[0], what)


def _replace_filter_bound(guard: _Guard, values: list, kwargs: dict, what: str) -> int:
    old, new = _argument(values, kwargs, 1, "old", ""), _argument(values, kwargs, 2, "new", "")
    return _replace_bound(guard, values[0], old, new, _argument(values, kwargs, 3, "count", None), what)


def _sum_bound(guard: _Guard, values: list, kwargs: dict, what: str, environment: Any = None) -> int:
    """``sum`` of lists or tuples (``start=[]``) copies the running total at each step: both the result and the
    copying are bounded, from the items' lengths."""
    start = _argument(values, kwargs, 2, "start", 0)
    items = values[0]
    if not isinstance(start, list | tuple) or not isinstance(items, Sized) or guard.chars is None:
        return 0
    attribute = _argument(values, kwargs, 1, "attribute", None)
    if attribute is not None:
        from jinja2.filters import make_attrgetter

        get = make_attrgetter(environment, attribute)
        items = [get(item) for item in items]  # type: ignore[attr-defined]
    total = copied = len(start)
    for item in items:  # type: ignore[attr-defined]
        total += len(item) if isinstance(item, Sized) else 0
        copied += total
        if copied > _WRITTEN_FACTOR * guard.chars:
            raise guard.fail(f"{what} would copy more than {_WRITTEN_FACTOR * guard.chars} items while adding lists")
    return total


# Filter name → the bound of its result, from (guard, the filtered value and its arguments, keywords, what).
_FILTER_BOUNDS = {
    "indent": _indent_bound,
    "join": _join_filter_bound,
    "replace": _replace_filter_bound,
    "format": _format_bound,
    "wordwrap": _wordwrap_bound,
    "urlize": _urlize_bound,
    "escape": _escape_bound,
    "e": _escape_bound,
    "forceescape": _escape_bound,
    "tojson": _tojson_bound,
    "pprint": _pprint_bound,
    "center": _center_bound,
    "xmlattr": _xmlattr_bound,
    "urlencode": _urlencode_bound,
    "sum": _sum_bound,
    "slice": _slice_bound,
    "batch": _batch_bound,
    **dict.fromkeys(
        ("string", "safe", "capitalize", "lower", "upper", "title", "trim", "striptags", "wordcount"), _text_bound
    ),
}
_COLLECTED = frozenset({"join", "sum"})  # filters given an iterator: it is made a list first, to be measured


def _lipsum_bound(args: Sequence[object], kwargs: Mapping[str, Any]) -> int:
    """``lipsum(n=5, html=True, min=20, max=100)``: ``n`` paragraphs of fewer than ``max`` words each."""
    from jinja2.constants import LOREM_IPSUM_WORDS

    given = {**dict(zip(("n", "html", "min", "max"), args, strict=False)), **kwargs}
    paragraphs, low, high = (given.get(key, default) for key, default in (("n", 5), ("min", 20), ("max", 100)))
    if not (_is_integer(paragraphs) and _is_integer(low) and _is_integer(high)):
        return 0  # lipsum itself refuses them
    words = max(int(low), int(high), 0)
    longest = max(len(word) for word in LOREM_IPSUM_WORDS.split()) + 2  # a word, a comma or a full stop, a space
    return max(int(paragraphs), 0) * (words * longest + 10)


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
    from jinja2.runtime import Context, markup_join
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace, generate_lorem_ipsum
    from jinja2.visitor import NodeTransformer

    injected = (Context, EvalContext, Environment)  # what pass_context & co. put before a filter's value

    class BoundedNamespace(Namespace):
        def __setitem__(self, name: str, value: Any) -> None:
            guard.tick()
            super().__setitem__(name, guard.value(value, f"namespace attribute {name!r}"))

    class BoundedConcat(NodeTransformer):
        """``a ~ b`` (Jinja's Concat, not an intercepted operator) becomes ``_bounded_concat(a, b)``."""

        def visit_Concat(self, node):  # noqa: N802 - NodeTransformer's naming
            self.generic_visit(node)
            name = nodes.Name("_bounded_concat", "load", lineno=node.lineno)
            return nodes.Call(name, list(node.nodes), [], None, None, lineno=node.lineno)

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
            tree = BoundedConcat().visit(tree)
            tree.set_environment(self)
            return tree

        def call_binop(self, context, operator, left, right):
            guard.tick()
            guard.binop(operator, left, right)
            return guard.value(super().call_binop(context, operator, left, right), f"a {operator} result")

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
            guard.tick()
            if __obj is bounded_concat:  # sized inside; its result is no new text (the pieces were counted)
                return bounded_concat(__context.eval_ctx.autoescape, *args)
            name = getattr(__obj, "__name__", type(__obj).__name__)
            subject = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)  # str.format is wrapped
            for value in (*args, *kwargs.values()):
                guard.value(value, f"an argument of {name}()")
            if isinstance(subject, str | bytes | list | tuple) and name not in ("format", "format_map"):
                guard.numbers([*args, *kwargs.values()], f"{name}()")  # ljust, zfill, center …
            if name == "join" and isinstance(subject, str | bytes) and args:  # a generator is measured as a list
                args = (guard.collect(args[0], "join()"), *args[1:])
            guard.expansion(name, subject, args, kwargs)
            result = super().call(__context, __obj, *args, **kwargs)
            if isinstance(result, str):
                guard.write(len(result))
            return guard.value(result, f"the result of {name}()")

    bounds = {**_FILTER_BOUNDS, "sum": lambda *given: _sum_bound(*given, environment=env)}

    def bounded_filter(name: str, function):
        bound = bounds.get(name)
        what = f"the {name} filter"

        @functools.wraps(function)  # keeps Jinja's pass_context / pass_environment marks
        def wrapper(*args, **kwargs):
            guard.tick()
            lead = [a for a in args if isinstance(a, injected)]
            values = [a for a in args if not isinstance(a, injected)]  # the filtered value, then its arguments
            if name != "format":  # widths and counts: center(80), indent(4), truncate(255), … (format's are values)
                guard.numbers([*values[1:], *kwargs.values()], what)
            if name in _COLLECTED and values:
                values[0] = guard.collect(values[0], what)
                args = (*lead, *values)
            if bound is not None and values and guard.chars is not None:
                guard.size(bound(guard, values, kwargs, what), what)
            result = function(*args, **kwargs)
            if isinstance(result, Iterator):  # batch, slice, map, select …: counted as they are consumed
                return guard.items(result, what)
            return guard.value(result, f"the result of {name} filter")

        return wrapper

    def bounded_concat(autoescape: bool, *items: Any) -> str:
        if guard.chars is not None:
            size = 0
            for item in items:  # mostly strings: their length, without a measure
                size += len(item) if type(item) is str else guard.text(item, "a concatenation (~)")
            guard.size(size, "a concatenation (~)")
        return markup_join(items) if autoescape else "".join(map(str, items))

    def finalize(value: Any) -> Any:
        if isinstance(value, str):
            guard.write(len(value))
        elif isinstance(value, Mapping | list | tuple | Set | Namespace):  # str() would build its text
            guard.write(guard.text(value, "a printed value"))
        return value

    def lipsum(*args: Any, **kwargs: Any) -> str:
        if guard.chars is not None:
            guard.size(_lipsum_bound(args, kwargs), "lipsum()")
        return generate_lorem_ipsum(*args, **kwargs)

    def strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
        if isinstance(format, str):
            guard.size(len(format) + 64 * format.count("%"), "strftime_now()")
        return _strftime_now(format)

    env = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, finalize=finalize, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson  # as chat templates expect it: plain JSON, not HTML-escaped, keys in order
    env.filters = {name: bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals["strftime_now"] = strftime_now
    env.globals["lipsum"] = lipsum
    env.globals["range"] = functools.partial(_GuardedRange, guard)
    env.globals["namespace"] = BoundedNamespace
    env.globals["_bounded_iterate"] = guard.iterate
    env.globals["_bounded_concat"] = bounded_concat
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
