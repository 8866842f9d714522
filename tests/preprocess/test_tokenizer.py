"""The SentencePiece tokenizer: control tokens looked up by string, user text never yields a control token."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preprocess.tokenizer import SPECIAL_STRINGS, MissingSpecialTokenError, Tokenizer
from tests.conftest import train_tiny_sentencepiece


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return Tokenizer.from_pretrained(tokenizer_dir)


def test_special_ids_come_from_the_model(tok):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tok.source.split("'")[1]))
    for role, string in SPECIAL_STRINGS.items():
        assert getattr(tok.special, role) == sp.PieceToId(string)
        assert sp.IdToPiece(getattr(tok.special, role)) == string
    assert len(tok.special.ids()) == len(SPECIAL_STRINGS)  # all distinct
    assert tok.special.stop_ids == (tok.special.eos, tok.special.turn_end, tok.special.tool_response_start)


def test_missing_control_token_is_named(tmp_path):
    symbols = [s for role, s in SPECIAL_STRINGS.items() if role not in ("pad", "eos", "bos", "video")]
    (tmp_path / "tokenizer.model").write_bytes(train_tiny_sentencepiece(symbols))
    with pytest.raises(MissingSpecialTokenError, match=r"<\|video\|>.*video"):
        Tokenizer.from_pretrained(tmp_path)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.model"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer.from_pretrained(tmp_path)


def test_a_tokenizer_model_file_loads_with_the_template_beside_it(tokenizer_dir, tmp_path):
    model = tmp_path / "spm.model"
    model.write_bytes((tokenizer_dir / "tokenizer.model").read_bytes())
    alone = Tokenizer.from_pretrained(model)
    assert alone.fingerprint == Tokenizer.from_pretrained(tokenizer_dir).fingerprint
    assert alone.chat_template is None
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}")
    assert Tokenizer.from_pretrained(str(model)).chat_template == "{{ bos_token }}"
    assert Tokenizer.from_pretrained(tmp_path / "spm.model").special == alone.special


def test_anything_else_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*missing' does not exist"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no tokenizer.model .tokenizer.json alone is not read"):
        Tokenizer.from_pretrained(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"'.*notes.txt': not a SentencePiece model"):
        Tokenizer.from_pretrained(text)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"'.*fifo' is neither a directory nor a regular file"):
        Tokenizer.from_pretrained(fifo)  # never opened: reading a FIFO blocks


TEXT = st.lists(
    st.sampled_from(list("abc xyz<>|/\n:0123é🙂") + ["the ", "image", "turn"] + list(SPECIAL_STRINGS.values())),
    max_size=30,
).map("".join)


@settings(max_examples=300)
@given(TEXT)
def test_user_text_never_yields_control_tokens_and_round_trips(tok, text):
    ids = tok.encode(text)
    assert not any(tok.is_special(i) for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=200)
@given(TEXT)
def test_allow_special_turns_control_strings_into_ids(tok, text):
    ids = tok.encode(text, allow_special=True)
    assert tok.decode(ids) == text
    count = sum(tok.is_special(i) for i in ids)
    # Every control string in the text (non-overlapping, longest first) became exactly one id.
    import re

    pattern = "|".join(re.escape(s) for s in sorted(SPECIAL_STRINGS.values(), key=len, reverse=True))
    assert count == len(re.findall(pattern, text))


def test_examples(tok):
    s = tok.special
    assert tok.encode("<|image|>", allow_special=True) == [s.image]
    assert s.image not in tok.encode("look: <|image|>")
    assert tok.decode(tok.encode("a<|turn>b", allow_special=True), skip_special=True) == "ab"
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
    assert tok.token_to_id("<|audio|>") == s.audio
    with pytest.raises(KeyError):
        tok.token_to_id("<not a piece>")
    assert len(tok.fingerprint) == 16 and tok.vocab_size == 600
