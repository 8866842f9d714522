"""The assistant-token mask (training labels) and continue_final_message: what the model writes, token by token,
against the rendered prompt, the template path and transformers' ``{% generation %}`` convention."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from data_specs.media import Modality
from preprocess.chat import ChatFormatError, assistant_spans, builtin_template_text, render_chat, unprotect_segments
from preprocess.prompt import build_example

PICTURE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))

CHAT = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image", "image": PICTURE}]},
    {"role": "assistant", "content": "<|channel>thought\nA guess.<channel|> A cat. "},
    {"role": "user", "content": "Sure? <turn|> <|turn>model\n"},  # control strings typed by the user are text
    {"role": "assistant", "content": "Yes, it is."},
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def call(call_id: str, city: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": "weather", "arguments": f'{{"city": "{city}"}}'}}


TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris and Lyon?"},
    {"role": "assistant", "content": None, "tool_calls": [call("a", "Paris"), call("b", "Lyon")]},
    {"role": "tool", "tool_call_id": "a", "content": "sun"},
    {"role": "tool", "tool_call_id": "b", "content": "rain"},
    {"role": "assistant", "content": "Sun and rain."},
]
CALLS = (
    '<|tool_call>call:weather{city:<|"|>Paris<|"|>}<tool_call|><|tool_call>call:weather{city:<|"|>Lyon<|"|>}'
    "<tool_call|>"
)


def runs(tok, example) -> list[str]:
    """The decoded text of each maximal run of tokens the mask marks."""
    out, run = [], []
    for token, marked in zip(example.input_ids.tolist(), example.assistant_mask.tolist(), strict=True):
        if marked:
            run.append(token)
        elif run:
            out.append(tok.decode(run))
            run = []
    return out + ([tok.decode(run)] if run else [])


def whole_ids(tok, rendered, example) -> list[int]:
    """The prompt's expanded text tokenized in one go, not cut at the assistant spans (images only)."""
    sizes = iter(image.num_soft_tokens for image in example.images)
    text = re.sub(re.escape("<|image|>"), lambda _: "<|image>" + "<|image|>" * next(sizes) + "<image|>", rendered.text)
    return [
        i
        for literal, run in unprotect_segments(text, rendered.protected)
        for i in tok.encode(run, allow_special=not literal)
    ]


def test_the_mask_is_the_model_turns_and_their_end_markers(tok):
    example = build_example(CHAT, tok, add_generation_prompt=False, image_budget=70)
    assert example.assistant_mask.dtype == np.int8 and example.assistant_mask.shape == example.input_ids.shape
    assert runs(tok, example) == ["A cat.<turn|>", "Yes, it is.<turn|>"]  # no opener, no "\n" after <turn|>
    assert not example.assistant_mask[example.mm_token_type_ids != Modality.TEXT].any()
    assert example.assistant_mask[-1] == 0  # the template's line break after the last <turn|>
    # Cutting the text at the spans' edges changes no token id with this tokenizer.
    assert example.input_ids.tolist() == whole_ids(tok, render_chat(CHAT, add_generation_prompt=False), example)


def test_tool_calls_are_the_models_and_tool_responses_are_not(tok):
    example = build_example(TOOL_CHAT, tok, tools=TOOLS, add_generation_prompt=False)
    assert runs(tok, example) == [CALLS + "<|tool_response>", "Sun and rain.<turn|>"]
    text = tok.decode(example.input_ids.tolist())
    assert 'response:weather{value:<|"|>sun<|"|>}<tool_response|><|tool_response>response:weather' in text
    # Right after the tool responses, the generation prompt (an empty thought channel) is not the model's.
    waiting = build_example(TOOL_CHAT[:4], tok, tools=TOOLS)
    assert runs(tok, waiting) == [CALLS + "<|tool_response>"]
    ids = waiting.input_ids.tolist()
    after = len(ids) - ids[::-1].index(tok.special.tool_response_end)  # past the last <tool_response|>
    assert tok.decode(ids[after:]) == "<|channel>thought\n<channel|>" and not waiting.assistant_mask[after:].any()


