"""Chat rendering: the built-in turn layout, a checkpoint template, user-text protection, bad messages."""

from __future__ import annotations

import pytest

from preprocess.chat import ChatFormatError, render_chat, unprotect_segments
from tests.preprocess.helpers import TEMPLATE

SIMPLE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "image", "image": "x.png"}]},
    {"role": "assistant", "content": "A cat."},
    {"role": "user", "content": "And this? <|image|> <turn|>"},
]


def test_builtin_layout():
    rendered = render_chat(SIMPLE)
    text = rendered.text
    # text stripped, blank lines around the image (spec §5.4.1 item 3)
    assert text.startswith("<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nWhat is\n\n<|image|>\n\n<turn|>\n")
    assert "<|turn>model\nA cat.<turn|>\n" in text
    assert text.endswith("<|turn>model\n<|channel>thought\n<channel|>")  # thinking off: an empty thought channel
    assert text.count("<bos>") == 1
    assert [m.kind for m in rendered.media] == ["image"] and rendered.media[0].where == "messages[1].content[1]"
    # The user's literal control strings are hidden behind sentinels and kept verbatim.
    assert rendered.protected == ("<|image|>", "<turn|>")
    assert text.count("<|image|>") == 1
    runs = unprotect_segments(text, rendered.protected)
    assert rendered.literal().endswith(
        "And this? <|image|> <turn|><turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    )
    assert [r for literal, r in runs if literal] == ["<|image|>", "<turn|>"]


def test_generation_prompt_and_thinking():
    assert render_chat(SIMPLE, add_generation_prompt=False).text.endswith(
        "<|turn>user\nAnd this? \ue0000\ue001 \ue0001\ue001<turn|>\n"
    )
    thinking = render_chat(SIMPLE, enable_thinking=True).text
    assert thinking.startswith("<bos><|turn>system\n<|think|>Be brief.")
    assert thinking.endswith("<|turn>model\n")  # the model writes its own thought channel
    no_system = render_chat(SIMPLE[1:], enable_thinking=True).text
    assert no_system.startswith("<bos><|turn>system\n<|think|><turn|>\n<|turn>user\n")


def test_template_path_uses_its_whitespace():
    rendered = render_chat(SIMPLE, chat_template=TEMPLATE)
    # trim_blocks eats the newline right after a block tag, as transformers renders chat templates.
    assert rendered.text.startswith("<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nWhat is\n<|image|>\n\n<turn|>")
    assert rendered.text.endswith("<|turn>model\n")
    assert rendered.protected == ("<|image|>", "<turn|>")


def test_template_placeholder_mismatch_is_an_error():
    broken = TEMPLATE.replace("\n\n<|image|>\n\n", "")
    with pytest.raises(ChatFormatError, match=r"wrote 0 <\|image\|> placeholder\(s\) for 1 image"):
        render_chat(SIMPLE, chat_template=broken)
    with pytest.raises(ChatFormatError, match="chat template: nope"):
        render_chat(SIMPLE, chat_template="{{ raise_exception('nope') }}")
    with pytest.raises(ChatFormatError, match="chat template failed"):
        render_chat(SIMPLE, chat_template="{% for %}")


def test_sandbox_blocks_unsafe_templates():
    with pytest.raises(ChatFormatError):
        render_chat(SIMPLE, chat_template="{{ messages.__class__.__mro__[1].__subclasses__() }}")


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "robot", "content": "x"}], r"messages\[0\].role is 'robot'"),
        ([{"role": "user"}], r"messages\[0\].content must be a string or a list"),
        ([{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}], r"tool_calls\[0\] needs a function"),
        ([{"role": "assistant", "tool_calls": {"name": "f"}}], r"tool_calls must be a list"),
        ([{"role": "assistant", "tool_calls": [{"name": "f", "arguments": 3}]}], "arguments must be a mapping"),
        (
            [{"role": "tool", "tool_responses": [{"name": "f"}]}],
            r"tool_responses\[0\] must be a dict with a 'response'",
        ),
        ([{"role": "system", "content": [{"type": "image", "image": "x"}]}], "holds text only"),
        ([{"role": "user", "content": 5}], r"messages\[0\].content must be a string or a list"),
        (
            [{"role": "user", "content": [{"type": "gif", "gif": 1}]}],
            r"messages\[0\].content\[0\]: unknown content type 'gif'",
        ),
        ([{"role": "user", "content": [{"type": "image"}]}], r"content\[0\]: an image part needs its data"),
        ([{"role": "user", "content": [{"type": "text"}]}], "needs a string 'text'"),
        ([{"role": "user", "content": ["raw string part"]}], "must be a dict with a 'type'"),
    ],
)
def test_bad_messages(messages, message):
    with pytest.raises(ChatFormatError, match=message):
        render_chat(messages)


