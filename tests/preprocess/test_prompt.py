"""Interleaving: parity of input_ids / mm_token_type_ids with the reference processor, counts, budgets, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
from PIL import Image

from preprocess import budget as B
from preprocess.chat import ChatFormatError
from preprocess.prompt import TOKEN_TYPES, build_example
from preprocess.tokenizer import SPECIAL_STRINGS, Tokenizer


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return Tokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def reference(tokenizer_dir, hf_processor):
    """The reference processor for a budget (here the reference is the processor; skips without it)."""
    processors = {}

    def get(budget: int = 280):
        if budget not in processors:
            processors[budget] = hf_processor.processor(
                tokenizer_dir / "tokenizer.model", list(SPECIAL_STRINGS.values()), image_budget=budget
            )
        return processors[budget]

    return get


def image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def tone(seconds: float, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def reference_ids(reference, text: str, images=None, audio=None, budget: int = 280):
    kwargs = {"text": [text], "add_special_tokens": False, "return_tensors": "np"}
    if images:
        kwargs["images"] = [images]
    if audio:
        kwargs["audio"] = audio
    out = reference(budget)(**kwargs)
    return out["input_ids"][0], out["mm_token_type_ids"][0]


def prompt_text(example_messages, tok) -> str:
    from preprocess.chat import render_chat

    return render_chat(example_messages).text


@pytest.mark.parametrize("budget", [70, 280, 1120])
def test_parity_text_image_audio(tok, reference, budget):
    pictures = [image(300, 500, 1), image(64, 40, 2)]
    clip = tone(2.3)
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare "},
                {"type": "image", "image": pictures[0]},
                {"type": "text", "text": " with "},
                {"type": "image", "image": pictures[1]},
                {"type": "text", "text": " and listen: "},
                {"type": "audio", "audio": (clip, 16_000)},
            ],
        },
    ]
    example = build_example(messages, tok, image_budget=budget)
    ref_ids, ref_types = reference_ids(reference, prompt_text(messages, tok), pictures, [clip], budget)
    assert np.array_equal(example.input_ids, ref_ids)
    assert np.array_equal(example.mm_token_type_ids, ref_types)
    assert example.summary["image_tokens"] == sum(B.image_soft_tokens(p.height, p.width, budget) for p in pictures)
    assert example.summary["audio_tokens"] == B.audio_soft_tokens(len(clip))


def test_parity_text_only_and_unicode(tok, reference):
    messages = [{"role": "user", "content": "Héllo  wörld 🙂\n\n00:01 what is the time?"}]
    example = build_example(messages, tok)
    ref_ids, ref_types = reference_ids(reference, prompt_text(messages, tok))
    assert np.array_equal(example.input_ids, ref_ids) and not example.mm_token_type_ids.any()


def test_user_typed_placeholders_are_text(tok):
    messages = [{"role": "user", "content": "Type <|image|> or <|audio|> or <|video|> here"}]
    example = build_example(messages, tok)
    assert not example.mm_token_type_ids.any() and not example.images
    special = tok.special
    assert not np.isin(example.input_ids, [special.image, special.audio, special.video, special.boi]).any()
    assert "Type <|image|> or <|audio|> or <|video|> here" in tok.decode(example.input_ids.tolist())


def test_counts_and_types_match_media(tok):
    clip = tone(65.0)  # three 30 s segments at most: 0-30, 30-60, 60-65 (cut at quiet points)
    messages = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": (clip, 16_000)}, {"type": "image", "image": image(90, 90)}],
        }
    ]
    example = build_example(messages, tok, image_budget=140)
    assert len(example.audio) == 3
    assert sum(a.num_tokens for a in example.audio) == int((example.mm_token_type_ids == TOKEN_TYPES["audio"]).sum())
    ids = example.input_ids.tolist()
    assert ids.count(tok.special.boa) == 3 and ids.count(tok.special.eoa) == 3
    for segment in example.audio:
        assert segment.features.shape == (segment.mask.shape[0], 128)
        assert int(segment.mask.sum()) == B.audio_valid_frames(round((segment.end_s - segment.start_s) * 16_000))
    assert example.images[0].num_soft_tokens == int((example.mm_token_type_ids == 1).sum())
    assert example.summary["image_budgets"] == [140]
    assert [s["part"] for s in example.summary["audio_segments"]] == [0, 0, 0]


def test_media_sources_by_path_and_bytes(tok, tmp_path):
    path = tmp_path / "pic.png"
    image(120, 80).save(path)
    wav = io.BytesIO()
    soundfile.write(wav, tone(1.0, 44_100), 44_100, format="WAV")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(path), "budget": 70},
                {"type": "audio", "audio": wav.getvalue()},
            ],
        }
    ]
    example = build_example(messages, tok)
    assert example.summary["image_budgets"] == [70] and example.audio[0].num_tokens == 25


def test_max_tokens_lowers_image_budgets(tok):
    pictures = [image(600, 800, i) for i in range(3)]
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Describe."}] + [{"type": "image", "image": p} for p in pictures],
        }
    ]
    full = build_example(messages, tok, image_budget=1120)
    assert full.summary["image_budgets"] == [1120] * 3
    limit = full.summary["num_tokens"] - 1500
    fitted = build_example(messages, tok, image_budget=1120, max_tokens=limit)
    assert fitted.summary["num_tokens"] <= limit
    assert fitted.summary["image_budgets_requested"] == [1120] * 3
    budgets = fitted.summary["image_budgets"]
    assert (
        max(budgets) < 1120 and B.SUPPORTED_BUDGETS.index(max(budgets)) - B.SUPPORTED_BUDGETS.index(min(budgets)) <= 1
    )
    # The fitted example is exactly the one built with those budgets directly.
    assert len(fitted.input_ids) == fitted.summary["num_tokens"]
    with pytest.raises(ValueError, match="max_tokens=50.*nothing is truncated"):
        build_example(messages, tok, max_tokens=50)
    with pytest.raises(ValueError, match="never cut"):
        build_example([{"role": "user", "content": "word " * 50}], tok, max_tokens=10)


@pytest.mark.parametrize(
    ("part", "exc", "message"),
    [
        ({"type": "image", "image": "/nonexistent/pic.png"}, FileNotFoundError, "/nonexistent/pic.png"),
        ({"type": "image", "image": b"not an image"}, ValueError, r"messages\[0\].content\[0\]: image bytes"),
        ({"type": "audio", "audio": b"not audio"}, ValueError, r"messages\[0\].content\[0\]"),
        ({"type": "audio", "audio": (np.zeros(10, np.float32), 16_000)}, ValueError, r"messages\[0\].content\[0\]"),
        ({"type": "audio", "audio": (np.zeros(10, np.float32),)}, ValueError, r"\(samples, sample_rate\)"),
        ({"type": "image", "image": image(10, 10), "budget": 100}, ValueError, "70, 140, 280, 560, 1120"),
        ({"type": "sticker", "sticker": 1}, ChatFormatError, "unknown content type 'sticker'"),
    ],
)
def test_bad_media(tok, part, exc, message):
    with pytest.raises(exc, match=message):
        build_example([{"role": "user", "content": [part]}], tok)


def test_template_with_wrong_placeholder_count(tok):
    template = "{% for m in messages %}{{ m.role }}{% endfor %}"
    with pytest.raises(ChatFormatError, match="0 <\\|image\\|> placeholder"):
        build_example(
            [{"role": "user", "content": [{"type": "image", "image": image(50, 50)}]}], tok, chat_template=template
        )


def test_parity_video(tok, reference, tmp_path):
    from transformers.video_utils import VideoMetadata

    from preprocess.video_io import load_video
    from tests.preprocess.test_video import encode_video

    path = tmp_path / "clip.mp4"
    path.write_bytes(encode_video(75, rate=25))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What moves?"},
                {"type": "video", "video": str(path), "num_frames": 8},
            ],
        }
    ]
    example = build_example(messages, tok)
    every = load_video(path, num_frames=75)  # the reference samples its 8 frames from all of them
    metadata = VideoMetadata(total_num_frames=75, fps=25.0, width=64, height=48, duration=3.0, video_backend="pyav")
    out = reference()(
        text=[prompt_text(messages, tok)],
        videos=[every.frames],
        videos_kwargs={"video_metadata": [metadata], "num_frames": 8, "do_sample_frames": True},
        add_special_tokens=False,
        return_tensors="np",
    )
    assert np.array_equal(example.input_ids, out["input_ids"][0])
    assert np.array_equal(example.mm_token_type_ids, out["mm_token_type_ids"][0])
    assert example.summary["video_frames"] == [8] and example.videos[0].timestamps[-1] == "00:02"
    assert example.summary["video_tokens"] == 8 * example.videos[0].num_soft_tokens_per_frame


def test_checkpoint_chat_template_is_used(tokenizer_dir, tmp_path):
    from tests.preprocess.test_chat import TEMPLATE

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "tokenizer.model").write_bytes((tokenizer_dir / "tokenizer.model").read_bytes())
    plain = Tokenizer.from_pretrained(checkpoint)
    assert plain.chat_template is None
    (checkpoint / "chat_template.jinja").write_text(TEMPLATE)
    templated = Tokenizer.from_pretrained(checkpoint)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "  see  "}, {"type": "image", "image": image(48, 48)}]}
    ]
    from_template = build_example(messages, templated)
    builtin = build_example(messages, plain)
    # The template trims text and puts a newline before the image; the built-in layout keeps text as given.
    assert "<|turn>user\nsee\n<|image>" in templated.decode(from_template.input_ids.tolist())
    assert "<|turn>user\n  see  <|image>" in plain.decode(builtin.input_ids.tolist())
    explicit = build_example(
        messages, templated, chat_template="{{ bos_token }}{% for m in messages %}<|image|>{% endfor %}"
    )
    assert templated.decode(explicit.input_ids.tolist()).startswith("<bos><|image>")
