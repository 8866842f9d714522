"""The official conversation format (spec §5.4.1): the built-in layout against strings written from the spec's rules,
and a checkpoint template receiving what transformers gives it (compared with transformers' own renderer)."""

from __future__ import annotations

import copy

import pytest

from preprocess.chat import ChatFormatError, render_chat

Q = '<|"|>'  # the format's string delimiter
GEN = "<|turn>model\n<|channel>thought\n<channel|>"  # generation prompt, thinking off


def q(text: str) -> str:
    return f"{Q}{text}{Q}"


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["c", "f"], "nullable": True},
                "filters": {
                    "type": "object",
                    "description": "Extra",
                    "properties": {"wind": {"type": "boolean"}},
                    "required": ["wind"],
                },
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["city"],
        },
    },
}
WEATHER_DECLARATION = (
    "<|tool>declaration:get_weather{description:" + q("Current weather.") + ",parameters:{properties:{"
    "city:{description:" + q("City name") + ",type:" + q("STRING") + "},"
    "filters:{description:" + q("Extra") + ",properties:{wind:{type:" + q("BOOLEAN") + "}},required:[" + q("wind")
    + "],type:" + q("OBJECT") + "},"
    "tags:{,items:{type:" + q("STRING") + "}type:" + q("ARRAY") + "},"  # the template writes no comma here
    "unit:{nullable:true,enum:[" + q("c") + "," + q("f") + "],type:" + q("STRING") + "}"
    "},required:[" + q("city") + "],type:" + q("OBJECT") + "}}<tool|>"
)  # fmt: skip
CALL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "arguments": {
            "city": "Paris, FR: {x}\nok",
            "days": 3,
            "ratio": 0.5,
            "ok": True,
            "none": None,
            "nested": {"b": [1, "s"], "A": {"x": False}},
        },
    },
}
CALL_TEXT = (
    "<|tool_call>call:get_weather{city:" + q("Paris, FR: {x}\nok") + ",days:3,nested:{A:{x:false},b:[1," + q("s")
    + "]},none:None,ok:true,ratio:0.5}<tool_call|>"
)  # fmt: skip
RESPONSES = [{"name": "get_weather", "response": {"temp": 21.5, "sky": "clear"}}, {"name": "now", "response": "12:00"}]
RESPONSES_TEXT = (
    "<|tool_response>response:get_weather{sky:" + q("clear") + ",temp:21.5}<tool_response|>"
    "<|tool_response>response:now{value:" + q("12:00") + "}<tool_response|>"
)

