"""Interleaving: chat messages with media → one model-ready example (spec §5.1, §5.2, §4.7, §6.5, §6.7).

``build_example`` renders the messages (:mod:`preprocess.chat`), preprocesses every media part, replaces each
placeholder with its expansion and tokenizes the result:

* image → ``<|image>`` + N × ``<|image|>`` + ``<image|>``, N = the image's soft tokens at its budget;
* audio → one ``<|audio>`` + N × ``<|audio|>`` + ``<audio|>`` group per ≤ 30 s segment (``chunk_audio``);
* video → per sampled frame ``"MM:SS "`` + ``<|image>`` + N × ``<|video|>`` + ``<image|>``, frames joined by
  one space;

exactly as the reference processor expands placeholders in the text before tokenizing, so the text between
control tokens is tokenized the same way. N always comes from the same function the encoders' input shapes
derive from (the media item itself), so placeholder counts cannot disagree with the encoders.

The assistant-token mask (``Example.assistant_mask``, for training labels) marks the tokens of what the model
writes: the character spans :func:`preprocess.chat.render_chat` reads from the rendered prompt (each model turn's
content and the ``<turn|>`` closing it; see :mod:`preprocess.chat`, "Assistant spans"). To make it exact at the
token level, the text is cut at the edges of those spans and each piece tokenized on its own, as it is already
cut at every control string: every edge but one is a control string, and the remaining one, after a model turn's
opener ``<|turn>model\\n``, is where the tokens the model generates begin (they never merge with the prompt's
line break). Gemma 4's tokenizer splits runs of line breaks from other text before merging (llama.cpp's
``GEMMA4`` pre-tokenizer, ``[^\\n]+|[\\n]+``) and Gemma's templates strip model content, so this changes no
token id there (the tests check it on the toy tokenizers). Media expansions are never the model's; a video in a
model turn (rare) is cut from the text before it, so its first timestamp is tokenized on its own there.

``max_tokens`` lowers image budgets with :func:`preprocess.budget.fit_image_budgets` (images only: text,
audio and video are never cut); if even budget 70 cannot fit, a clear error. Nothing is truncated.

Bounded work per example (:class:`preprocess.limits.MediaLimits`, ``limits=``): the number of media parts is
checked first, then every part's header is read (image sizes, audio durations, video frame sizes and counts)
with every limit checked, and — with ``max_tokens`` — a lower bound of the example's tokens (text, audio from
header durations, video frames × their tokens, each image at budget 70) is compared with ``max_tokens``, all
before any medium is decoded. Then audio and video are decoded one part at a time, the image budgets are
chosen from the header sizes, and each image is decoded, resized and cut into patches in turn, so at most one
full-resolution image is held at a time (fast mode drafts each JPEG for the budget it gets).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_specs.media import Modality

from .audio import chunk_audio, frame_count, log_mel_batch
from .audio_io import AudioInfo, describe_audio_source, load_audio, probe_audio
from .budget import (
    AUDIO_MAX_SAMPLES,
    AUDIO_SAMPLE_RATE,
    IMAGE_WRAPPER_TOKENS,
    SUPPORTED_BUDGETS,
    check_budget,
    fit_image_budgets,
    image_soft_tokens,
)
from .chat import PLACEHOLDERS, MediaPart, RenderedPrompt, render_chat, unprotect_segments
from .errors import CorruptImageError, TooManyMediaError, TooManyTokensError
from .image import ImagePatches, draft_for, patch_image
from .image_io import decode_image, describe_source, probe_image
from .limits import DEFAULT_LIMITS, MediaLimits
from .tokenizer import SPECIAL_STRINGS, Tokenizer
from .video import VideoPatches, preprocess_video
from .video_io import describe_video_source, probe_video

__all__ = ["AudioFeatures", "Example", "RESERVED_TEMPLATE_KWARGS", "build_example", "check_template_kwargs"]

# render_chat's own arguments: a template kwarg of one of these names would collide with it.
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "messages",
        "tools",
        "add_generation_prompt",
        "continue_final_message",
        "enable_thinking",
        "chat_template",
        "limits",
    }
)
_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))


@dataclass(frozen=True)
class AudioFeatures:
    """One ≤ 30 s audio segment: features (F, 128) float32, mask (F,) bool, and where it came from."""

    features: np.ndarray
    mask: np.ndarray
    num_tokens: int
    start_s: float
    end_s: float
    part: int  # index of the audio part it belongs to


@dataclass
class Example:
    """A model-ready example.

    input_ids (T,) int32; mm_token_type_ids (T,) int8 (0 text, 1 image, 2 video, 3 audio); the media items in
    order of appearance; ``summary`` counts tokens per modality, the budgets used and the audio segments;
    ``assistant_mask`` (T,) int8, 1 on the tokens the model writes (its turns' content and their closing
    ``<turn|>``, see the module docstring), 0 elsewhere: ``build_example`` always computes it, and left out it is
    all zeros.
    """

    input_ids: np.ndarray
    mm_token_type_ids: np.ndarray
    images: list[ImagePatches] = field(default_factory=list)
    audio: list[AudioFeatures] = field(default_factory=list)
    videos: list[VideoPatches] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    assistant_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.assistant_mask is None:
            self.assistant_mask = np.zeros(self.input_ids.shape, dtype=np.int8)
        elif self.assistant_mask.shape != self.input_ids.shape:
            raise ValueError(
                f"assistant_mask has shape {self.assistant_mask.shape}, but input_ids {self.input_ids.shape}"
            )


def check_template_kwargs(template_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``template_kwargs``; ``ValueError`` naming a key that is not a string or that
    ``render_chat`` takes as an argument of its own (it would shadow it, or fail as a duplicate)."""
    out = dict(template_kwargs)
    for key in out:
        if not isinstance(key, str):
            raise ValueError(f"template_kwargs: keys must be strings, got {key!r}")
        if key in RESERVED_TEMPLATE_KWARGS:
            raise ValueError(
                f"template_kwargs: {key!r} is an argument of its own (give it as {key}=…, not as a template kwarg)"
            )
    return out


