"""Helpers that tests in several packages share: the published configs and a tokenizer lacking control strings.

Test modules import helpers from here (or a package's ``helpers.py``), never from each other or from a
``conftest.py`` (tests/test_layout.py checks it); fixtures live in the ``conftest.py`` files.
"""

from __future__ import annotations

from pathlib import Path

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


def train_tiny_sentencepiece(user_symbols: list[str], seed: int = 0) -> bytes:
    """The toy tokenizer with only ``user_symbols`` among the control strings (for absence tests)."""
    from pipelines.sample_data import train_toy_tokenizer
    from preprocess.tokenizer import SPECIAL_STRINGS

    drop = tuple(
        s for role, s in SPECIAL_STRINGS.items() if role not in ("pad", "eos", "bos") and s not in user_symbols
    )
    return train_toy_tokenizer(seed, drop=drop)