# ------------------------------------------------------------------------------------------------ bounded templates

from preprocess.limits import MediaLimits  # noqa: E402

HELLO = [{"role": "user", "content": "hi"}]
SMALL = MediaLimits(max_template_seconds=0.5, max_template_chars=10_000)


def render_with(template: str, limits: MediaLimits = SMALL, messages=HELLO):
    return render_chat(messages, chat_template=template, limits=limits)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for i in range(10**9) %}x{% endfor %}", "more than 100000 items"),
        ("{% for i in range(10**30) %}x{% endfor %}", "more than 100000 items"),
        ("{{ 'x' * 10**10 }}", "repetition"),
        ("{{ ['x'] * 10**10 }}", "repetition"),
        ("{{ 'x'|center(10**10) }}", "center filter got the number 10000000000"),
        ("{{ 'x'.ljust(10**10) }}", "ljust"),
        ("{{ '%010000000000d' % 1 }}", "width"),
        ("{{ '%*d' % (10**10, 1) }}", "10000000000"),
        ("{{ '{:>10000000000}'.format(1) }}", "width"),
        ("{{ '%010000000000d'|format(1) }}", "width"),
        ("{{ ('x' * 1000)|replace('', 'y' * 1000) }}", "replace"),
        ("{{ ('x' * 1000).replace('', 'y' * 1000) }}", "replace"),
        ("{{ (',' * 1000).join('y' * 1000) }}", "join"),
        ("{{ ('y' * 1000)|join(',' * 1000) }}", "join"),
        ("{{ ('\t' * 1000).expandtabs(1000) }}", "expandtabs"),
        ("{{ 10 ** 10000000 }}", "too large a number"),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            r"concatenation \(~\)",
        ),
        (
            "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}"
            "{{ d('x', 64) }}",
            r"concatenation \(~\)",
        ),
        ("{% set big %}{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}{% endset %}", "wrote more than"),
        ("{% set big %}{% for i in range(100000) %}" + "z" * 1000 + "{% endfor %}{% endset %}", "wrote more than"),
        ("{% for i in range(100000) %}{{ messages[0].role * 100 }}{% endfor %}", "more than 10000"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursion"),
        ("{{ 1 // 0 }}", "ZeroDivisionError"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else None,
)
def test_hostile_templates_are_refused(template, message):
    """A checkpoint's chat template is code: loops, sizes and recursion are bounded, and every refusal is a
    ChatFormatError (stage "messages") naming what went over."""
    with pytest.raises(ChatFormatError, match=message) as info:
        render_with(template)
    assert str(info.value).startswith("chat template")


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% set s = 'x' * 10000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    ],
    ids=["nested-range", "nested-string", "fan-out-macro"],
)
def test_endless_templates_stop_at_the_time_limit(template):
    with pytest.raises(ChatFormatError, match="longer than 0.5 s.*max_template_seconds"):
        render_with(template)


def test_limits_allow_ordinary_templates():
    rendered = render_chat(SIMPLE, chat_template=TEMPLATE, limits=SMALL)
    assert rendered.text == render_chat(SIMPLE, chat_template=TEMPLATE).text
    loops = "{% for i in range(3)|reverse %}{{ i }}{% endfor %}{{ range(5)|list|length }}{{ 'ab'|center(6) }}"
    assert render_with(loops).text == "2105  ab  "
    numbers = "{{ 'call 12345678901: %05d' % 7 }} {{ 'id 98765432109 {:>4}'.format(1) }} {{ '%s'|format(10**11) }}"
    assert render_with(numbers).text == "call 12345678901: 00007 id 98765432109    1 100000000000"
    unlimited = MediaLimits(max_template_seconds=None, max_template_chars=None)
    assert render_with("{{ 'x' * 20000 }}", unlimited).text == "x" * 20000


