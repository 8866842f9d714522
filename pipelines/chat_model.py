"""One call to ask a Gemma 4 checkpoint about a picture, a sound or a clip: :class:`ChatModel`.

The model is loaded once (:meth:`ChatModel.from_pretrained`: a checkpoint directory laid out as published, or a
Hugging Face repo id in the local hub cache), then each call renders the conversation with the checkpoint's chat
template, prepares its media (the same front end as ``gemma4 preprocess``) and generates:

* :meth:`~ChatModel.chat` → a :class:`ChatReply` (answer text, thinking, tool calls, finish reason, token counts);
* :meth:`~ChatModel.chat_many` → one reply per conversation, generated together on the continuous engine
  (``runtime.engine``: ``batch_size`` conversations decode at once, a new one starts as soon as one ends);
* :meth:`~ChatModel.stream` → a :class:`ChatStream` of text deltas as the tokens come (``preprocess.reply.
  ReplyStream``: thinking, tool calls and control tokens never appear in it; characters split over several
  tokens come out whole), whose ``reply`` is the whole :class:`ChatReply` once it is exhausted.

Messages take the OpenAI and the transformers chat forms (``preprocess.chat``): string content or typed parts;
media as ``{"type": "image", "image": path | bytes | array}``, ``{"type": "image", "path": …}``,
``{"type": "image", "url": "file:…" | "data:…"}``, OpenAI's ``image_url`` / ``input_audio`` parts, and the same
for audio and video. Remote URLs are refused, never fetched. Relative paths are read from the working directory.

Sampling follows the checkpoint's ``generation_config.json`` (the published checkpoints sample with temperature
1.0, top_k 64, top_p 0.95), as transformers and vLLM apply it; any argument given to a call overrides it,
``greedy=True`` decodes greedily. Without a ``seed`` each call draws its own (replies vary from call to call);
with one, a conversation's reply is reproducible whatever else is generated beside it (bit for bit on the CPU in
float32; on CUDA for the same device, dtype and company). ``max_new_tokens`` None
lets a reply run to the end of the context (``context`` tokens, prompt included), as vLLM does; a prompt that
leaves no room is a :class:`ContextLengthError`, never cut.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_specs.checks import check_count

__all__ = ["ChatModel", "ChatReply", "ChatStream", "ContextLengthError"]


class ContextLengthError(ValueError):
    """A prompt that, with the new tokens asked for, does not fit the model's context."""


@dataclass(frozen=True, kw_only=True)
class ChatReply:
    """One reply. ``text`` is the answer (``preprocess.reply.parse_reply``'s content), ``thinking`` the thought
    channel's text (None without one), ``tool_calls`` ``(name, arguments)`` pairs; ``finish_reason`` is
    ``"stop"`` (a stop token ended it) or ``"length"`` (``max_new_tokens`` did); ``raw_text`` is every new token
    decoded with its control strings; ``problems`` and ``truncated`` as ``parse_reply`` reports them."""

    text: str
    thinking: str | None
    tool_calls: tuple[tuple[str, dict], ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...]
    raw_text: str
    problems: tuple[str, ...] = ()
    truncated: str | None = None

    def to_dict(self) -> dict:
        """The reply as JSON-ready data (tool calls as ``{"name", "arguments"}``)."""
        out = asdict(self)
        out["tool_calls"] = [{"name": name, "arguments": arguments} for name, arguments in self.tool_calls]
        out["token_ids"] = list(self.token_ids)
        out["problems"] = list(self.problems)
        return out


class ChatStream:
    """The text deltas of one reply, as its tokens are generated (iterate it once); ``reply`` is the whole
    :class:`ChatReply` after the last delta."""

    def __init__(self, deltas: Iterator[str]) -> None:
        self._deltas = deltas
        self.reply: ChatReply | None = None

    def __iter__(self) -> Iterator[str]:
        return self._deltas