def _label(part: MediaPart, description: str) -> str:
    return f"{part.where}: {description}"


def _audio_source(part: MediaPart) -> tuple[Any, int | None, str]:
    """(samples or encoded source, sample rate or None, label) of an audio part."""
    source = part.source
    if isinstance(source, tuple):
        if len(source) != 2:
            raise ValueError(f"{part.where}: audio given as a tuple must be (samples, sample_rate)")
        samples, rate = source
        return samples, rate, _label(part, describe_audio_source(samples))
    return source, None, _label(part, describe_audio_source(source))


def _audio_features(part: MediaPart, index: int, exact: bool, limits: MediaLimits) -> list[AudioFeatures]:
    """Decode an audio part, split it into ≤ 30 s segments and compute each segment's features."""
    source, rate, label = _audio_source(part)
    waveform = load_audio(source, rate, name=label, limits=limits)
    plan = chunk_audio(waveform, max_duration_s=part.options.get("max_duration_s"), name=part.where)
    pieces = plan.split(waveform)
    features, masks = log_mel_batch(pieces, exact=exact, names=[part.where] * len(pieces), threads=1)
    out = []
    for segment, f, m in zip(plan.segments, features, masks, strict=True):
        count = frame_count(segment.num_samples)  # the segment's own frames, as if it were alone
        out.append(
            AudioFeatures(
                f[:count].numpy(), m[:count].numpy(), segment.num_tokens, segment.start_s, segment.end_s, index
            )
        )
    return out


