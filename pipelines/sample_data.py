"""Sample data, made here and never downloaded: what ``gemma4 sample-data`` writes, and what tests and benchmarks
build their inputs from.

A toy SentencePiece tokenizer with every Gemma 4 control string (:func:`train_toy_tokenizer`), deterministic
photo-like images (:func:`synthetic_image`: photographs are mostly smooth regions, edges and a little sensor
noise; these images imitate that mix so that JPEG sizes, decode times and resampling errors behave like real
photos rather than like white noise), speech-like audio (:func:`synthetic_speech`), short videos
(:func:`write_video`), a small multimodal manifest using all of them (:func:`write_sample_dataset`) and a tiny
random checkpoint whose config matches the toy tokenizer (:func:`write_sample_checkpoint`), so that the model
runs on the sample's batches. Its weights are random: its outputs mean nothing.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BROKEN_ROWS",
    "WORDS",
    "synthetic_image",
    "synthetic_speech",
    "train_toy_tokenizer",
    "write_sample_checkpoint",
    "write_sample_dataset",
    "write_video",
]


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: gradients, low-frequency waves, a few flat shapes with hard edges, noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]  # (H, 1)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]  # (1, W)
    image = np.empty((height, width, 3), dtype=np.float32)
    for ch in range(3):
        a, b, c = rng.uniform(-80, 80, size=3)
        fy, fx, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
        image[:, :, ch] = 128 + a * y + b * x + c * np.sin(2 * np.pi * (fy * y + fx * x) + phase)
    for _ in range(int(rng.integers(3, 9))):  # flat shapes: ellipses and rectangles
        cy, cx = rng.uniform(0, 1, size=2)
        ry, rx = rng.uniform(0.03, 0.3, size=2)
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if rng.random() < 0.5:
            inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        else:
            inside = (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)
        image[inside] = colour
    image += 4.0 * rng.standard_normal(size=(height, width, 1), dtype=np.float32)  # luminance noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def synthetic_speech(seconds: float, seed: int = 0, sample_rate: int = 16_000) -> np.ndarray:
    """(n,) float32 speech-like audio: voiced "syllables" (harmonics of a gliding 90–260 Hz pitch under a
    smooth envelope and two formant-like emphases) separated by pauses of faint noise."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    out = (0.002 * rng.standard_normal(n)).astype(np.float32)  # room noise
    position = int(rng.integers(0, sample_rate // 5))
    while position < n:
        length = int(rng.uniform(0.08, 0.3) * sample_rate)
        end = min(n, position + length)
        t = np.arange(end - position, dtype=np.float64) / sample_rate
        f0 = rng.uniform(90, 260) * (1 + rng.uniform(-0.15, 0.15) * t / max(t[-1], 1e-3))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        formants = rng.uniform([300, 900], [900, 2500])
        voiced = np.zeros_like(t)
        for k in range(1, 30):
            frequency = k * f0.mean()
            if frequency > 7000:
                break
            gain = sum(np.exp(-(((frequency - f) / 250.0) ** 2)) for f in formants) + 0.05
            voiced += gain / k * np.sin(k * phase)
        envelope = np.sin(np.pi * np.linspace(0, 1, len(t))) ** 2
        out[position:end] += (rng.uniform(0.05, 0.3) * envelope * voiced).astype(np.float32)
        position = end + int(rng.uniform(0.05, 0.5) * sample_rate)
    return out


WORDS = (
    "the a an of to in and is it that this for on with as was at by be are from or image audio video frame "
    "describe picture sound what who where when how many cat dog red blue green small large speech music "
    "model user system assistant hello world answer question please thanks time minute second first last"
).split()


def toy_corpus(seed: int = 0, lines: int = 3000) -> list[str]:
    """Generated sentences over :data:`WORDS` and ``MM:SS word`` lines (what the toy tokenizers learn from)."""
    import random

    rng = random.Random(seed)
    corpus = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        corpus.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":", ""]))
        corpus.append(f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} {rng.choice(WORDS)}")
    return corpus


