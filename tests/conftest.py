"""Test-session settings shared by every test module."""

from hypothesis import settings

# Reproducible property tests in CI: the same examples on every run, no per-example deadline
# (the reference processor pads to 10 080 patches at budget 1120; timing is not what these tests check).
settings.register_profile("default", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("default")


import io  # noqa: E402
import random  # noqa: E402

import pytest  # noqa: E402

WORDS = (
    "the a an of to in and is it that this for on with as was at by be are from or image audio video frame "
    "describe picture sound what who where when how many cat dog red blue green small large speech music "
    "model user system assistant hello world answer question please thanks time minute second first last"
).split()


def train_tiny_sentencepiece(user_symbols: list[str], seed: int = 0) -> bytes:
    """A tiny BPE SentencePiece model trained here (nothing downloaded), Gemma-like: <pad>/<eos>/<bos>/<unk>
    at 0–3, byte fallback, no dummy prefix, identity normalisation; ``user_symbols`` as user-defined pieces."""
    import sentencepiece as spm

    rng = random.Random(seed)
    corpus = []
    for _ in range(3000):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        corpus.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":", ""]))
        corpus.append(f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} {rng.choice(WORDS)}")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=600,
        model_type="bpe",
        user_defined_symbols=user_symbols,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        minloglevel=2,
    )
    return model.getvalue()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A checkpoint-like directory holding a tiny ``tokenizer.model`` with every Gemma 4 control string."""
    from preprocess.tokenizer import SPECIAL_STRINGS

    directory = tmp_path_factory.mktemp("tokenizer")
    symbols = [s for role, s in SPECIAL_STRINGS.items() if role not in ("pad", "eos", "bos")]
    (directory / "tokenizer.model").write_bytes(train_tiny_sentencepiece(symbols))
    return directory