def test_a_compiled_template_keeps_the_bounds_of_each_rendering():
    """Templates are compiled once and shared; each rendering still runs under its own limits and clock."""
    template = "{{ messages[0].content * 3 }}{% for i in range(3) %}{{ i }}{% endfor %}"
    assert render_with(template).text == "hihihi012"
    with pytest.raises(ChatFormatError, match="repetition"):
        render_with(template, messages=[{"role": "user", "content": "y" * 5000}])
    unlimited = MediaLimits(max_template_seconds=None, max_template_chars=None)
    assert render_with(template, unlimited, [{"role": "user", "content": "y" * 5000}]).text == "y" * 15000 + "012"
    assert render_with(template).text == "hihihi012"
    with pytest.raises(ChatFormatError, match="center filter"):  # Jinja calls constant filters when compiling
        render_with("{{ 'x'|center(20000) }}")
    assert render_with("{{ 'x'|center(20000) }}", unlimited).text.strip() == "x"
    with pytest.raises(ChatFormatError, match="center filter"):
        render_with("{{ 'x'|center(20000) }}")
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    for _ in range(2):
        with pytest.raises(ChatFormatError, match="longer than 0.5 s"):
            render_with(slow)


def test_part_values_are_not_quoted_in_errors():
    with pytest.raises(ChatFormatError) as info:
        render_chat([{"role": "user", "content": [{"image": b"root:*:0:0"}]}])
    assert "root" not in str(info.value) and "image" in str(info.value)


