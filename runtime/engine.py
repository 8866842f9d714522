"""The engine loop: ``plan → run → update`` (nano-vllm's ``LLMEngine.step``, vLLM v1's ``EngineCore.step``).

Each step the scheduler (pure policy, :mod:`runtime.scheduler`) plans which slots decode one token and which
prompt chunks run under the token budget; the runner (:mod:`runtime.runner`) runs them together in one forward and
draws the tokens; the engine reads the step's finished flags — the one device→host read of a step — and the
scheduler applies the results. A request's tokens are read once, when it finishes. Requests come from ``submit``
or from an iterable ``run`` pulls lazily, one per free slot.

Sampling is per request and reproducible (:mod:`runtime.sampler`): bit for bit on the CPU in float32 whatever the
company; on CUDA the same tokens only for the same device, dtype and company (a step's problem size follows the
rows it runs, and kernels chosen by problem size may change the last bits of logits between batch shapes).

Shapes: S slots, C the engine's context (prompt and new tokens of one request), V vocabulary.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data_specs.batch import Batch
from data_specs.checks import check_count
from data_specs.media import Modality

from .request import FinishReason, RequestState, chunk_edges
from .runner import Prompt, Runner, runs
from .sampler import Sampling
from .scheduler import Scheduler
from .stop import StopStrings

__all__ = ["PREFILL_CHUNK", "Completion", "Engine", "Request", "check_chunk"]

_END = object()

# Prompt tokens per prefill chunk by default: long prompts are prefilled in pieces of this size, so a step's
# activations and masks stay those of one chunk (the KV cache holds the whole prompt in any case).
PREFILL_CHUNK = 1024


def check_chunk(prefill_chunk: int | None) -> None:
    """Refuse a prefill chunk that is not None or a positive number of tokens."""
    if prefill_chunk is not None and (
        isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1
    ):
        raise ValueError(f"prefill_chunk must be a positive number of tokens or None, got {prefill_chunk!r}")


@dataclass(frozen=True, kw_only=True)
class Request:
    """One prompt to complete: a one-row :class:`data_specs.batch.Batch` (media allowed), its token ids, or a
    :class:`runtime.runner.Prompt` (a row of a batch whose media are already encoded: ``Prompt.rows``), its own
    sampling settings, a limit on new tokens and stop ids (None: the checkpoint's, ``()``: none). ``id`` is
    handed back in its :class:`Completion`. ``ready_at``: when the request was ready to run (a job that prepares
    rows ahead of the engine sets it), from which its ``queue_s`` counts. ``stop_strings``: a
    :class:`runtime.stop.StopStrings` watching this request's text (one per request); the request finishes with
    ``stop`` on the step whose token completes one of them."""

    prompt: Batch | Sequence[int] | Prompt
    max_new_tokens: int
    sampling: Sampling = Sampling()
    stop_ids: Sequence[int] | None = None
    id: Hashable = None
    ready_at: float | None = None  # time.perf_counter() when the request was ready (default: its submission)
    stop_strings: StopStrings | None = None

    def __post_init__(self) -> None:
        if self.stop_strings is not None and not isinstance(self.stop_strings, StopStrings):
            raise TypeError(f"stop_strings must be a runtime.stop.StopStrings, got {type(self.stop_strings).__name__}")
        check_count(self.max_new_tokens, "max_new_tokens")
        if not isinstance(self.sampling, Sampling):
            raise TypeError(f"sampling must be a runtime.sampler.Sampling, got {type(self.sampling).__name__}")
        if isinstance(self.prompt, Prompt):
            pass
        elif isinstance(self.prompt, Batch):
            if self.prompt.input_ids.shape[0] != 1:
                raise ValueError(f"a request's prompt is one row, got a batch of {self.prompt.input_ids.shape[0]}")
        elif not self.prompt or not all(isinstance(i, int) and not isinstance(i, bool) for i in self.prompt):
            raise ValueError(
                f"a request's prompt is a one-row Batch or a non-empty list of token ids, got {self.prompt!r}"
            )


@dataclass(frozen=True)
class Completion:
    """One request's result: its new token ids (the stop id included when it stopped), why it ended, its prompt
    length, the slot it ran in, and host timings in seconds: ``queue_s`` from the request being ready
    (``Request.ready_at``, else its ``submit``) to admission,
    ``prefill_s`` from admission to its first token known on the host, ``decode_s`` from then to its last.
    ``stop_string``: the stop string that ended it (``Request.stop_strings``), else None."""

    id: Hashable
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    slot: int
    queue_s: float
    prefill_s: float
    decode_s: float
    stop_string: str | None = None


@dataclass
class _Job:
    request: Request
    prompt: Prompt
    stop: tuple[int, ...]
    settings: tuple[float, int, float, int]
    state: RequestState


class Engine:
    """Continuous batching over ``slots`` rows of up to ``context`` tokens each (one KV cache, allocated once).
    A step runs at most ``token_budget`` tokens (default: ``prefill_chunk`` + ``slots``): every decoding slot's
    next token and prompt chunks of at most ``prefill_chunk`` tokens (None: the budget bounds them). On CUDA the
    decode steps run as CUDA graphs unless ``cuda_graphs`` is False."""

    def __init__(
        self,
        model,
        *,
        slots: int,
        context: int,
        prefill_chunk: int | None = PREFILL_CHUNK,
        token_budget: int | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        check_count(slots, "slots")
        check_count(context, "context")
        check_chunk(prefill_chunk)
        budget = token_budget if token_budget is not None else (prefill_chunk or context) + slots
        self.model, self.slots, self.context, self.prefill_chunk = model, slots, context, prefill_chunk
        self.scheduler = Scheduler(slots, budget, prefill_chunk)
        self.runner = Runner(model, slots=slots, context=context, cuda_graphs=cuda_graphs)
        self.steps = 0  # steps run so far
        self.prefill_chunks = 0  # prompt chunks run so far (within those steps)
        self._serial = itertools.count()
        self._jobs: dict[int, _Job] = {}
        self._watched = 0  # live requests with stop strings: their tokens are read every step

    # --- requests ---------------------------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Raise ``ValueError`` if the engine cannot serve ``request`` (prompt and new tokens exceed the context)."""
        self._job(request)

    def submit(self, request: Request) -> None:
        """Queue ``request``; it is admitted once a slot is free (first come, first served)."""
        job = self._job(request)
        self._jobs[job.state.id] = job
        self._watched += request.stop_strings is not None
        self.scheduler.add(job.state)

    def _job(self, request: Request) -> _Job:
        if not isinstance(request, Request):
            raise TypeError(f"the engine takes a runtime.engine.Request, got {type(request).__name__}")
        prompt = request.prompt
        if not isinstance(prompt, Prompt):
            batch = prompt if isinstance(prompt, Batch) else Batch.from_ids(torch.tensor([list(prompt)]))
            if batch.attention_mask.device.type != "cpu":
                raise ValueError(f"request {request.id!r}: a prompt Batch must be on the host (the engine moves it)")
            prompt = Prompt.of(self.model, batch)  # host ids and types now; media encoded at admission
        tokens, types = len(prompt.ids), prompt.types
        if tokens < 1:
            raise ValueError(f"request {request.id!r}: the prompt has no real tokens")
        if tokens + request.max_new_tokens > self.context:
            raise ValueError(
                f"request {request.id!r}: {tokens} prompt tokens + max_new_tokens {request.max_new_tokens} = "
                f"{tokens + request.max_new_tokens} exceed the engine's context of {self.context} tokens"
            )
        stop = self.model.config.tokens.stop_ids if request.stop_ids is None else tuple(request.stop_ids)
        state = RequestState(
            id=next(self._serial),
            prompt_tokens=tokens,
            max_new_tokens=request.max_new_tokens,
            edges=self._edges(types, tokens),
            submitted=request.ready_at,
        )
        return _Job(request, prompt, stop, request.sampling.row(), state)

    def _edges(self, types: np.ndarray, tokens: int) -> tuple[int, ...] | None:
        """Where a prompt chunk may end: anywhere, except inside an image's soft tokens on the presets that attend
        both ways inside an image. types (T,) of the prompt's real tokens."""
        vision = (types == Modality.IMAGE) | (types == Modality.VIDEO)
        if self.model.config.text.bidirectional != "vision" or not vision.any():
            return None
        return chunk_edges(tokens, runs(vision))

    # --- the loop ---------------------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self.scheduler.has_work

    @torch.no_grad()
    def run(self, requests: Iterable[Request | None] = ()) -> Iterator[Completion]:
        """Serve every submitted request, and those of ``requests`` (pulled one at a time while a slot is free and
        nothing waits), yielding each :class:`Completion` as it finishes; returns when none is left. ``requests``
        may yield None for "none ready yet"."""
        source, exhausted = iter(requests), False
        while True:
            while not exhausted and not self.scheduler.waiting and self.scheduler.free_slots:
                request = next(source, _END)
                if request is _END:
                    exhausted = True
                elif request is None:
                    break
                else:
                    self.submit(request)
            if not self.scheduler.has_work:
                if exhausted:
                    return
                continue
            yield from self.step()

    def step(self, drawn: dict | None = None) -> list[Completion]:
        """One ``plan → run → update``; the requests it finished. With ``drawn`` (a dict), the step's tokens are
        read with its finished flags (the same one transfer) and stored there by request id. While a request with
        stop strings runs, the tokens are read so every step (still that one transfer)."""
        plan = self.scheduler.schedule()
        for state in plan.admitted:
            job = self._jobs[state.id]
            self.runner.admit(state.slot, job.prompt, job.settings, job.stop)
        finished, slots = self.runner.step(plan)
        self.steps += 1
        self.prefill_chunks += len(plan.prefills)
        by_slot = {r.slot: r for r in plan.decodes} | {c.slot: c.request for c in plan.prefills if c.last}
        if drawn is None and not self._watched:
            flags = finished.tolist()  # the one read of a step: (R,) flags
        else:
            rows = len(finished)
            flags, tokens = torch.stack([finished.long(), self.runner.next[:rows]]).tolist()  # one read
            for slot in slots:
                job = self._jobs[by_slot[slot].id]
                if drawn is not None:
                    drawn[job.request.id] = tokens[slot]
                watch = job.request.stop_strings
                if watch is not None and not flags[slot] and watch.feed(tokens[slot]):
                    flags[slot] = 1  # its text holds a stop string: it ends now, as on a stop id
        stopped = [by_slot[slot].id for slot in slots if flags[slot]]
        done = self.scheduler.update(plan, stopped)
        return [self._complete(state) for state in done]

    def _complete(self, state: RequestState) -> Completion:
        job = self._jobs.pop(state.id)
        watch = job.request.stop_strings
        self._watched -= watch is not None
        tokens = self.runner.out[state.slot, : state.num_output_tokens].tolist()  # its tokens, read once
        self.runner.release(state.slot)
        now = state.finished
        first = state.first_token or now
        return Completion(
            id=job.request.id,
            token_ids=tokens,
            finish_reason=state.finish_reason,
            prompt_tokens=state.prompt_tokens,
            slot=state.slot,
            queue_s=state.admitted - state.submitted,
            prefill_s=first - state.admitted,
            decode_s=now - first,
            stop_string=None if watch is None else watch.matched,
        )
