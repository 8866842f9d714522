"""Chat messages → the prompt string of the Gemma 4 turn layout (spec §5.4), with user text protected.

Messages take the widely used form ``[{"role": "system"|"user"|"assistant"|"model", "content": str | [parts]}]``
with parts ``{"type": "text", "text": …}``, ``{"type": "image", "image": …, "budget": 280?}``,
``{"type": "audio", "audio": path | bytes | (array, sample_rate)}`` and
``{"type": "video", "video": …, "num_frames": 32?, "budget": 70?}``.

Rendering: with no template, the built-in layout — one ``<bos>``, then ``<|turn>ROLE\\n`` + content +
``<turn|>\\n`` per message (``assistant`` is written ``model``), then ``<|turn>model\\n`` when a generation
prompt is asked for; ``enable_thinking`` puts ``<|think|>`` at the start of the system turn (adding one if
needed). Media parts become ``<|image|>``, ``<|audio|>`` and ``<|video|>`` in place. With a checkpoint's
``chat_template.jinja``, the template is rendered instead in a sandboxed Jinja environment (``trim_blocks``,
``lstrip_blocks``, as transformers renders chat templates), so the checkpoint's exact whitespace is used.

A template is code from a checkpoint, so its rendering is bounded (``MediaLimits.max_template_seconds`` and
``max_template_chars``; :class:`ChatFormatError` names the limit): the elapsed time is checked at every loop
step (every ``for`` iterates through a guard), call, filter and intercepted operator; ``range`` yields at most
100 000 items; strings and lists made by ``*``, ``+``, ``%``, calls, filters and ``namespace`` assignments are
refused beyond the size limit, before they are built where the arguments tell (``"x" * 10**10``,
``center(10**10)``, ``"%010000000000d"``, ``join``, ``replace``); and every character written, in loops,
macros and ``set`` blocks included, counts against a budget of 4 × ``max_template_chars``. Recursion too deep
for Python, a ``MemoryError`` or an arithmetic error become :class:`ChatFormatError` too. This bounds the
known ways to exhaust time and memory from a template; it is a guard in process, not an operating-system limit.

Protection: before rendering, every control string inside user text (and any private-use sentinel character)
is replaced by a sentinel ``\\ue000<k>\\ue001``; :class:`RenderedPrompt` keeps the originals so the tokenizer
encodes them as plain text. Every control string left in the rendered prompt was therefore written by the
template, and every media placeholder in it belongs to a media part, in order.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

from .errors import ChatFormatError
from .limits import DEFAULT_LIMITS, MediaLimits
from .tokenizer import SPECIAL_STRINGS

__all__ = ["ChatFormatError", "MediaPart", "RenderedPrompt", "parse_messages", "render_chat"]

ROLES = {"system": "system", "user": "user", "assistant": "model", "model": "model"}
MEDIA_KINDS = ("image", "audio", "video")
PLACEHOLDERS = {kind: SPECIAL_STRINGS[kind] for kind in MEDIA_KINDS}  # image → "<|image|>", …
SENTINEL_OPEN, SENTINEL_CLOSE = "\ue000", "\ue001"
_SENTINEL_RE = re.compile(f"{SENTINEL_OPEN}(\\d+){SENTINEL_CLOSE}")
_PROTECT_RE = re.compile(
    "|".join(re.escape(s) for s in sorted(SPECIAL_STRINGS.values(), key=len, reverse=True))
    + f"|[{SENTINEL_OPEN}{SENTINEL_CLOSE}]"
)


@dataclass(frozen=True)
class MediaPart:
    """One media item of the conversation, in order of appearance."""

    kind: str  # "image" | "audio" | "video"
    source: Any
    options: Mapping[str, Any]  # e.g. {"budget": 280} or {"num_frames": 32}
    where: str  # "messages[1].content[2]", for error messages


@dataclass(frozen=True)
class RenderedPrompt:
    """The rendered prompt; ``protected[k]`` is the user text hidden behind sentinel ``k``."""

    text: str
    protected: tuple[str, ...]
    media: tuple[MediaPart, ...]


def _kind_of(part: object) -> str:
    """A part's type and keys, never its values (they may hold media bytes)."""
    if isinstance(part, Mapping):
        return f"a {type(part).__name__} with keys {sorted(map(str, part))[:8]}"
    return type(part).__name__


def _parts(message: Mapping[str, Any], index: int) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, Sequence) or isinstance(content, bytes | bytearray):
        raise ChatFormatError(
            f"messages[{index}].content must be a string or a list of parts, got {type(content).__name__}"
        )
    parts = []
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        if not isinstance(part, Mapping) or "type" not in part:
            raise ChatFormatError(f"{where} must be a dict with a 'type', got {_kind_of(part)}")
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ChatFormatError(f"{where}: a text part needs a string 'text'")
        elif kind in MEDIA_KINDS:
            if part.get(kind) is None:
                raise ChatFormatError(f"{where}: an {kind} part needs its data under {kind!r}")
        else:
            raise ChatFormatError(f"{where}: unknown content type {kind!r}; expected text, image, audio or video")
        parts.append(dict(part, _where=where))
    return parts