# In the style of a real checkpoint template (roles alternate, a system prefix, loop.first, slicing, trim).
CHECKPOINT_STYLE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- set ns = namespace(turns=0) -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- set ns.turns = ns.turns + 1 -%}
    {{ '<|turn>' + message['role'] + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- for item in message['content'] -%}
        {%- if item['type'] == 'image' -%}{{ '<|image|>' }}{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}
        {%- endif -%}
    {%- endfor -%}
    {{ '<turn|>\\n' }}
{%- endfor -%}
{{ ns.turns }}{% for i in range(2)|reverse %}{{ loop.revindex }}{% endfor %}
{%- if add_generation_prompt -%}{{ '<|turn>model\\n' }}{%- endif -%}"""


def test_guards_do_not_change_what_a_template_renders():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def text(t):
        return [{"type": "text", "text": t}]

    messages = [  # a Gemma 3 style template reads every content as a list of parts
        {"role": "system", "content": text("Be brief.")},
        {"role": "user", "content": [{"type": "text", "text": " What is "}, {"type": "image", "image": "x.png"}]},
        {"role": "model", "content": text("A cat.")},
        {"role": "user", "content": text("And this?")},
    ]
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    expected = plain.from_string(CHECKPOINT_STYLE).render(
        messages=[  # as we hand them over: a media part keeps its type (and options), not its data
            dict(m, content=[p if p["type"] == "text" else {"type": p["type"]} for p in m["content"]]) for m in messages
        ],
        add_generation_prompt=True,
        bos_token="<bos>",
    )
    assert render_chat(messages, chat_template=CHECKPOINT_STYLE, limits=SMALL).text == expected
    assert expected.endswith("321<|turn>model\n")
    with pytest.raises(ChatFormatError, match="must alternate"):
        render_chat(messages[:2] + messages[3:], chat_template=CHECKPOINT_STYLE)


# --------------------------------------------------------------------------------- media located by url or path


def test_media_parts_located_by_url_or_path():
    located = [
        {"type": "text", "text": "Compare"},
        {"type": "image", "url": "file:///abs/x.png", "budget": 70},
        {"type": "image", "path": "x.png"},
        {"type": "audio", "url": "data:audio/wav;base64,UklGRg=="},
        {"type": "audio", "path": "a.wav"},
        {"type": "video", "url": "clips/v.mp4", "num_frames": 4},
        {"type": "video", "path": "/v/clip.mp4"},
    ]
    ours = [
        {"type": "text", "text": "Compare"},
        {"type": "image", "image": "/abs/x.png", "budget": 70},
        {"type": "image", "image": "x.png"},
        {"type": "audio", "audio": b"RIFF"},
        {"type": "audio", "audio": "a.wav"},
        {"type": "video", "video": "clips/v.mp4", "num_frames": 4},
        {"type": "video", "video": "/v/clip.mp4"},
    ]
    rendered = render_chat([{"role": "user", "content": located}])
    assert rendered == render_chat([{"role": "user", "content": ours}])
    assert [(m.kind, m.source, dict(m.options), m.where) for m in rendered.media] == [
        ("image", "/abs/x.png", {"budget": 70}, "messages[0].content[1]"),
        ("image", "x.png", {}, "messages[0].content[2]"),
        ("audio", b"RIFF", {}, "messages[0].content[3]"),
        ("audio", "a.wav", {}, "messages[0].content[4]"),
        ("video", "clips/v.mp4", {"num_frames": 4}, "messages[0].content[5]"),
        ("video", "/v/clip.mp4", {}, "messages[0].content[6]"),
    ]
    # a template sees each part's type and options, never where its data is
    probe = (
        "{% for p in messages[0].content %}{% if p.type != 'text' %}<|{{ p.type }}|>{{ p|dictsort }}{% endif %}"
        "{% endfor %}"
    )
    text = render_chat([{"role": "user", "content": located}], chat_template=probe).text
    assert "url" not in text and "path" not in text and "abs" not in text and "budget" in text


@pytest.mark.parametrize(
    ("part", "problem"),
    [
        ({"type": "image", "url": "https://example.com/a.png"}, r"'https' URL .* never fetched"),
        ({"type": "audio", "url": "s3://bucket/a.wav"}, r"'s3' URL .* never fetched"),
        ({"type": "video", "url": "http://example.com/v.mp4"}, r"'http' URL .* never fetched"),
        ({"type": "image", "url": "file://otherhost/a.png"}, "only local files"),
        ({"type": "image", "image": "a.png", "path": "a.png"}, r"gives its data twice \('image' and 'path'\)"),
        ({"type": "image", "url": "a.png", "path": "a.png"}, r"gives its data twice \('url' and 'path'\)"),
        (
            {"type": "audio", "url": None, "path": None},
            "an audio part needs its data under 'audio' .or a 'url' or 'path'",
        ),
    ],
)
def test_bad_located_media_parts_are_named(part, problem, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    messages = [{"role": "user", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": "y"}, part]}]
    with pytest.raises(ChatFormatError, match=r"^messages\[1\]\.content\[1\]: .*" + problem):
        render_chat(messages)


# ------------------------------------------------------------------------------------ tool specs and protection


def test_a_bare_function_renders_as_its_openai_form(tmp_path):
    """A bare function (``{"name", "description", "parameters"}``, or with OpenAI Responses' ``"type": "function"``)
    passes ``check_tools`` — a row's tools and a ``--tools`` file alike — and renders as the wrapped spec does, in the
    built-in layout and through a template."""
    import json

    from data_specs.manifest import read_row
    from pipelines.cli.jobs import tools_file
    from preprocess.chat import builtin_template_text

    function = {"name": "get_weather", "description": "Weather.", "parameters": {"type": "object", "properties": {}}}
    wrapped = [{"type": "function", "function": function}]
    messages = [{"role": "user", "content": "Paris?"}]
    expected = render_chat(messages, tools=wrapped).text
    assert "declaration:get_weather{description:" in expected
    for bare in ([function], [{"type": "function", **function}]):
        row = read_row({"id": "r", "messages": messages, "tools": bare}, 0)
        path = tmp_path / "tools.json"
        path.write_text(json.dumps(bare))
        for tools in (row.tools, tools_file(str(path))):
            assert render_chat(messages, tools=tools).text == expected
            assert render_chat(messages, tools=tools, chat_template=builtin_template_text()).text == expected


def test_calls_are_matched_before_they_are_protected():
    """A call's id and name may hold a media placeholder (protected, the model's own text): OpenAI's tool message
    still finds its call, and the response carries the call's name as written."""
    image = "<|image|>"
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [{"id": f"c{image}", "function": {"name": f"f{image}", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": f"c{image}", "content": "done"},
    ]
    rendered = render_chat(messages)
    assert image not in rendered.text
    assert f"call:f{image}{{}}" in rendered.literal() and f"response:f{image}{{value:" in rendered.literal()


def test_every_field_a_template_may_write_is_protected():
    """Unknown message fields, text-part extras, media options and tool-call extras reach a template protected."""
    turn = "<|turn>"
    messages = [
        {
            "role": "user",
            "name": turn,
            "content": [{"type": "text", "text": "a", "note": turn}, {"type": "image", "image": "x.png", "alt": turn}],
        },
        {"role": "assistant", "content": "b", "reasoning_content": "<|image|>"},
    ]
    probe = (
        "{% for m in messages %}{{ m.name }}{{ m.reasoning_content }}{% if m.content is not string %}"
        "{% for p in m.content %}{{ p.note }}{{ p.alt }}{% if p.type == 'image' %}<|image|>{% endif %}"
        "{% endfor %}{% endif %}{% endfor %}"
    )
    rendered = render_chat(messages, chat_template=probe)
    assert rendered.text.count(turn) == 0 and rendered.text.count("<|image|>") == 1
    assert rendered.literal() == f"{turn}{turn}{turn}<|image|><|image|>"