def train_toy_tokenizer(seed: int = 0, vocab_size: int = 600, drop: tuple[str, ...] = ()) -> bytes:
    """A tiny Gemma-like SentencePiece model (BPE, byte fallback, no dummy prefix, identity normalisation) with
    every Gemma 4 control string, trained here on generated text. For tests and the demo only: it is not the
    Gemma tokenizer, and nothing is downloaded. ``drop`` leaves control strings out (to test their absence)."""
    import io

    import sentencepiece as spm

    from preprocess.tokenizer import SPECIAL_STRINGS

    symbols = [s for role, s in SPECIAL_STRINGS.items() if role not in ("pad", "eos", "bos") and s not in drop]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(toy_corpus(seed)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        user_defined_symbols=symbols,
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


SAMPLE_VOCAB = 2048  # pieces of the sample data's tokenizer

TOY_TOKENIZER_CONFIG = {  # tokenizer_config.json, with the keys of the published one (spec §12)
    "backend": "tokenizers",
    "tokenizer_class": "GemmaTokenizer",
    "padding_side": "left",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "extra_special_tokens": ["<|video|>"],
}


def toy_tokenizer_json(
    seed: int = 0, vocab_size: int = 600, *, place: dict[str, int] | None = None, drop: tuple[str, ...] = ()
) -> bytes:
    """A Gemma-like ``tokenizer.json`` (the layout of the published one, spec §12: a BPE model with byte fallback,
    no prefix space, a normalizer that writes spaces as ``▁``, the control strings as special added tokens),
    trained here with the ``tokenizers`` library on generated text, for tests, the demo and the benchmarks.

    Ids: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, the other control strings, the 256 byte
    tokens, then what training learned; ``place`` puts given strings at given ids instead (a benchmark lays control
    tokens where a published config says they are). A vocabulary larger than training reaches (``gemma4 bench
    checkpoint`` asks for the published 262,144) is filled with merges of learned tokens drawn at random. ``drop``
    leaves control strings out (to test their absence). Deterministic in ``seed``."""
    import json
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers.normalizers import Replace

    from preprocess.tokenizer import SPECIAL_STRINGS

    place = dict(place or {})
    controls = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [
        s for s in SPECIAL_STRINGS.values() if s not in ("<pad>", "<eos>", "<bos>") and s not in drop
    ]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    learnable = vocab_size - len(controls) - len(byte_tokens)
    if learnable < 64:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for a toy tokenizer (at least {vocab_size - learnable + 64})"
        )
    if bad := [f"{s!r} at {i}" for s, i in place.items() if not 0 <= i < vocab_size]:
        raise ValueError(f"place: ids beyond the vocabulary of {vocab_size}: {', '.join(bad)}")
    trainer_model = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_model.normalizer = Replace(" ", "▁")
    trainer_model.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=min(learnable, 4000), show_progress=False, special_tokens=[])
    trainer_model.train_from_iterator(toy_corpus(seed), trainer)
    learned = json.loads(trainer_model.to_str())["model"]
    pieces = [p for p, _ in sorted(learned["vocab"].items(), key=lambda item: item[1])]
    merges = [list(m) if isinstance(m, list) else m.split(" ") for m in learned["merges"]]
    known = set(pieces)
    rng = random.Random(seed)
    while len(pieces) < learnable:  # more merges: pairs of tokens already there, as BPE would have learned them
        left, right = rng.choice(pieces), rng.choice(pieces)
        if left + right not in known and len(left + right) <= 24:
            pieces.append(left + right)
            merges.append([left, right])
            known.add(left + right)
    order = iter(s for s in controls + byte_tokens + pieces[:learnable] if s not in place)
    by_id = {i: s for s, i in place.items()}
    vocab = {(by_id[i] if i in by_id else next(order)): i for i in range(vocab_size)}
    leftover = next(order, None)
    assert leftover is None or leftover not in controls, leftover
    kept = set(vocab)
    document = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": vocab[s],
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for s in sorted((s for s in controls if s in kept), key=vocab.get)
        ],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"String": " "},
            "behavior": "MergedWithPrevious",
            "invert": False,
        },
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [m for m in merges if m[0] in kept and m[1] in kept and m[0] + m[1] in kept],
        },
    }
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def write_tokenizer_files(directory, tokenizer_json: bytes, *, chat_template: bool = True) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json`` in ``directory``, and with ``chat_template`` the project's
    ``chat_template.jinja`` (the instruction-tuned layout of spec §5.4.1), as a published checkpoint holds them."""
    import json
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_bytes(tokenizer_json)
    (directory / "tokenizer_config.json").write_text(json.dumps(TOY_TOKENIZER_CONFIG, indent=2) + "\n")
    if chat_template:
        from preprocess.chat import builtin_template_text

        (directory / "chat_template.jinja").write_text(builtin_template_text(), encoding="utf-8")


def write_processor_config(directory) -> None:
    """``processor_config.json`` as a published checkpoint holds it, stating this front end's facts and defaults
    (``preprocess.processor_config.processor_config_json``)."""
    import json
    from pathlib import Path

    from preprocess.processor_config import processor_config_json

    text = json.dumps(processor_config_json(), indent=2, sort_keys=True) + "\n"
    (Path(directory) / "processor_config.json").write_text(text)


# The rows ``write_sample_dataset(corrupt=True)`` adds, each broken in its own way, then one unreadable line.
_BROKEN = (
    {"id": "bad-image", "messages": [{"role": "user", "content": [{"type": "image", "image": "media/broken.jpg"}]}]},
    {"id": "bad-audio", "messages": [{"role": "user", "content": [{"type": "audio", "audio": "media/broken.wav"}]}]},
    {"id": "missing-file", "messages": [{"role": "user", "content": [{"type": "image", "image": "media/nope.png"}]}]},
    {"id": "malformed", "messages": [{"role": "robot", "content": "hi"}]},
    {"id": "no-messages"},
    {"id": "unknown-type", "messages": [{"role": "user", "content": [{"type": "gif", "gif": "x"}]}]},
)
_UNREADABLE_LINE = "{this is not json"
BROKEN_ROWS = len(_BROKEN) + 1  # manifest lines that ``corrupt=True`` adds to the ``rows`` good ones


def write_sample_dataset(directory, rows: int = 40, seed: int = 0, corrupt: bool = False) -> tuple:
    """A small multimodal manifest (JSONL) with its media files and a toy tokenizer (``tokenizer/``: the files a
    published checkpoint holds its tokenizer in, :func:`write_tokenizer_files`), all made here.

    Rows mix text-only, images (JPEG and PNG of many sizes), audio (WAV and FLAC, 1–40 s) and short videos.
    With ``corrupt``, :data:`BROKEN_ROWS` more lines are broken on purpose (bad image bytes, bad audio, a missing
    file, malformed messages, an unknown part type, a line that is not JSON). Returns (manifest path, tokenizer
    directory).
    """
    import json
    from pathlib import Path

    import soundfile
    from PIL import Image

    directory = Path(directory)
    (directory / "media").mkdir(parents=True, exist_ok=True)
    # 2048 pieces: the 256 byte tokens are an eighth of them, so a random model's replies are mostly words
    write_tokenizer_files(directory / "tokenizer", toy_tokenizer_json(seed, vocab_size=SAMPLE_VOCAB))
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(rows):
        kind = ("text", "image", "audio", "image+audio", "video")[i % 5]
        content: list = [{"type": "text", "text": f"Question {i}: {' '.join(rng.choice(WORDS, 6))}?"}]
        if "image" in kind:
            h, w = (int(v) for v in rng.integers(40, 900, size=2))
            name = f"media/img{i}.{'jpg' if i % 2 else 'png'}"
            Image.fromarray(synthetic_image(h, w, seed=seed * 1000 + i)).save(directory / name)
            content.insert(0, {"type": "image", "image": name})
        if "audio" in kind:
            name = f"media/clip{i}.{'wav' if i % 2 else 'flac'}"
            soundfile.write(directory / name, synthetic_speech(float(rng.uniform(1, 40)), seed=i), 16_000)
            content.append({"type": "audio", "audio": name})
        if kind == "video":
            name = f"media/video{i}.mp4"
            write_video(directory / name, frames=int(rng.integers(8, 30)), seed=i)
            content.append({"type": "video", "video": name, "num_frames": 4})
        lines.append({"id": f"ex{i:04d}", "messages": [{"role": "user", "content": content}]})
    if corrupt:
        (directory / "media" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (directory / "media" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
        for offset, row in enumerate(_BROKEN):
            lines.insert(3 + 5 * offset, row)
    manifest = directory / "manifest.jsonl"
    with open(manifest, "w") as fp:
        for row in lines:
            fp.write(json.dumps(row) + "\n")
        if corrupt:
            fp.write(_UNREADABLE_LINE + "\n")
    return manifest, directory / "tokenizer"


def write_video(path, frames: int, seed: int) -> None:
    """An MPEG-4 file of ``frames`` synthetic 64 × 96 frames at 10 frames per second."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            picture = av.VideoFrame.from_ndarray(synthetic_image(64, 96, seed=seed * 100 + i), format="rgb24")
            container.mux(stream.encode(picture))
        container.mux(stream.encode())


