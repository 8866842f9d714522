"""check_count: the one positive-integer check every layer uses."""

from __future__ import annotations

import pytest

from data_specs.checks import check_count, is_count
from pipelines.preprocess_job import PreprocessSettings
from runtime.engine import Engine, Request
from runtime.scheduler import Scheduler


@pytest.mark.parametrize("value", [0, -1, 1.0, True, "2", None])
def test_anything_but_a_positive_int_is_refused_by_name(value):
    with pytest.raises(ValueError, match=rf"rows must be a positive integer, got {value!r}"):
        check_count(value, "rows")


def test_minimum_optional_and_what():
    assert check_count(5, "n") == 5 and check_count(None, "n", optional=True) is None
    assert check_count(0, "n", 0) == 0 and is_count(3) and not is_count(False)
    with pytest.raises(ValueError, match=r"n must be an integer ≥ 2 \(new tokens\) or None, got 1"):
        check_count(1, "n", 2, optional=True, what="new tokens")


def test_the_layers_use_it():
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer, got True"):
        Request(prompt=[1], max_new_tokens=True)
    with pytest.raises(ValueError, match="token_budget must be a positive integer, got 0"):
        Scheduler(1, 0)
    with pytest.raises(ValueError, match="head must be a positive integer or None, got 1.5"):
        PreprocessSettings(tokenizer="x", head=1.5)
    with pytest.raises(ValueError, match="slots must be a positive integer, got 0"):
        Engine(None, slots=0, context=8)


def test_a_misspelt_option_in_a_manifest_row_is_refused_and_other_columns_pass():
    from data_specs.manifest import ManifestError, read_options

    row = {"id": "a", "messages": [{"role": "user", "content": "hi"}]}
    for key, meant in (("temprature", "temperature"), ("max_token", "max_tokens"), ("top-p", "top_p")):
        with pytest.raises(ManifestError, match=f"unknown key '{key}': did you mean '{meant}'"):
            read_options(row | {key: 1}, "row 0")
    assert read_options(row | {"answer": "x", "source": "y", "label": 3}, "row 0").temperature is None