def parse_messages(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Validate ``messages``: [(role as written in the prompt, parts)]."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
        raise ChatFormatError("messages must be a non-empty list of {'role': …, 'content': …} dicts")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatFormatError(f"messages[{i}] must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ChatFormatError(f"messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
        parsed.append((role, _parts(message, i)))
    return parsed


class _Protector:
    def __init__(self) -> None:
        self.protected: list[str] = []

    def __call__(self, text: str) -> str:
        def hide(match: re.Match) -> str:
            self.protected.append(match.group())
            return f"{SENTINEL_OPEN}{len(self.protected) - 1}{SENTINEL_CLOSE}"

        return _PROTECT_RE.sub(hide, text)


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    enable_thinking: bool = False,
    chat_template: str | None = None,
    limits: MediaLimits | None = None,
) -> RenderedPrompt:
    """Render ``messages`` (see the module docstring) into a prompt string with protected user text.
    ``limits`` (default ``MediaLimits()``) bounds the rendering of ``chat_template``."""
    parsed = parse_messages(messages)
    protect = _Protector()
    media: list[MediaPart] = []
    safe_messages = []
    for role, parts in parsed:
        safe_parts = []
        for part in parts:
            if part["type"] == "text":
                safe_parts.append({"type": "text", "text": protect(part["text"])})
            else:
                kind = part["type"]
                options = {k: v for k, v in part.items() if k not in ("type", kind, "_where")}
                media.append(MediaPart(kind, part[kind], options, part["_where"]))
                safe_parts.append({"type": kind})
        safe_messages.append((role, safe_parts))
    if chat_template is None:
        text = _render_builtin(safe_messages, add_generation_prompt, enable_thinking)
    else:
        text = _render_template(
            chat_template, safe_messages, add_generation_prompt, enable_thinking, limits or DEFAULT_LIMITS
        )
    for kind in MEDIA_KINDS:
        wanted = sum(m.kind == kind for m in media)
        found = text.count(PLACEHOLDERS[kind])
        if found != wanted:
            raise ChatFormatError(
                f"the chat template wrote {found} {PLACEHOLDERS[kind]} placeholder(s) for {wanted} {kind} part(s)"
            )
    return RenderedPrompt(text=text, protected=tuple(protect.protected), media=tuple(media))


def _content_string(parts: list[dict[str, Any]]) -> str:
    return "".join(p["text"] if p["type"] == "text" else PLACEHOLDERS[p["type"]] for p in parts)


def _render_builtin(
    messages: list[tuple[str, list[dict[str, Any]]]], add_generation_prompt: bool, thinking: bool
) -> str:
    s = SPECIAL_STRINGS
    turns = [(ROLES[role], _content_string(parts)) for role, parts in messages]
    if thinking:
        if turns[0][0] == "system":
            turns[0] = ("system", s["think"] + turns[0][1])
        else:
            turns.insert(0, ("system", s["think"]))
    out = [s["bos"]]
    for role, content in turns:
        out.append(f"{s['turn_start']}{role}\n{content}{s['turn_end']}\n")
    if add_generation_prompt:
        out.append(f"{s['turn_start']}model\n")
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

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, finalize=finalize)
    env.filters = {name: bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals["range"] = functools.partial(_GuardedRange, guard)
    env.globals["namespace"] = BoundedNamespace
    env.globals["_bounded_iterate"] = guard.iterate
    return env


def _filter_subject(name: str, values: list, kwargs: dict) -> tuple[str, object, list]:
    """(string method name, the string it acts on, its arguments) for the replace and join filters."""
    if name == "replace":  # value|replace(old, new)
        return "replace", values[0], values[1:]
    separator = values[1] if len(values) > 1 else kwargs.get("d", "")
    items = values[0] if isinstance(values[0], Sequence) else ()
    return "join", separator, [items]


def _render_template(
    template: str,
    messages: list[tuple[str, list[dict[str, Any]]]],
    add_generation_prompt: bool,
    thinking: bool,
    limits: MediaLimits,
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
        chunks = env.from_string(template).generate(
            messages=[{"role": role, "content": parts} for role, parts in messages],
            add_generation_prompt=add_generation_prompt,
            enable_thinking=thinking,
            bos_token=SPECIAL_STRINGS["bos"],
            eos_token=SPECIAL_STRINGS["eos"],
            tools=None,
        )
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