class ChatModel:
    """A checkpoint loaded once, answering conversations (see the module docstring). Build it with
    :meth:`from_pretrained`."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        generation,
        front_end,
        context: int,
        batch_size: int,
        name: str,
        cuda_graphs: bool = True,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.cuda_graphs = cuda_graphs  # decode steps as CUDA graphs on CUDA (runtime.graphs)
        self.generation = generation  # data_specs.checkpoint_dir.GenerationDefaults
        self.front_end = front_end  # preprocess.processor_config.FrontEndDefaults
        self.context, self.batch_size, self.name = context, batch_size, name

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike,
        *,
        device: str = "auto",
        dtype: str | None = None,
        context: int = 8192,
        batch_size: int = 8,
        cuda_graphs: bool = True,
    ) -> ChatModel:
        """Load ``checkpoint`` (a directory as published, or a repo id in the hub cache) on ``device`` (``auto``:
        CUDA where there is a GPU, else the CPU) in ``dtype`` (None: the checkpoint's stored dtype).
        ``context``: tokens per conversation, prompt and reply together; ``batch_size``: conversations
        :meth:`chat_many` decodes at once; ``cuda_graphs`` False decodes eagerly on CUDA. Every check is made before
        a weight is read: the files, the tokenizer against the config, the device, and whether the weights and
        ``batch_size`` × ``context`` tokens of KV cache fit the device's free memory."""
        from data_specs.checkpoint_dir import generation_defaults, resolve_checkpoint
        from model.checkpoint import check_tokenizer, inspect_checkpoint, load_pretrained
        from model.device import check_memory, resolve_device
        from preprocess.processor_config import read_processor_config
        from preprocess.tokenizer import Tokenizer

        check_count(context, "context")
        check_count(batch_size, "batch_size")
        target = resolve_device(device)
        directory = resolve_checkpoint(checkpoint)
        info = inspect_checkpoint(directory, dtype=dtype)
        tokenizer = Tokenizer.from_pretrained(directory)
        check_tokenizer(info.config, tokenizer)
        generation = generation_defaults(directory)
        front_end = read_processor_config(directory)
        check_memory(
            info, target, batch_size, context, "lower batch_size or context, or choose another device or dtype"
        )
        model = load_pretrained(directory, dtype=info.dtype, device=target, tokenizer=tokenizer)
        return cls(
            model,
            tokenizer,
            generation=generation,
            front_end=front_end,
            context=context,
            batch_size=batch_size,
            name=info.name,
            cuda_graphs=cuda_graphs,
        )

    # --- one conversation ---------------------------------------------------------------------------------------

    def chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> ChatReply:
        """The reply to one conversation. Options (all keyword): ``tools`` (OpenAI function specs),
        ``enable_thinking``, ``max_new_tokens`` (None: to the end of the context), ``temperature``, ``top_k``,
        ``top_p`` (None: the checkpoint's), ``greedy``, ``seed``, ``image_budget`` (None: the checkpoint's
        ``processor_config.json``, else 280), ``template_kwargs``."""
        return self.chat_many([messages], **options)[0]

    def stream(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> ChatStream:
        """The reply to one conversation, as text deltas (:class:`ChatStream`); options as :meth:`chat`."""
        from preprocess.reply import ReplyStream
        from runtime.generate import stream as generate_stream

        batch, sampling, new, prompt = self._prepare(messages, 0, options)
        stops = set(self.model.config.tokens.stop_ids)
        chat_stream = ChatStream(iter(()))

        def deltas() -> Iterator[str]:
            import torch

            reader = ReplyStream(self.tokenizer)
            with torch.inference_mode():
                for (token,) in generate_stream(
                    self.model, batch, max_new_tokens=new, sampling=[sampling], cuda_graphs=self.cuda_graphs
                ):
                    if token is None:
                        break
                    if delta := reader.feed(token):
                        yield delta
            if rest := reader.finish():
                yield rest
            ids = reader.ids
            reason = "stop" if ids and ids[-1] in stops else "length"
            chat_stream.reply = self._reply(ids, reason, prompt)

        chat_stream._deltas = deltas()
        return chat_stream

    # --- many conversations -------------------------------------------------------------------------------------

    def chat_many(self, conversations: Sequence[Sequence[Mapping[str, Any]]], **options: Any) -> list[ChatReply]:
        """One reply per conversation, in order, generated together on the continuous engine (``batch_size`` at a
        time); options as :meth:`chat`, the same for every conversation. A conversation that cannot be prepared
        raises before any is generated, its error naming it (``conversations[3]: …``)."""
        import torch

        from runtime.engine import Engine, Request

        if isinstance(conversations, str | bytes | Mapping) or not isinstance(conversations, Sequence):
            raise TypeError(f"conversations must be a list of message lists, got {type(conversations).__name__}")
        if not conversations:
            return []
        requests, prompts = [], []
        for index, messages in enumerate(conversations):
            batch, sampling, new, prompt = self._prepare(messages, index, options, many=len(conversations) > 1)
            requests.append(Request(prompt=batch, max_new_tokens=new, sampling=sampling, id=index))
            prompts.append(prompt)
        context = max(p + r.max_new_tokens for p, r in zip(prompts, requests, strict=True))
        engine = Engine(
            self.model, slots=min(self.batch_size, len(requests)), context=context, cuda_graphs=self.cuda_graphs
        )
        replies: dict[int, ChatReply] = {}
        with torch.inference_mode():
            for completion in engine.run(requests):
                replies[completion.id] = self._reply(
                    completion.token_ids, completion.finish_reason, prompts[completion.id]
                )
        return [replies[i] for i in range(len(requests))]

    # --- shared -------------------------------------------------------------------------------------------------

    def _prepare(self, messages, index: int, options: Mapping[str, Any], many: bool = False):
        """(one-row Batch, Sampling, max_new_tokens, prompt tokens) of one conversation."""
        from preprocess.collate import collate
        from preprocess.prompt import build_example
        from runtime.sampler import Sampling

        known = {
            "tools",
            "enable_thinking",
            "max_new_tokens",
            "temperature",
            "top_k",
            "top_p",
            "greedy",
            "seed",
            "image_budget",
            "template_kwargs",
        }
        if unknown := sorted(set(options) - known):
            raise TypeError(f"unknown option(s) {unknown}; known: {', '.join(sorted(known))}")
        where = f"conversations[{index}]: " if many else ""
        budget = options.get("image_budget") or self.front_end.image_budget or 280
        try:
            example = build_example(
                messages,
                self.tokenizer,
                tools=options.get("tools"),
                enable_thinking=bool(options.get("enable_thinking", False)),
                template_kwargs=options.get("template_kwargs"),
                image_budget=budget,
                video_budget=self.front_end.video_budget or 70,
                video_frames=self.front_end.video_frames or 32,
            )
        except (ValueError, OSError, LookupError, TypeError) as exc:
            if not many:
                raise
            raise type(exc)(f"{where}{exc}") from exc
        batch = collate([example], pad_id=self.tokenizer.special.pad)
        prompt = int(batch.input_ids.shape[1])
        new = options.get("max_new_tokens")
        room = self.context - prompt
        if room < 1:
            raise ContextLengthError(
                f"{where}the prompt has {prompt} tokens: no room for a reply in a context of {self.context} tokens "
                "(ChatModel.from_pretrained(context=…))"
            )
        if new is None:
            new = room
        elif check_count(new, "max_new_tokens", optional=True) > room:
            raise ContextLengthError(
                f"{where}the prompt has {prompt} tokens; with max_new_tokens {new} it needs {prompt + new}, more than "
                f"the context of {self.context} tokens (ChatModel.from_pretrained(context=…))"
            )
        greedy = options.get("greedy", False)
        g = self.generation
        temperature = 0.0 if greedy else _first(options.get("temperature"), g.temperature)
        top_k = None if greedy else _first(options.get("top_k"), g.top_k)
        top_p = None if greedy else _first(options.get("top_p"), g.top_p)
        sampling = Sampling(temperature=temperature, top_k=top_k or None, top_p=top_p, seed=options.get("seed"))
        return batch, sampling, new, prompt

    def _reply(self, ids: Sequence[int], reason: str, prompt: int) -> ChatReply:
        from preprocess.reply import parse_reply

        raw = self.tokenizer.decode(list(ids))
        parsed = parse_reply(raw)
        return ChatReply(
            text=parsed.content,
            thinking=parsed.thinking,
            tool_calls=tuple((call.name, call.arguments) for call in parsed.tool_calls),
            finish_reason=reason,
            prompt_tokens=prompt,
            completion_tokens=len(ids),
            token_ids=tuple(ids),
            raw_text=raw,
            problems=parsed.problems,
            truncated=parsed.truncated,
        )


def _first(*values):
    return next((v for v in values if v is not None), None)


def conversation(prompt: str, *, images=(), audio=(), videos=(), system: str | None = None) -> list[dict]:
    """The messages of a one-turn question: an optional system message, then one user message holding the
    images, audio and videos (paths) before the prompt's text, as ``gemma4 chat`` asks."""
    content: list[dict] = [{"type": "image", "path": os.fspath(Path(p))} for p in images]
    content += [{"type": "audio", "path": os.fspath(Path(p))} for p in audio]
    content += [{"type": "video", "path": os.fspath(Path(p))} for p in videos]
    content.append({"type": "text", "text": prompt})
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": "user", "content": content}]