def _tokenize(tokenizer: Tokenizer, text: str, protected: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for literal, run in unprotect_segments(text, protected):
        ids += tokenizer.encode(run, allow_special=not literal)
    return ids


def _pieces(rendered: RenderedPrompt) -> list[tuple[str, bool]]:
    """The rendered text cut at the edges of its assistant spans: ``(text, written by the model)`` in order."""
    text, out, position = rendered.text, [], 0
    for start, end in rendered.assistant_spans:
        if start > position:
            out.append((text[position:start], False))
        out.append((text[start:end], True))
        position = end
    if position < len(text):
        out.append((text[position:], False))
    return out


def _encode(
    tokenizer: Tokenizer, rendered: RenderedPrompt, expansions: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """(token ids, assistant mask) of the rendered prompt, each piece of :func:`_pieces` tokenized on its own, with
    every media placeholder replaced by its expansion (``expansions`` in order; None: placeholders kept)."""
    counter = iter(expansions or ())
    ids: list[int] = []
    mask: list[int] = []
    for piece, assistant in _pieces(rendered):
        if expansions is not None:
            piece = _PLACEHOLDER_RE.sub(lambda _: next(counter), piece)
        piece_ids = _tokenize(tokenizer, piece, rendered.protected)
        ids += piece_ids
        mask += [int(assistant)] * len(piece_ids)
    return ids, mask


def build_example(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    *,
    chat_template: str | None = None,
    image_budget: int = 280,
    video_budget: int = 70,
    video_frames: int = 32,
    max_tokens: int | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    enable_thinking: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    exact: bool = True,
    limits: MediaLimits | None = None,
) -> Example:
    """Messages (see :mod:`preprocess.chat`) → :class:`Example`. Per-part options override the defaults:
    ``{"type": "image", "image": …, "budget": 560}``, ``{"type": "video", …, "num_frames": 16, "budget": 70}``,
    ``{"type": "audio", …, "max_duration_s": 60}``. ``exact`` selects exact or fast image and audio modes.
    ``chat_template`` defaults to the tokenizer's checkpoint template, else the built-in layout. ``tools`` (OpenAI
    tool specs) and ``template_kwargs`` (extra variables for a checkpoint template) go to ``render_chat``; a
    ``template_kwargs`` key that is one of its own arguments (:data:`RESERVED_TEMPLATE_KWARGS`) is a
    ``ValueError`` naming it. ``limits`` (default ``MediaLimits()``) bounds the media and the template
    rendering, checked before decoding. ``add_generation_prompt=False`` renders a finished conversation (for
    training); ``continue_final_message=True`` (which needs ``add_generation_prompt=False``) ends the prompt inside
    the last message, a model turn, with no ``<turn|>`` (a ``ChatFormatError`` otherwise). The example's
    ``assistant_mask`` marks the tokens the model writes, the partial last turn's included."""
    limits = limits or DEFAULT_LIMITS
    check_budget(image_budget)
    extra = check_template_kwargs(template_kwargs or {})
    rendered = render_chat(
        messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        enable_thinking=enable_thinking,
        chat_template=chat_template if chat_template is not None else tokenizer.chat_template,
        limits=limits,
        **extra,
    )
    _check_media_count(rendered.media, limits)
    requested = [check_budget(p.options.get("budget", image_budget)) for p in rendered.media if p.kind == "image"]
    # Headers only, every limit checked: nothing is decoded until the whole example is known to be within them.
    headers = [_probe(part, video_frames, video_budget, limits) for part in rendered.media]
    if max_tokens is not None:
        _check_lower_bound(rendered, tokenizer, headers, max_tokens)
    # Audio and video tokens are fixed: decode them first, one part at a time.
    audio_segments, videos = [], []
    audio_parts = 0
    for part in rendered.media:
        if part.kind == "audio":
            audio_segments += _audio_features(part, audio_parts, exact, limits)
            audio_parts += 1
        elif part.kind == "video":
            video = preprocess_video(
                part.source,
                num_frames=part.options.get("num_frames", video_frames),
                budget=part.options.get("budget", video_budget),
                name=_label(part, describe_video_source(part.source)),
                limits=limits,
            )
            videos.append(video)
    # Image budgets from the header sizes; then one full-resolution image at a time becomes patches.
    image_parts = [(p, size) for p, (kind, size) in zip(rendered.media, headers, strict=True) if kind == "image"]
    sizes = [size for _, size in image_parts]
    budgets = _choose_budgets(rendered, tokenizer, sizes, requested, audio_segments, videos, max_tokens)
    images = [
        _image(part, size, budget, exact, limits) for (part, size), budget in zip(image_parts, budgets, strict=True)
    ]
    expansions = _expansions(rendered, [i.num_soft_tokens for i in images], audio_segments, videos)
    tokens, mask = _encode(tokenizer, rendered, expansions)
    ids = np.asarray(tokens, dtype=np.int32)
    assistant_mask = np.asarray(mask, dtype=np.int8)
    special = tokenizer.special
    types = np.full(ids.shape, Modality.TEXT, dtype=np.int8)
    types[ids == special.image] = Modality.IMAGE
    types[ids == special.video] = Modality.VIDEO
    types[ids == special.audio] = Modality.AUDIO
    summary = {
        "num_tokens": int(ids.size),
        "text_tokens": int((types == Modality.TEXT).sum()),
        "image_tokens": int((types == Modality.IMAGE).sum()),
        "video_tokens": int((types == Modality.VIDEO).sum()),
        "audio_tokens": int((types == Modality.AUDIO).sum()),
        "image_budgets": list(budgets),
        "image_budgets_requested": list(requested),
        "audio_segments": [
            {"part": a.part, "start_s": a.start_s, "end_s": a.end_s, "tokens": a.num_tokens} for a in audio_segments
        ],
        "video_frames": [v.num_frames for v in videos],
    }
    _check_counts(types, images, audio_segments, videos)
    assert not assistant_mask[types != Modality.TEXT].any()  # media expansions are never the model's
    return Example(ids, types, images, audio_segments, videos, summary, assistant_mask)


def _check_media_count(media: Sequence[MediaPart], limits: MediaLimits) -> None:
    if limits.max_media_parts is not None and len(media) > limits.max_media_parts:
        kinds = ", ".join(f"{sum(m.kind == k for m in media)} {k}" for k in ("image", "audio", "video"))
        raise TooManyMediaError(
            "messages",
            f"{len(media)} media parts ({kinds}) exceed the limit of {limits.max_media_parts} per example; raise "
            "MediaLimits.max_media_parts or split the conversation",
        )


def _probe(part: MediaPart, video_frames: int, video_budget: int, limits: MediaLimits) -> tuple[str, Any]:
    """(kind, what its header says): an image's upright (height, width), an audio part's :class:`AudioInfo`, a
    video's (:class:`VideoInfo`, budget). Every limit is checked here; nothing is decoded."""
    if part.kind == "image":
        label = _label(part, describe_source(part.source))
        return "image", probe_image(part.source, name=label, max_pixels=limits.max_pixels)
    if part.kind == "audio":
        source, rate, label = _audio_source(part)
        return "audio", (probe_audio(source, rate, name=label, limits=limits), part.options.get("max_duration_s"))
    budget = check_budget(part.options.get("budget", video_budget))
    label = _label(part, describe_video_source(part.source))
    info = probe_video(part.source, part.options.get("num_frames", video_frames), name=label, limits=limits)
    return "video", (info, budget)


def _audio_tokens_at_least(info: AudioInfo, max_duration_s: float | None) -> int:
    """A lower bound of the tokens (wrappers included) of an audio part from its header length: 1 % and 2048
    samples are taken off for headers that estimate. A segment of n samples has ⌈⌊(n − 1)/160⌋ / 4⌉ ≥
    (n − 161)/640 soft tokens, and ``chunk_audio`` makes segments of at least 464 000 samples but the last two,
    so k segments of M samples in all have at least (M − 161·k)/640."""
    samples = info.samples_16k
    if samples is None:
        return 0
    if max_duration_s is not None and max_duration_s > 0:
        samples = min(samples, round(max_duration_s * AUDIO_SAMPLE_RATE))
    samples -= samples // 100 + 2048
    if samples <= 0:
        return 0
    most_segments = samples // (AUDIO_MAX_SAMPLES - AUDIO_SAMPLE_RATE) + 2
    fewest_segments = -(-samples // AUDIO_MAX_SAMPLES)
    return max((samples - 161 * most_segments) // 640, 0) + 2 * fewest_segments


def _check_lower_bound(rendered: RenderedPrompt, tokenizer: Tokenizer, headers: list, max_tokens: int) -> None:
    """Refuse, before decoding, an example whose tokens cannot fit ``max_tokens`` whatever the image budgets."""
    # Each placeholder is one control token, as each expansion starts and ends with one: the text around it
    # tokenizes as it will. A video's first timestamp joins the text before it: one token of slack per video.
    text = len(_encode(tokenizer, rendered)[0]) - len(headers)
    text -= sum(kind == "video" for kind, _ in headers)
    media = 0
    for kind, header in headers:
        if kind == "image":
            media += image_soft_tokens(*header, SUPPORTED_BUDGETS[0]) + IMAGE_WRAPPER_TOKENS
        elif kind == "audio":
            media += _audio_tokens_at_least(*header)
        else:
            info, budget = header
            media += info.sampled * (image_soft_tokens(info.height, info.width, budget) + IMAGE_WRAPPER_TOKENS)
    if text + media > max_tokens:
        raise TooManyTokensError(
            "messages",
            f"the example needs at least {text + media} tokens ({max(text, 0)} of text; {media} of media at the "
            f"lowest image budget, from the media headers), more than max_tokens={max_tokens}; nothing was "
            "decoded (text, audio and video are never cut, and nothing is truncated: raise max_tokens or send "
            "fewer media)",
        )


def _image(part: MediaPart, size: tuple[int, int], budget: int, exact: bool, limits: MediaLimits) -> ImagePatches:
    """Decode one image part (fast mode: drafted for its budget) and cut its patches; the full-resolution image
    is dropped on return."""
    label = _label(part, describe_source(part.source))
    decoded = decode_image(
        part.source, name=label, max_pixels=limits.max_pixels, draft=None if exact else draft_for(budget)
    )
    if decoded.original_size != size:  # the budget was chosen for the header's size
        raise CorruptImageError(label, f"decodes to {decoded.original_size} (height, width) but its header said {size}")
    return patch_image(decoded, budget, exact=exact)


def _expansions(rendered: RenderedPrompt, image_tokens: Sequence[int], audio_segments, videos) -> list[str]:
    """The replacement string of every placeholder, in order of appearance."""
    s = SPECIAL_STRINGS
    images, video_queue = iter(image_tokens), iter(videos)
    out, audio_index = [], 0
    for part in rendered.media:
        if part.kind == "image":
            out.append(s["boi"] + s["image"] * next(images) + s["eoi"])
        elif part.kind == "audio":
            groups = (s["boa"] + s["audio"] * a.num_tokens + s["eoa"] for a in audio_segments if a.part == audio_index)
            out.append("".join(groups))
            audio_index += 1
        else:
            video = next(video_queue)
            frame = s["boi"] + s["video"] * video.num_soft_tokens_per_frame + s["eoi"]
            out.append(" ".join(f"{stamp} {frame}" for stamp in video.timestamps))
    return out


def _choose_budgets(rendered, tokenizer, sizes, requested, audio_segments, videos, max_tokens) -> list[int]:
    """The requested image budgets, lowered with ``fit_image_budgets`` when ``max_tokens`` demands it; ``sizes``
    are the images' upright (height, width)."""
    if max_tokens is None:
        return requested
    # Image soft tokens sit between control tokens, so the rest of the sequence tokenizes the same whatever N is.
    fixed = len(_encode(tokenizer, rendered, _expansions(rendered, [0] * len(requested), audio_segments, videos))[0])
    if fixed + sum(image_soft_tokens(h, w, b) for (h, w), b in zip(sizes, requested, strict=True)) <= max_tokens:
        return requested
    if not sizes:
        raise TooManyTokensError(
            "messages",
            f"the example needs {fixed} tokens (text, audio and video are never cut), more than "
            f"max_tokens={max_tokens}",
        )
    levels = [b for b in SUPPORTED_BUDGETS if b <= max(requested)]
    room = max_tokens - fixed + 2 * len(sizes)  # fit_image_budgets counts the two wrapper tokens itself
    try:
        return fit_image_budgets(sizes, room, budgets=levels)
    except ValueError as exc:
        raise TooManyTokensError(
            "messages",
            f"the example needs {fixed} tokens besides image soft tokens, and its {len(sizes)} image(s) need at "
            f"least {sum(image_soft_tokens(h, w, levels[0]) for h, w in sizes)} more at budget {levels[0]}: more "
            f"than max_tokens={max_tokens} (nothing is truncated; raise max_tokens or send fewer media)",
        ) from exc


def _check_counts(types: np.ndarray, images, audio_segments, videos) -> None:
    """Internal invariant: placeholders equal what the encoders will emit."""
    assert (types == Modality.IMAGE).sum() == sum(i.num_soft_tokens for i in images)
    assert (types == Modality.AUDIO).sum() == sum(a.num_tokens for a in audio_segments)
    assert (types == Modality.VIDEO).sum() == sum(v.num_soft_tokens for v in videos)