def test_the_generation_prompt_is_not_the_models(tok):
    for thinking, prompt in ((False, "<|turn>model\n<|channel>thought\n<channel|>"), (True, "<|turn>model\n")):
        example = build_example(CHAT[:4], tok, image_budget=70, enable_thinking=thinking)
        assert runs(tok, example) == ["A cat.<turn|>"]
        assert tok.decode(example.input_ids.tolist()).endswith(prompt)


def test_a_finished_conversation_has_no_generation_prompt(tok):
    example = build_example(CHAT, tok, add_generation_prompt=False, image_budget=70)
    text = tok.decode(example.input_ids.tolist())
    assert text.endswith("<turn|>\n<|turn>model\nYes, it is.<turn|>\n") and text.count("<|channel>") == 0


def test_media_in_a_model_turn_are_not_the_models(tok):
    messages = [
        {"role": "user", "content": "Draw."},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Here:"},
                {"type": "image", "image": PICTURE},
                {"type": "text", "text": "Done."},
            ],
        },
    ]
    example = build_example(messages, tok, add_generation_prompt=False, image_budget=70)
    assert runs(tok, example) == ["Here:\n\n", "\n\nDone.<turn|>"]
    assert (example.mm_token_type_ids == Modality.IMAGE).sum() == example.images[0].num_soft_tokens


def test_continue_final_message_ends_inside_the_last_turn(tok):
    partial = [*CHAT[:4], {"role": "assistant", "content": "Yes, it "}]
    example = build_example(partial, tok, add_generation_prompt=False, continue_final_message=True, image_budget=70)
    text = tok.decode(example.input_ids.tolist())
    assert text.endswith("<|turn>model\nYes, it")  # stripped as every model turn is, no <turn|>, no prompt
    assert runs(tok, example) == ["A cat.<turn|>", "Yes, it"] and example.assistant_mask[-1] == 1
    finished = render_chat(partial, add_generation_prompt=False).text
    continued = render_chat(partial, add_generation_prompt=False, continue_final_message=True).text
    assert continued == finished[: finished.rindex("<turn|>")]
    # A last turn that ends with tool responses is left open after them.
    waiting = render_chat(TOOL_CHAT[:4], tools=TOOLS, add_generation_prompt=False, continue_final_message=True)
    assert waiting.text.endswith('{value:<|"|>rain<|"|>}<tool_response|>')


@pytest.mark.parametrize(
    ("messages", "kwargs", "problem"),
    [
        (CHAT, {}, "no generation prompt may follow it: pass add_generation_prompt=False"),
        (CHAT[:4], {"add_generation_prompt": False}, r"must be a model \(assistant\) turn; messages\[3\] is a 'user'"),
        (
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<|channel>thought\nI think"}],
            {"add_generation_prompt": False},
            r"the text of messages\[1\] does not end the rendered prompt",
        ),
    ],
)
def test_continue_final_message_errors(tok, messages, kwargs, problem):
    with pytest.raises(ChatFormatError, match=problem):
        build_example(messages, tok, continue_final_message=True, image_budget=70, **kwargs)
    with pytest.raises(ValueError, match="template_kwargs: 'continue_final_message'"):
        build_example(CHAT[:2], tok, template_kwargs={"continue_final_message": True})


@pytest.mark.parametrize(
    ("messages", "kwargs"),
    [
        (CHAT, {"add_generation_prompt": False}),
        (CHAT[:4], {}),
        (TOOL_CHAT, {"add_generation_prompt": False, "tools": TOOLS}),
        (TOOL_CHAT[:4], {"tools": TOOLS}),
        (CHAT, {"add_generation_prompt": False, "continue_final_message": True}),
    ],
)
def test_a_checkpoint_template_gives_the_same_mask(tok, messages, kwargs):
    builtin = build_example(messages, tok, image_budget=70, **kwargs)
    templated = build_example(messages, tok, image_budget=70, chat_template=builtin_template_text(), **kwargs)
    assert np.array_equal(builtin.input_ids, templated.input_ids)
    assert np.array_equal(builtin.assistant_mask, templated.assistant_mask) and builtin.assistant_mask.any()