SAMPLE_GENERATION = {"do_sample": True, "temperature": 1.0, "top_k": 64, "top_p": 0.95}  # the published values


def write_sample_checkpoint(directory, tokenizer_dir, *, preset: str = "tiny-e2b", seed: int = 0, text=None):
    """A complete checkpoint directory in the published layout (spec §12: ``config.json`` with the published key
    set, ``generation_config.json`` sampling as the published one does, ``processor_config.json``,
    ``model.safetensors``, and the tokenizer's files: ``tokenizer.json``, ``tokenizer_config.json``,
    ``chat_template.jinja``, or a ``tokenizer.model``) of the ``preset`` tiny model (text decoder, vision and audio
    towers) with random weights, its vocabulary size and control ids taken from the tokenizer in ``tokenizer_dir``,
    so that ``load_pretrained(directory, tokenizer=...)`` accepts it and it runs on batches built with that
    tokenizer. ``text`` (a ``TextConfig``) replaces the preset's text decoder (``gemma4 bench infer`` puts its
    ~110 M decoder there); its vocabulary is the tokenizer's all the same. Returns the directory.

    The token embedding is drawn small (std 0.02, the published configs' ``initializer_range``; torch's default is
    1), so each layer's output outweighs it in the residual stream: the next token then depends on the whole
    prompt and its media, and a sampled reply on the seed. With torch's default the last input token dominates
    the final hidden state, and the tied output embedding gives it back with probability ≈ 1 whatever came
    before. The replies are still meaningless text."""
    import json
    import shutil
    from dataclasses import fields, replace
    from pathlib import Path

    import torch

    from model.checkpoint import save_pretrained
    from model.config import PRESETS, TokenIds
    from model.gemma4 import Gemma4
    from preprocess.tokenizer import Tokenizer

    directory = Path(directory)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    special = tokenizer.special
    base = PRESETS[preset]
    config = replace(
        base,
        text=replace(text or base.text, vocab_size=tokenizer.vocab_size, ple_vocab_size=tokenizer.vocab_size),
        tokens=replace(
            TokenIds(**{name: getattr(special, name) for name in (f.name for f in fields(TokenIds))}),
            stop_ids=(special.eos, special.turn_end),  # what the published config.json lists
        ),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma4(config)
        with torch.no_grad():
            model.language_model.embed_tokens.weight.normal_(0.0, 0.02)
    save_pretrained(model, directory)
    generation = {
        "bos_token_id": special.bos,
        **SAMPLE_GENERATION,
        "eos_token_id": list(special.stop_ids),
        "pad_token_id": special.pad,
        "transformers_version": "5.5.0.dev0",
    }
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    write_processor_config(directory)
    source = Path(tokenizer_dir)
    names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
    for name in names if (source / "tokenizer.json").is_file() else ("tokenizer.model", "chat_template.jinja"):
        if (source / name).is_file():
            shutil.copyfile(source / name, directory / name)
    return directory