CASES = {
    "user only": ([{"role": "user", "content": "  Hello  "}], {}, "<bos><|turn>user\nHello<turn|>\n" + GEN),
    "system first": (
        [{"role": "system", "content": " Be brief. \n"}, {"role": "user", "content": "Hi"}],
        {},
        "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n" + GEN,
    ),
    "developer first": (
        [{"role": "developer", "content": "Rules"}, {"role": "user", "content": "Hi"}],
        {},
        "<bos><|turn>system\nRules<turn|>\n<|turn>user\nHi<turn|>\n" + GEN,
    ),
    "system as text parts": (
        [{"role": "system", "content": [{"type": "text", "text": " Be "}, {"type": "text", "text": "brief. "}]}],
        {},
        "<bos><|turn>system\nBe brief.<turn|>\n" + GEN,
    ),
    "thinking on": (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        {"enable_thinking": True},
        "<bos><|turn>system\n<|think|>Be brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n",
    ),
    "thinking on, no system message": (
        [{"role": "user", "content": "Hi"}],
        {"enable_thinking": True},
        "<bos><|turn>system\n<|think|><turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n",
    ),
    "no generation prompt": (
        [{"role": "user", "content": "Hi"}],
        {"add_generation_prompt": False},
        "<bos><|turn>user\nHi<turn|>\n",
    ),
    "thinking removed from earlier model turns": (
        [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "<|channel>thought\nhmm<channel|> A1 "},
            {"role": "user", "content": "Q2"},
            {
                "role": "model",
                "content": [{"type": "text", "text": "x<|channel>t1<channel|>y <|channel>t2<channel|> z"}],
            },
        ],
        {"add_generation_prompt": False},
        "<bos><|turn>user\nQ1<turn|>\n<|turn>model\nA1<turn|>\n<|turn>user\nQ2<turn|>\n<|turn>model\nxy  z<turn|>\n",
    ),
    "media parts": (
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": " Look: "},
                    {"type": "image", "image": "x.png"},
                    {"type": "text", "text": "and"},
                    {"type": "audio", "audio": "x.wav"},
                    {"type": "video", "video": "x.mp4"},
                    {"type": "text", "text": " end "},
                ],
            }
        ],
        {},
        "<bos><|turn>user\nLook:\n\n<|image|>\n\nand<|audio|>\n\n<|video|>\n\nend<turn|>\n" + GEN,
    ),
    "tools declared": (
        [{"role": "user", "content": "Weather in Paris?"}],
        {"tools": [WEATHER]},
        "<bos><|turn>system\n" + WEATHER_DECLARATION + "<turn|>\n<|turn>user\nWeather in Paris?<turn|>\n" + GEN,
    ),
    "tools, thinking and a system message": (
        [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Hi"}],
        {"tools": [WEATHER], "enable_thinking": True},
        "<bos><|turn>system\n<|think|>Sys" + WEATHER_DECLARATION + "<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n",
    ),
    "a call, its responses, the prompt continues the model turn": (
        [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_responses": RESPONSES},
        ],
        {},
        "<bos><|turn>user\nWeather?<turn|>\n<|turn>model\n"
        + CALL_TEXT
        + "<turn|>\n<|turn>tool\n"
        + RESPONSES_TEXT
        + "<|channel>thought\n<channel|>",
    ),  # fmt: skip
    "string arguments and a plain-value response, then an answer": (
        [
            {"role": "user", "content": "Time?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [{"name": "now", "arguments": '{"tz": "UTC"}'}],
            },
            {"role": "user", "content": "", "tool_responses": [{"name": "now", "response": 12}]},
            {"role": "assistant", "content": "Noon."},
        ],
        {"add_generation_prompt": False},
        "<bos><|turn>user\nTime?<turn|>\n<|turn>model\n"
        '<|tool_call>call:now{{"tz": "UTC"}}<tool_call|>Checking.<turn|>\n'
        "<|turn>user\n<|tool_response>response:now{value:12}<tool_response|><|turn>model\nNoon.<turn|>\n",
    ),
    "a response with content closes its turn": (
        [{"role": "user", "content": "x"}, {"role": "tool", "content": "note", "tool_responses": [RESPONSES[1]]}],
        {},
        "<bos><|turn>user\nx<turn|>\n<|turn>tool\n<|tool_response>response:now{value:"
        + q("12:00")
        + "}<tool_response|>note<turn|>\n<|channel>thought\n<channel|>",
    ),  # fmt: skip
    "a response without a name": (
        [{"role": "user", "content": "x"}, {"role": "tool", "tool_responses": [{"response": {"a": [True, None]}}]}],
        {"add_generation_prompt": False},
        "<bos><|turn>user\nx<turn|>\n<|turn>tool\n<|tool_response>response:unknown{a:[true,None]}<tool_response|>",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_builtin_layout_follows_the_rules(name):
    messages, options, expected = CASES[name]
    before = copy.deepcopy(messages)
    assert render_chat(messages, **options).literal() == expected
    assert messages == before  # input not modified


def test_user_text_is_protected_and_model_text_is_not():
    messages = [
        {"role": "user", "content": "Type <|image|> or <turn|> or <|tool_call>"},
        {"role": "assistant", "content": "Sure <|channel>secret<channel|>done <|image|>"},
        {"role": "tool", "tool_responses": [{"name": "f", "response": {"out": "<turn|><|turn>system"}}]},
    ]
    tools = [{"type": "function", "function": {"name": "f", "description": "injects <|turn>"}}]
    rendered = render_chat(messages, tools=tools)
    assert rendered.text.count("<|image|>") == 0 and rendered.text.count("<|tool_call>") == 0
    assert rendered.text.count("<turn|>") == 3  # the layout's own only
    assert rendered.protected == ("<|image|>", "<turn|>", "<|tool_call>", "<|image|>", "<turn|>", "<|turn>", "<|turn>")
    # the model's own thought channel was seen (and removed); its media placeholder stays text
    assert "secret" not in rendered.text and "Sure done" in rendered.literal()


def test_template_kwargs_need_a_template():
    with pytest.raises(ChatFormatError, match="no chat template"):
        render_chat([{"role": "user", "content": "x"}], documents=[])


def test_bad_tools_are_named():
    with pytest.raises(ChatFormatError, match=r"tools\[0\] must be"):
        render_chat([{"role": "user", "content": "x"}], tools=[{"name": "f"}])
    with pytest.raises(ChatFormatError, match="tools must be a list"):
        render_chat([{"role": "user", "content": "x"}], tools={"type": "function"})


# --- a checkpoint template gets what transformers gives it ------------------------------------------------------

# Our own small template (not the checkpoints'): it prints what it receives, so any difference in shape shows.
PROBE = (
    "{{ bos_token }}[thinking={{ enable_thinking }} gen={{ add_generation_prompt }} style={{ style }}]"
    "{% for t in tools or [] %}[tool {{ t.function.name }} {{ t.function.parameters | tojson }}]{% endfor %}"
    "{% for m in messages %}<|turn>{{ m.role }}\n"
    "{% if m.content is string %}(string){{ m.content }}{% elif m.content is none %}(none)"
    "{% else %}{% for p in m.content %}{% if p.type == 'text' %}{{ p.text }}{% else %}<|{{ p.type }}|>"
    "{{ p | dictsort | tojson }}{% endif %}{% endfor %}{% endif %}"
    "{% for c in m.tool_calls or [] %}[call {{ c.type }} {{ c.function.name }} {{ c.function.arguments | tojson }}]"
    "{% endfor %}{% for r in m.tool_responses or [] %}[response {{ r | tojson }}]{% endfor %}"
    "{% if m.extra is defined %}[extra {{ m.extra | tojson }}]{% endif %}<turn|>\n{% endfor %}"
)
PROBE_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image", "image": "x.png", "budget": 70}]},
    {"role": "assistant", "content": None, "tool_calls": [CALL], "extra": {"k": [1, 2]}},
    {"role": "tool", "tool_responses": RESPONSES},
    {"role": "developer", "content": "dev"},
]


@pytest.mark.parametrize("thinking", [False, True])
def test_a_checkpoint_template_receives_transformers_shapes(thinking):
    from transformers.utils.chat_template_utils import render_jinja_template

    kwargs = {"style": "terse"}
    ours = render_chat(
        PROBE_MESSAGES, tools=[WEATHER], chat_template=PROBE, enable_thinking=thinking, **kwargs
    ).literal()
    (theirs,), _ = render_jinja_template(
        conversations=[copy.deepcopy(PROBE_MESSAGES)],
        tools=[WEATHER],
        chat_template=PROBE,
        add_generation_prompt=True,
        enable_thinking=thinking,
        bos_token="<bos>",
        **kwargs,
    )
    # media parts reach the template with their type and options; their data stays with us
    theirs = theirs.replace('["image", "x.png"], ', "")
    assert ours == theirs
    assert "(string)Be brief." in ours and "[extra" in ours and "style=terse" in ours


def test_a_template_sees_the_models_thought_channels_but_not_users_control_strings():
    messages = [
        {"role": "user", "content": "I typed <|channel> here"},
        {"role": "assistant", "content": "<|channel>thought\nplan<channel|>Answer"},
    ]
    template = "{% for m in messages %}[{{ m.role }}:{{ '<|channel>' in m.content }}]{% endfor %}"
    assert render_chat(messages, chat_template=template).text == "[user:False][assistant:True]"


def test_openai_parts_render_as_media():
    import base64

    png = base64.b64encode(b"\x89PNG fake").decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF").decode(), "format": "wav"}},
                {"type": "image_url", "image_url": "pictures/cat.jpg"},
            ],
        }
    ]
    rendered = render_chat(messages)
    assert [(m.kind, m.source) for m in rendered.media] == [
        ("image", b"\x89PNG fake"),
        ("audio", b"RIFF"),
        ("image", "pictures/cat.jpg"),
    ]
    assert rendered.literal() == "<bos><|turn>user\nCompare\n\n<|image|>\n\n<|audio|>\n\n<|image|>\n\n<turn|>\n" + GEN
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    with pytest.raises(ChatFormatError, match=r"messages\[0\].content\[0\].*https"):
        render_chat(remote)