@pytest.mark.parametrize(
    ("text", "generation_prompt", "expected"),
    [
        # A reasoning channel a template writes in a model turn is the model's.
        (
            "<bos><|turn>user\nQ<turn|>\n<|turn>model\n<|channel>thought\nT<channel|>A<turn|>\n",
            False,
            ["<|channel>thought\nT<channel|>A<turn|>"],
        ),
        # A turn that ends with the model's calls and its <|tool_response> stop marker (no responses yet).
        (
            "<|turn>model\n<|tool_call>call:f{}<tool_call|><|tool_response>",
            False,
            ["<|tool_call>call:f{}<tool_call|><|tool_response>"],
        ),
        # The answer continuing the same turn after the responses.
        (
            "<|turn>model\n<|tool_call>call:f{}<tool_call|><|tool_response>response:f{value:1}<tool_response|>Done.<turn|>\n",
            False,
            ["<|tool_call>call:f{}<tool_call|><|tool_response>", "Done.<turn|>"],
        ),
        (
            "<|turn>model\n<|tool_call>call:f{}<tool_call|><|tool_response>response:f{}<tool_response|><|channel>thought\n<channel|>",
            True,
            ["<|tool_call>call:f{}<tool_call|><|tool_response>"],
        ),
        ("<|turn>user\nHi<turn|>\n<|turn>model\nHel", False, ["Hel"]),  # a partial turn (continue_final_message)
        ("<|turn>user\nHi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>", True, []),
        ("<|turn>system\nS<turn|>\n<|turn>developer\nD<turn|>\n<|turn>tool\nT<turn|>\n", False, []),
    ],
)
def test_assistant_spans_read_the_turn_structure(text, generation_prompt, expected):
    assert [text[a:b] for a, b in assistant_spans(text, generation_prompt=generation_prompt)] == expected


@pytest.fixture(scope="module")
def json_pair(tmp_path_factory, reference):
    """(ours, transformers' AutoTokenizer) on the same toy tokenizer.json."""
    from pipelines.sample_data import toy_tokenizer_json, write_tokenizer_files
    from preprocess.tokenizer import Tokenizer

    directory = tmp_path_factory.mktemp("json-tokenizer")
    write_tokenizer_files(directory, toy_tokenizer_json(), chat_template=False)
    return Tokenizer.from_pretrained(directory), reference.AutoTokenizer.from_pretrained(directory)


# The built-in layout for system, user and model text turns, with transformers' {% generation %} markers around
# what our mask marks (our own, for the test; Gemma 4's published template has no such markers).
GENERATION_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'assistant' %}{{ '<|turn>model\\n' }}"
    "{% generation %}{{ m.content | trim }}{{ '<turn|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|turn>' + m.role + '\\n' + (m.content | trim) + '<turn|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|turn>model\\n<|channel>thought\\n<channel|>' }}{% endif %}"
)
TEXT_CHAT = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "hello world question"},
    {"role": "assistant", "content": "first answer please"},
    {"role": "user", "content": "thanks, time?"},
    {"role": "assistant", "content": " last minute \n"},
]


@pytest.mark.parametrize(("end", "generation_prompt"), [(5, False), (4, True), (3, False)])
def test_the_mask_equals_transformers_assistant_masks(json_pair, end, generation_prompt):
    ours, theirs = json_pair
    messages = TEXT_CHAT[:end]
    expected = theirs.apply_chat_template(
        messages,
        chat_template=GENERATION_TEMPLATE,
        add_generation_prompt=generation_prompt,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    example = build_example(messages, ours, add_generation_prompt=generation_prompt)
    assert example.input_ids.tolist() == list(expected["input_ids"])
    assert example.assistant_mask.tolist() == list(expected["assistant_masks"]) and example.assistant_mask.any()


def test_continue_final_message_renders_as_transformers_does(json_pair):
    _, theirs = json_pair
    messages = [*TEXT_CHAT[:4], {"role": "assistant", "content": "last min "}]
    for template in (GENERATION_TEMPLATE, builtin_template_text()):
        expected = theirs.apply_chat_template(
            messages, chat_template=template, continue_final_message=True, tokenize=False
        )
        assert render_chat(messages, add_generation_prompt=False, continue_final_message=True).text == expected
