"""Tool values, calls, responses and declarations byte-equal to the Gemma 4 template; call arguments read back."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preprocess.tool_format import (
    MAX_DEPTH,
    IncompleteError,
    ToolFormatError,
    ToolParseError,
    format_call,
    format_declaration,
    format_response,
    format_value,
    parse_arguments,
    parse_value,
)

Q = '<|"|>'


# --- values --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", f"{Q}plain{Q}"),
        ("a, b} c: d\nnext line", f"{Q}a, b}} c: d\nnext line{Q}"),
        ("", f"{Q}{Q}"),
        (5, "5"),
        (-12, "-12"),
        (1.5, "1.5"),
        (1e20, "1e+20"),
        (1e-7, "1e-07"),
        (True, "true"),
        (False, "false"),
        (None, "None"),
        ([], "[]"),
        ([1, "x", [True, None]], f"[1,{Q}x{Q},[true,None]]"),
        ((1, 2), "[1,2]"),
        ({}, "{}"),
    ],
)
def test_format_value_scalars_and_lists(value, written):
    assert format_value(value) == written
    assert format_value(value, escape_keys=False) == written  # no mapping inside: keys play no part


def test_format_value_sorts_keys_case_insensitively_and_quotes_them_only_when_asked():
    value = {"b": 1, "B2": [1.5, {"z": None, "Y": "y"}], "a": {"c": True, "A": "x"}}
    assert format_value(value) == (
        f"{{{Q}a{Q}:{{{Q}A{Q}:{Q}x{Q},{Q}c{Q}:true}},{Q}b{Q}:1,{Q}B2{Q}:[1.5,{{{Q}Y{Q}:{Q}y{Q},{Q}z{Q}:None}}]}}"
    )
    assert format_value(value, escape_keys=False) == f"{{a:{{A:{Q}x{Q},c:true}},b:1,B2:[1.5,{{Y:{Q}y{Q},z:None}}]}}"


def test_format_value_keys_equal_but_for_case_keep_their_order():
    assert format_value({"b": 1, "B": 2, "a": 3}, escape_keys=False) == "{a:3,b:1,B:2}"
    assert format_value({"B": 2, "b": 1}, escape_keys=False) == "{B:2,b:1}"


def test_format_value_refuses_what_the_template_cannot_write():
    with pytest.raises(ToolFormatError, match="quoted key"):
        format_value({1: "x"})
    assert format_value({1: "x"}, escape_keys=False) == f"{{1:{Q}x{Q}}}"
    with pytest.raises(ToolFormatError, match="cannot be sorted"):
        format_value({1: "x", "a": "y"}, escape_keys=False)
    deep: list = []
    for _ in range(MAX_DEPTH):
        deep = [deep]
    with pytest.raises(ToolFormatError, match="nested deeper"):
        format_value(deep)


# --- calls and responses -------------------------------------------------------------------------------------


def test_format_call_with_mapping_and_string_arguments():
    arguments = {"unit": "celsius", "City": "Paris, France", "days": 3, "hourly": False, "at": {"lat": 48.85}}
    assert format_call("get_weather", arguments) == (
        f"<|tool_call>call:get_weather{{at:{{lat:48.85}},City:{Q}Paris, France{Q},days:3,hourly:false,"
        f"unit:{Q}celsius{Q}}}<tool_call|>"
    )
    assert format_call("f", '{"raw": 1}') == '<|tool_call>call:f{{"raw": 1}}<tool_call|>'
    assert format_call("f", {}) == "<|tool_call>call:f{}<tool_call|>"
    assert format_call("f", None) == "<|tool_call>call:f{}<tool_call|>"


def test_format_response_mapping_and_other_values():
    assert format_response("get_weather", {"temp": 21.5, "Sky": "clear"}) == (
        f"<|tool_response>response:get_weather{{Sky:{Q}clear{Q},temp:21.5}}<tool_response|>"
    )
    assert format_response("f", "done") == f"<|tool_response>response:f{{value:{Q}done{Q}}}<tool_response|>"
    assert format_response("f", [1, {"k": None}]) == "<|tool_response>response:f{value:[1,{k:None}]}<tool_response|>"
    assert format_response("unknown", 7) == "<|tool_response>response:unknown{value:7}<tool_response|>"


def test_format_call_and_response_bad_input_names_it():
    with pytest.raises(ToolFormatError, match="tool call name"):
        format_call(3, {})
    with pytest.raises(ToolFormatError, match="'f'.*mapping or a str"):
        format_call("f", [1])
    with pytest.raises(ToolFormatError, match="tool response name"):
        format_response(None, {})


# --- declarations --------------------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather, by city.",
        "parameters": {
            "type": "object",
            "properties": {
                "unit": {"type": "string", "description": "Unit", "enum": ["celsius", "Fahrenheit"]},
                "city": {"type": "string", "description": "City, e.g. {Paris}: FR"},
                "Days": {"type": ["integer", "null"], "nullable": True},
                "strict": {"type": "boolean", "description": "", "nullable": False},
            },
            "required": ["city"],
        },
    },
}


def test_declaration_with_description_enum_nullable():
    assert format_declaration(WEATHER) == (
        f"declaration:get_weather{{description:{Q}Current weather, by city.{Q},parameters:{{properties:{{"
        f"city:{{description:{Q}City, e.g. {{Paris}}: FR{Q},type:{Q}STRING{Q}}},"
        f"Days:{{nullable:true,type:{Q}INTEGER{Q}}},"
        f"strict:{{type:{Q}BOOLEAN{Q}}},"
        f"unit:{{description:{Q}Unit{Q},enum:[{Q}celsius{Q},{Q}Fahrenheit{Q}],type:{Q}STRING{Q}}}"
        f"}},required:[{Q}city{Q}],type:{Q}OBJECT{Q}}}}}"
    )


def test_declaration_nested_objects_with_and_without_properties():
    tool = {
        "function": {
            "name": "book",
            "parameters": {
                "type": "object",
                "properties": {
                    "guest": {
                        "type": "object",
                        "description": "Who",
                        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                        "required": ["name"],
                    },
                    # No 'properties': the object's own non-schema keys are written as its properties.
                    "room": {"type": "object", "view": {"type": "string", "enum": ["sea"]}, "required": ["view"]},
                    "extras": {"type": "OBJECT", "nullable": True},
                },
            },
        }
    }
    assert format_declaration(tool) == (
        f"declaration:book{{description:{Q}{Q},parameters:{{properties:{{"
        f"extras:{{nullable:true,properties:{{}},type:{Q}OBJECT{Q}}},"
        f"guest:{{description:{Q}Who{Q},properties:{{age:{{type:{Q}INTEGER{Q}}},name:{{type:{Q}STRING{Q}}}}},"
        f"required:[{Q}name{Q}],type:{Q}OBJECT{Q}}},"
        f"room:{{,properties:{{view:{{enum:[{Q}sea{Q}],type:{Q}STRING{Q}}}}},required:[{Q}view{Q}]"
        f"type:{Q}OBJECT{Q}}}"
        f"}},type:{Q}OBJECT{Q}}}}}"
    )


def test_declaration_arrays_with_items():
    tool = {
        "function": {
            "name": "plot",
            "description": "Plot.",
            "parameters": {
                "type": "object",
                "properties": {
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "series": {
                        "type": "array",
                        "description": "Lines",
                        "items": {
                            "type": "object",
                            "properties": {"x": {"type": "number"}, "Label": {"type": "string"}},
                            "required": ["x"],
                            "default": None,  # None item values are skipped
                            "maxItems": 3,
                        },
                    },
                    "either": {"type": "array", "items": {"type": ["string", "null"], "Format": {"a": 1}}},
                    "bare": {"type": "array", "items": {}},
                },
            },
        }
    }
    assert format_declaration(tool) == (
        f"declaration:plot{{description:{Q}Plot.{Q},parameters:{{properties:{{"
        f"bare:{{type:{Q}ARRAY{Q}}},"
        f"either:{{,items:{{Format:{{{Q}a{Q}:1}},type:[{Q}STRING{Q},{Q}NULL{Q}]}}type:{Q}ARRAY{Q}}},"
        f"series:{{description:{Q}Lines{Q},items:{{maxItems:3,"
        f"properties:{{Label:{{type:{Q}STRING{Q}}},x:{{type:{Q}NUMBER{Q}}}}},required:[{Q}x{Q}],"
        f"type:{Q}OBJECT{Q}}},type:{Q}ARRAY{Q}}},"
        f"tags:{{,items:{{type:{Q}STRING{Q}}}type:{Q}ARRAY{Q}}}"
        f"}},type:{Q}OBJECT{Q}}}}}"
    )


def test_declaration_quirks_params_without_type_and_response():
    no_type = {"function": {"name": "f", "parameters": {"properties": {"a": {"type": "string"}}, "required": ["a"]}}}
    # The template closes the parameters brace only after a type: without one it stays open.
    assert format_declaration(no_type) == (
        f"declaration:f{{description:{Q}{Q},parameters:{{properties:{{a:{{type:{Q}STRING{Q}}}}},required:[{Q}a{Q}],}}"
    )
    no_params = {"function": {"name": "ping", "description": "Ping.", "parameters": {}}}
    assert format_declaration(no_params) == f"declaration:ping{{description:{Q}Ping.{Q}}}"
    response = {
        "function": {
            "name": "now",
            "description": "Time.",
            "parameters": {"type": "object", "properties": {}},
            "response": {"type": "object", "description": "The time"},
        }
    }
    assert format_declaration(response) == (
        f"declaration:now{{description:{Q}Time.{Q},parameters:{{type:{Q}OBJECT{Q}}},"
        f"response:{{description:{Q}The time{Q},type:{Q}OBJECT{Q}}}}}"
    )
    string_response = {"function": {"name": "now", "response": {"type": "string"}}}
    assert format_declaration(string_response) == f"declaration:now{{description:{Q}{Q},response:{{}}"


def test_declaration_bad_input_names_the_property():
    missing_type = {"function": {"name": "f", "parameters": {"type": "object", "properties": {"q": {"a": 1}}}}}
    with pytest.raises(ToolFormatError, match=r"f\.parameters\.q has no 'type'"):
        format_declaration(missing_type)
    nested = {"type": "object", "properties": {"inner": {"description": "no type"}}}
    with pytest.raises(ToolFormatError, match=r"f\.parameters\.outer\.inner has no 'type'"):
        format_declaration({"function": {"name": "f", "parameters": {"properties": {"outer": nested}}}})
    not_a_schema = {"function": {"name": "f", "parameters": {"properties": {"q": "string"}}}}
    with pytest.raises(ToolFormatError, match=r"f\.parameters\.q.*must be a mapping"):
        format_declaration(not_a_schema)
    with pytest.raises(ToolFormatError, match="no name"):
        format_declaration({"function": {"description": "x"}})
    with pytest.raises(ToolFormatError, match="'function'"):
        format_declaration({"name": "f"})


# --- reading back --------------------------------------------------------------------------------------------


def test_parse_arguments_reads_every_kind_of_value():
    text = (
        f"s:{Q}a, b}} c: d\n{{x}}[y]{Q},i:-42,f:1.5,e:1e+20,t:true,F:false,n:None,nul:null,"
        f"o:{{k:{Q}v{Q},deep:{{z:[]}}}},l:[1,{Q},{Q},[true,{{}}]],empty:{Q}{Q}"
    )
    assert parse_arguments(text) == {
        "s": "a, b} c: d\n{x}[y]",
        "i": -42,
        "f": 1.5,
        "e": 1e20,
        "t": True,
        "F": False,
        "n": None,
        "nul": None,
        "o": {"k": "v", "deep": {"z": []}},
        "l": [1, ",", [True, {}]],
        "empty": "",
    }
    assert parse_arguments("") == {}
    assert parse_arguments(" a : 1 , b :[ 2 , 3 ] ") == {"a": 1, "b": [2, 3]}  # whitespace is skipped
    assert parse_arguments(f"{Q}quoted key{Q}:1") == {"quoted key": 1}


def test_parse_value_special_floats_and_position():
    assert parse_value("inf")[0] == math.inf and parse_value("-inf")[0] == -math.inf
    assert math.isnan(parse_value("nan")[0])
    assert parse_value(f"xx {Q}hi{Q}, rest", 2) == ("hi", 15)
    assert parse_value("{a:1}tail") == ({"a": 1}, 5)
    assert parse_value("12") == (12, 2)


@pytest.mark.parametrize(
    ("text", "inside", "position"),
    [
        (f"{{a:{Q}unfinished", "a string", 3),
        ("{a:1,b:[1,2", "a list", 7),
        ("{a:{b:1}", "a mapping", 0),
        ("{a:tr", "a value", 3),
        ("{a:1.5e", "a value", 3),
        ("{abc", "a key", 1),
        ("{a:", "a value", 3),
        ("[", "a list", 0),
        ("{a:<|", "a string", 3),
    ],
)
def test_parse_value_text_that_ends_early_is_incomplete(text, inside, position):
    with pytest.raises(IncompleteError) as caught:
        parse_value(text)
    assert caught.value.inside == inside and caught.value.position == position
    assert str(position) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("{a:1 b:2}", r"expected ',' or '\}' after the value of 'a', found 'b'", 5),
        ("{a}", r"expected a key and ':'", 2),
        ("{a:1,}", r"expected a key and ':'", 5),
        ("{a:maybe}", r"expected a value, found 'maybe'", 3),
        ("[1 2]", r"expected ',' or '\]'", 3),
        ("{a:,}", r"expected a value, found ','", 3),
    ],
)
def test_parse_errors_are_not_incomplete_and_say_where(text, message, position):
    with pytest.raises(ToolParseError, match=message) as caught:
        parse_value(text)
    assert not isinstance(caught.value, IncompleteError)
    assert caught.value.position == position and f"position {position}" in str(caught.value)


def test_parse_arguments_reads_to_the_end_of_the_text():
    with pytest.raises(ToolParseError, match=r"expected ',' after the value of 'a', found '\}'") as caught:
        parse_arguments("a:1}")
    assert caught.value.position == 3
    with pytest.raises(IncompleteError):
        parse_arguments("a:1,b")


def test_parse_depth_is_capped_with_a_clear_error():
    assert parse_value("[" * MAX_DEPTH + "]" * MAX_DEPTH)[1] == 2 * MAX_DEPTH
    with pytest.raises(ToolParseError, match="nested deeper than"):
        parse_value("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(ToolParseError, match="nested deeper than"):
        parse_value("[" * 100_000)  # no RecursionError


# --- round trip ----------------------------------------------------------------------------------------------

KEYS = st.text(min_size=1, max_size=12).filter(lambda k: k == k.strip() and not set(k) & set(":,{}[]<>"))
STRINGS = st.text(max_size=20).filter(lambda s: Q not in s)
SCALARS = st.one_of(STRINGS, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)
ARGUMENTS = st.dictionaries(KEYS, VALUES, max_size=6)


@settings(max_examples=200, deadline=None)
@given(arguments=ARGUMENTS)
def test_written_arguments_read_back_equal(arguments):
    call = format_call("f", arguments)
    inside = call[len("<|tool_call>call:f{") : -len("}<tool_call|>")]
    assert parse_arguments(inside) == arguments
