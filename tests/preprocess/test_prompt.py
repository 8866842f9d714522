"""Interleaving: parity of input_ids / mm_token_type_ids with the reference processor, counts, budgets, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
from PIL import Image

from data_specs.media import Modality
from preprocess import budget as B
from preprocess.chat import ChatFormatError
from preprocess.prompt import build_example
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
    assert sum(a.num_tokens for a in example.audio) == int((example.mm_token_type_ids == Modality.AUDIO).sum())
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


def test_every_image_is_decoded_once(tok, tmp_path, monkeypatch):
    """One decode per image part, whatever its source; error labels are not doubled."""
    import preprocess.image_io as image_io

    calls = []
    for name in ("_from_stream", "_from_pil", "_from_array"):
        original = getattr(image_io, name)
        monkeypatch.setattr(image_io, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    path = tmp_path / "pic.jpg"
    image(300, 200, 1).save(path, quality=90)
    content = [
        {"type": "image", "image": str(path)},
        {"type": "image", "image": image(90, 120, 2)},
        {"type": "image", "image": np.zeros((60, 60, 3), np.uint8)},
    ]
    for exact in (True, False):
        calls.clear()
        build_example([{"role": "user", "content": content}], tok, exact=exact, max_tokens=4000)
        assert sorted(calls) == ["_from_array", "_from_pil", "_from_stream"], (exact, calls)
    with pytest.raises(ValueError) as caught:
        build_example([{"role": "user", "content": [{"type": "image", "image": b"not an image"}]}], tok)
    assert str(caught.value).count("messages[0].content[0]") == 1


def test_fast_mode_draft_decodes_jpegs(tok, tmp_path, monkeypatch):
    """exact=False lets the JPEG decoder scale down (≥ 1.25 × the target stays); exact mode never does."""
    import preprocess.image as image_module

    seen = []
    resize = image_module.resize_to_target
    monkeypatch.setattr(
        image_module, "resize_to_target", lambda im, size, **k: seen.append(im.size) or resize(im, size, **k)
    )
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)).resize((2400, 1600)).save(path)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(path), "budget": 70}]}]
    fast = build_example(messages, tok, exact=False)
    exact = build_example(messages, tok)
    assert seen[1] == (2400, 1600) and seen[0] in ((600, 400), (300, 200))  # 1/4 or 1/8 scale: drafted
    target_h, target_w = fast.images[0].size
    assert min(seen[0][1] / target_h, seen[0][0] / target_w) >= 1.25
    assert fast.images[0].size == exact.images[0].size and fast.images[0].original_size == (1600, 2400)


def test_template_with_wrong_placeholder_count(tok):
    template = "{% for m in messages %}{{ m.role }}{% endfor %}"
    with pytest.raises(ChatFormatError, match="0 <\\|image\\|> placeholder"):
        build_example(
            [{"role": "user", "content": [{"type": "image", "image": image(50, 50)}]}], tok, chat_template=template
        )


def test_parity_video(tok, reference, tmp_path):
    from transformers.video_utils import VideoMetadata

    from preprocess.video_io import load_video
    from tests.preprocess.helpers import encode_video

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
    from tests.preprocess.helpers import TEMPLATE

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
    # The test template puts one newline before the image; the built-in layout (the official one) a blank line.
    assert "<|turn>user\nsee\n<|image>" in templated.decode(from_template.input_ids.tolist())
    assert "<|turn>user\nsee\n\n<|image>" in plain.decode(builtin.input_ids.tolist())
    explicit = build_example(
        messages, templated, chat_template="{{ bos_token }}{% for m in messages %}<|image|>{% endfor %}"
    )
    assert templated.decode(explicit.input_ids.tolist()).startswith("<bos><|image>")


# ------------------------------------------------------------------------------------------------ limits


def fail_if_called(name: str):
    def fail(*args, **kwargs):
        pytest.fail(f"{name} was called: the example should have been refused before decoding")

    return fail


def test_too_many_media_parts_are_refused_before_decoding(tok, monkeypatch):
    import preprocess.prompt as prompt
    from preprocess import errors
    from preprocess.limits import MediaLimits

    content = [{"type": "image", "image": image(8, 8)} for _ in range(65)]
    for name in ("probe_image", "decode_image"):
        monkeypatch.setattr(prompt, name, fail_if_called(name))
    with pytest.raises(errors.TooManyMediaError, match="65 media parts \\(65 image.*limit of 64.*max_media_parts"):
        build_example([{"role": "user", "content": content}], tok)
    with pytest.raises(errors.TooManyMediaError, match="limit of 2"):
        build_example([{"role": "user", "content": content[:3]}], tok, limits=MediaLimits(max_media_parts=2))


def test_token_lower_bound_is_checked_before_decoding(tok, monkeypatch):
    import preprocess.prompt as prompt
    from preprocess import errors
    from tests.preprocess.helpers import encode_video

    for name in ("decode_image", "load_audio", "preprocess_video"):
        monkeypatch.setattr(prompt, name, fail_if_called(name))
    cases = [
        ([{"type": "image", "image": image(600, 800, i)} for i in range(3)], 200),
        ([{"type": "audio", "audio": (np.zeros(60 * 16_000, np.float32), 16_000)}], 1000),  # ~1500 tokens
        ([{"type": "video", "video": encode_video(37), "num_frames": 32}], 500),  # 32 frames × (≥ 2 + 2)
    ]
    for content, max_tokens in cases:
        with pytest.raises(errors.TooManyTokensError, match=f"at least .* max_tokens={max_tokens}.*nothing was"):
            build_example([{"role": "user", "content": content}], tok, max_tokens=max_tokens)


@pytest.mark.parametrize("seconds", [0.5, 29.99, 30.5, 65.0, 95.0])
def test_token_lower_bound_never_refuses_an_example_that_fits(tok, seconds):
    """The header estimate is a lower bound: an example built without a limit fits its own token count."""
    from tests.preprocess.helpers import encode_video

    clip = io.BytesIO()
    soundfile.write(clip, tone(seconds, 44_100), 44_100, format="FLAC")
    content = [
        {"type": "text", "text": "Hear, see and watch:"},
        {"type": "audio", "audio": clip.getvalue()},
        {"type": "image", "image": image(90, 200), "budget": 70},
        {"type": "video", "video": encode_video(12), "num_frames": 8},
        {"type": "audio", "audio": (tone(seconds), 16_000)},
    ]
    messages = [{"role": "user", "content": content}]
    full = build_example(messages, tok)
    exact = build_example(messages, tok, max_tokens=full.summary["num_tokens"])
    assert exact.summary == full.summary


def test_limits_reach_every_medium(tok):
    from preprocess import errors
    from preprocess.limits import MediaLimits
    from tests.preprocess.helpers import encode_video

    def build(part, **limits):
        return build_example([{"role": "user", "content": [part]}], tok, limits=MediaLimits(**limits))

    with pytest.raises(errors.ImageTooLargeError, match=r"messages\[0\].content\[0\]"):
        build({"type": "image", "image": image(20, 20)}, max_pixels=399)
    with pytest.raises(errors.AudioTooLargeError, match="max_audio_seconds"):
        build({"type": "audio", "audio": (tone(2.0), 16_000)}, max_audio_seconds=1.0)
    with pytest.raises(errors.VideoTooLargeError, match="max_video_frames"):
        build({"type": "video", "video": encode_video(4), "num_frames": 4}, max_video_frames=3)
    with pytest.raises(ChatFormatError, match="max_template_chars"):
        build_example(
            [{"role": "user", "content": "hi"}],
            tok,
            chat_template="{{ 'x' * 100 }}",
            limits=MediaLimits(max_template_chars=99),
        )


def test_one_full_resolution_image_at_a_time(tok, monkeypatch):
    """Budgets come from header sizes, so each image is decoded and cut into patches before the next is decoded
    (300 image parts in one row took 3.1 GB when all were decoded first)."""
    import preprocess.prompt as prompt

    calls = []
    decode, patch = prompt.decode_image, prompt.patch_image
    monkeypatch.setattr(prompt, "decode_image", lambda *a, **k: calls.append("decode") or decode(*a, **k))
    monkeypatch.setattr(prompt, "patch_image", lambda *a, **k: calls.append("patch") or patch(*a, **k))
    content = [{"type": "image", "image": image(200 + 10 * i, 300, i)} for i in range(3)]
    for max_tokens in (None, 400):
        calls.clear()
        build_example([{"role": "user", "content": content}], tok, image_budget=560, max_tokens=max_tokens)
        assert calls == ["decode", "patch"] * 3


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs")
def test_fifo_media_is_an_input_error(tok, tmp_path):
    from preprocess import errors
    from tests.preprocess.helpers import unblocking_fifo

    with unblocking_fifo(tmp_path / "pipe") as path:
        for kind, error in (("image", errors.InvalidImageError), ("audio", errors.InvalidAudioError)):
            with pytest.raises(error, match="FIFO"):
                build_example([{"role": "user", "content": [{"type": kind, kind: str(path)}]}], tok)
        with pytest.raises(errors.InvalidVideoError, match="FIFO"):
            build_example([{"role": "user", "content": [{"type": "video", "video": str(path)}]}], tok)


def test_tools_and_template_kwargs_reach_the_prompt(tok):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    text = tok.decode(build_example(messages, tok, tools=tools).input_ids.tolist())
    assert text.startswith('<bos><|turn>system\n<|tool>declaration:get_weather{description:<|"|><|"|>,parameters:{')
    template = "{{ bos_token }}{{ date_string }} n={{ n }}{% for m in messages %}{{ m.content }}{% endfor %}"
    example = build_example(
        messages, tok, chat_template=template, template_kwargs={"date_string": "1 Dec 2026", "n": 3}
    )
    assert tok.decode(example.input_ids.tolist()) == "<bos>1 Dec 2026 n=3Weather in Paris?"
    with pytest.raises(ChatFormatError, match="no chat template"):
        build_example(messages, tok, template_kwargs={"n": 3})


@pytest.mark.parametrize("key", ["tools", "enable_thinking", "chat_template", "messages", 3])
def test_template_kwargs_may_not_shadow_the_renderers_arguments(tok, key):
    with pytest.raises(ValueError, match=rf"template_kwargs: .*{key!r}"):
        build_example([{"role": "user", "content": "hi"}], tok, template_kwargs={key: True})
