"""Test-session settings shared by every test module."""

from pathlib import Path

import pytest
from hypothesis import settings

# Reproducible property tests in CI: the same examples on every run, no per-example deadline
# (the reference processor pads to 10 080 patches at budget 1120; timing is not what these tests check).
settings.register_profile("default", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("default")


def train_tiny_sentencepiece(user_symbols: list[str], seed: int = 0) -> bytes:
    """The toy tokenizer with only ``user_symbols`` among the control strings (for absence tests)."""
    from pipelines.sample_data import train_toy_tokenizer
    from preprocess.tokenizer import SPECIAL_STRINGS

    drop = tuple(
        s for role, s in SPECIAL_STRINGS.items() if role not in ("pad", "eos", "bos") and s not in user_symbols
    )
    return train_toy_tokenizer(seed, drop=drop)


# The published config.json files and generation_config.json (spec §12), byte for byte: the project's copies
# (package data of bench/, which `gemma4 bench checkpoint` ships), checked against ../shared/data/gemma4-configs
# wherever that folder is (tests/bench/test_bench_checkpoint.py).
PUBLISHED_CONFIGS = Path(__file__).resolve().parents[1] / "bench" / "published_configs"
SHARED_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "gemma4-configs"


def config_keys(config: dict, prefix: str = "") -> set[str]:
    """Every key of a config.json, nested sections as ``section.key`` (maps of labels and RoPE parameters are
    values, not sections): what "the published key set" compares."""
    out = set()
    for key, value in config.items():
        out.add(prefix + key)
        if isinstance(value, dict) and key not in ("id2label", "label2id", "rope_parameters"):
            out |= config_keys(value, prefix + key + ".")
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A checkpoint-like directory holding a tiny ``tokenizer.model`` with every Gemma 4 control string."""
    from pipelines.sample_data import train_toy_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    (directory / "tokenizer.model").write_bytes(train_toy_tokenizer())
    return directory


# --- the reference (transformers, test-only) ----------------------------------------------------------------
# Reached only through these fixtures, so a test that does not name one runs where transformers is missing.
# Session-scoped because each is a pure import: Hypothesis tests may take them without a health-check
# complaint, and a skip raised once is replayed for every test that asks.


@pytest.fixture(scope="session")
def reference():
    """The ``transformers`` module; skips the test where it is not installed."""
    return pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def hf_modeling():
    """``transformers.models.gemma4.modeling_gemma4``; skips the test where it is not installed."""
    return pytest.importorskip("transformers.models.gemma4.modeling_gemma4")


@pytest.fixture(scope="session")
def hf_processor():
    """The reference processor oracle ``oracles.hf_processor``; skips the test where transformers is missing."""
    return pytest.importorskip("oracles.hf_processor")
