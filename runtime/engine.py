"""The engine loop: ``plan → run → update`` (nano-vllm's ``LLMEngine.step``, vLLM v1's ``EngineCore.step``).

Each step the scheduler (pure policy, :mod:`runtime.scheduler`) plans which slots decode one token and which
prompt chunks run under the token budget; the runner (:mod:`runtime.runner`) runs them together in one forward and
draws the tokens; the engine reads the step's finished flags — the one device→host read of a step — and the
scheduler applies the results. A request's tokens are read once, when it finishes. Requests come from ``submit``
or from an iterable ``run`` pulls lazily, one per free slot.

Each request succeeds or fails alone. ``submit`` checks everything about a request the engine will rely on (its
prompt ids and stop ids within the vocabulary, its length within the context, its id not live) and raises for a
bad one; ``run`` turns a bad request it pulls into an ``ERROR`` :class:`Completion` and goes on. A request whose
admission fails (its media cannot be encoded) and one whose logits turn non-finite (a NaN: the draw would be
token 0, ``<pad>``) end with ``ERROR`` too, their slot freed, and the other requests go on. The non-finite check
rides in the step's one read: the finished flags are codes (running, stopped, non-finite).

Sampling is per request and reproducible (:mod:`runtime.sampler`): bit for bit on the CPU in float32 whatever the
company; on CUDA the same tokens only for the same device, dtype and company (a step's problem size follows the
rows it runs, and kernels chosen by problem size may change the last bits of logits between batch shapes).

Shapes: S slots, C the engine's context (prompt and new tokens of one request), V vocabulary.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from data_specs.batch import Batch
from data_specs.checks import check_count
from data_specs.media import Modality

from .request import FinishReason, RequestState, chunk_edges
from .runner import NONFINITE, STOPPED, Prompt, Runner, runs
from .sampler import Sampling
from .scheduler import Scheduler
from .stop import StopStrings

__all__ = ["PREFILL_CHUNK", "Completion", "Engine", "Request", "check_chunk"]

_END = object()
_NO_ID = object()

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
    handed back in its :class:`Completion`: hashable, and unique among an engine's live requests (None excepted:
    a request without an id). ``ready_at``: when the request was ready to run (a job that prepares
    rows ahead of the engine sets it), from which its ``queue_s`` counts. ``stop_strings``: a
    :class:`runtime.stop.StopStrings` watching this request's text (one per request); the request finishes with
    ``stop`` on the step whose token completes one of them. Token ids are ``int`` (not ``bool``) ≥ 0 here; the
    engine checks them against its vocabulary at ``submit``."""

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
        if self.stop_ids is not None and (
            isinstance(self.stop_ids, str | bytes)
            or not isinstance(self.stop_ids, Sequence)
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.stop_ids)
        ):
            raise ValueError(f"stop_ids must be a sequence of token ids (integers ≥ 0) or None, got {self.stop_ids!r}")
        try:
            hash(self.id)
        except TypeError:
            raise TypeError(f"a request's id must be hashable, got {type(self.id).__name__} {self.id!r}") from None


@dataclass(frozen=True)
class Completion:
    """One request's result: its new token ids (the stop id included when it stopped), why it ended, its prompt
    length, the slot it ran in, and host timings in seconds: ``queue_s`` from the request being ready
    (``Request.ready_at``, else its ``submit``) to admission,
    ``prefill_s`` from admission to its first token known on the host, ``decode_s`` from then to its last.
    ``stop_string``: the stop string that ended it (``Request.stop_strings``), else None.

    A request the engine could not serve finishes with ``ERROR``: ``error`` says why (``"ValueError: …"``),
    ``token_ids`` is empty, and a request refused before it had a slot has ``prompt_tokens`` 0, ``slot`` −1 and
    zero timings. Its ``id`` is the request's (``getattr(request, "id", None)`` for something that is not a
    :class:`Request`): a request refused because its id was live reports that id beside the live one's result."""

    id: Hashable
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    slot: int
    queue_s: float
    prefill_s: float
    decode_s: float
    stop_string: str | None = None
    error: str | None = None


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
        self._live: set[Hashable] = set()  # the live requests' _live_key
        self._watched = 0  # live requests with stop strings: their tokens are read every step

    # --- requests ---------------------------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Raise ``ValueError`` if the engine cannot serve ``request`` (prompt and new tokens exceed the context,
        token ids outside the vocabulary), ``TypeError`` if it is not a :class:`Request`."""
        self._job(request)

    def submit(self, request: Request) -> None:
        """Queue ``request``; it is admitted once a slot is free (first come, first served). Raises as
        :meth:`check` does, and ``ValueError`` if its id (or the request itself) is live already: one result per
        request id."""
        job = self._job(request)
        if _live_key(request) in self._live:
            raise ValueError(f"request {request.id!r} is waiting or running already: one result per request id")
        self._jobs[job.state.id] = job
        self._live.add(_live_key(request))
        self._watched += request.stop_strings is not None
        self.scheduler.add(job.state)

    def _job(self, request: Request) -> _Job:
        if not isinstance(request, Request):
            raise TypeError(f"the engine takes a runtime.engine.Request, got {type(request).__name__}")
        prompt, vocab = request.prompt, self.model.config.text.vocab_size
        if not isinstance(prompt, Prompt | Batch):  # token ids (Request checked they are ints): before any tensor
            _check_ids(request.id, "prompt", prompt, vocab)
        if not isinstance(prompt, Prompt):
            batch = prompt if isinstance(prompt, Batch) else Batch.from_ids(torch.tensor([list(prompt)]))
            if batch.attention_mask.device.type != "cpu":
                raise ValueError(f"request {request.id!r}: a prompt Batch must be on the host (the engine moves it)")
            prompt = Prompt.of(self.model, batch)  # host ids and types now; media encoded at admission
        tokens, types = len(prompt.ids), prompt.types
        if tokens < 1:
            raise ValueError(f"request {request.id!r}: the prompt has no real tokens")
        if prompt.ids.min() < 0 or prompt.ids.max() >= vocab:
            _check_ids(request.id, "prompt", prompt.ids.tolist(), vocab)
        if tokens + request.max_new_tokens > self.context:
            raise ValueError(
                f"request {request.id!r}: {tokens} prompt tokens + max_new_tokens {request.max_new_tokens} = "
                f"{tokens + request.max_new_tokens} exceed the engine's context of {self.context} tokens"
            )
        stop = self.model.config.tokens.stop_ids if request.stop_ids is None else tuple(request.stop_ids)
        _check_ids(request.id, "stop_ids", stop, vocab)
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
        may yield None for "none ready yet". A pulled request ``submit`` refuses (or anything that is not a
        :class:`Request`) is yielded at once as an ``ERROR`` completion, and the others go on."""
        source, exhausted = iter(requests), False
        while True:
            while not exhausted and not self.scheduler.waiting and self.scheduler.free_slots:
                request = next(source, _END)
                if request is _END:
                    exhausted = True
                elif request is None:
                    break
                else:
                    try:
                        self.submit(request)
                    except (ValueError, TypeError) as error:  # what submit raises for a bad request
                        yield _refused(request, error)
            if not self.scheduler.has_work:
                if exhausted:
                    return
                continue
            yield from self.step()

    def step(self, drawn: dict | None = None) -> list[Completion]:
        """One ``plan → run → update``; the requests it finished (those that failed at admission first). With
        ``drawn`` (a dict), the step's tokens are read with its finished codes (the same one transfer) and stored
        there by request id (not for a row whose logits were not finite). While a request with stop strings runs,
        the tokens are read so every step (still that one transfer)."""
        plan = self.scheduler.schedule()
        failed = [self._admit(state) for state in plan.admitted]
        failed = [completion for completion in failed if completion is not None]
        runnable = plan
        if failed:  # the runner runs the plan without the requests that failed at admission (aborted: skipped)
            prefills = tuple(c for c in plan.prefills if not c.request.is_finished)
            admitted = tuple(s for s in plan.admitted if not s.is_finished)
            runnable = replace(plan, prefills=prefills, admitted=admitted)
            if runnable.empty:
                self.scheduler.update(plan)
                return failed
        finished, slots = self.runner.step(runnable)
        self.steps += 1
        self.prefill_chunks += len(runnable.prefills)
        by_slot = {r.slot: r for r in runnable.decodes} | {c.slot: c.request for c in runnable.prefills if c.last}
        if drawn is None and not self._watched:
            codes = finished.tolist()  # the one read of a step: (R,) codes
        else:
            rows = len(finished)
            codes, tokens = torch.stack([finished, self.runner.next[:rows]]).tolist()  # one read
            for slot in slots:
                if codes[slot] == NONFINITE:
                    continue  # its draw means nothing
                job = self._jobs[by_slot[slot].id]
                if drawn is not None:
                    drawn[job.request.id] = tokens[slot]
                watch = job.request.stop_strings
                if watch is not None and not codes[slot] and watch.feed(tokens[slot]):
                    codes[slot] = STOPPED  # its text holds a stop string: it ends now, as on a stop id
        reasons = {by_slot[slot].id: _REASONS[codes[slot]] for slot in slots if codes[slot]}
        done = self.scheduler.update(plan, reasons)
        return failed + [self._complete(state) for state in done]

    def _admit(self, state: RequestState) -> Completion | None:
        """Take an admitted request into its slot; a failure (its media cannot be encoded …) ends that request
        alone with ``ERROR``: the request's own data, so any exception. A device that fails for every request
        fails again in the step, which raises."""
        job = self._jobs[state.id]
        try:
            self.runner.admit(state.slot, job.prompt, job.settings, job.stop)
        except Exception as error:  # noqa: BLE001 - one request's failure, reported in its completion
            self.scheduler.abort(state.id, FinishReason.ERROR)
            return self._complete(state, f"at admission: {type(error).__name__}: {error}")
        return None

    def _complete(self, state: RequestState, error: str | None = None) -> Completion:
        job = self._jobs.pop(state.id)
        self._live.discard(_live_key(job.request))
        watch = job.request.stop_strings
        self._watched -= watch is not None
        tokens: list[int] = []
        if state.finish_reason is FinishReason.ERROR:
            nonfinite = error is None  # the step's code: its logits were not finite, nor perhaps its cache rows
            if nonfinite:
                error = (
                    f"the model's logits were not finite (NaN or infinity) when drawing new token "
                    f"{state.num_output_tokens} of request {job.request.id!r}"
                )
            self.runner.release(state.slot, clear=nonfinite)
        else:
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
            error=error,
        )


def _live_key(request: Request) -> Hashable:
    """What makes a request live once: its id, or the request itself when it has none (ids are hashable: Request
    checks; ``_NO_ID`` is private, so no caller's id equals the pair)."""
    return request.id if request.id is not None else (_NO_ID, id(request))


_REASONS = {STOPPED: FinishReason.STOP, NONFINITE: FinishReason.ERROR}  # a step's finished code → the reason


def _check_ids(key: Hashable, what: str, ids: Sequence[int], vocab: int) -> None:
    """Refuse token ids outside ``0 … vocab − 1`` (an embedding lookup or a stop table would fail on them, or an
    int64 tensor not hold them), naming the request, what they are and the first such id."""
    bad = next((i for i in ids if not 0 <= i < vocab), None)
    if bad is not None:
        raise ValueError(f"request {key!r}: {what} holds the token id {bad}, outside the vocabulary 0 … {vocab - 1}")


def _refused(request: object, error: Exception) -> Completion:
    """The ``ERROR`` completion of a request ``submit`` refused."""
    key = getattr(request, "id", None)
    try:
        hash(key)
    except TypeError:
        key = None
    return Completion(
        id=key,
        token_ids=[],
        finish_reason=FinishReason.ERROR,
        prompt_tokens=0,
        slot=-1,
        queue_s=0.0,
        prefill_s=0.0,
        decode_s=0.0,
        error=f"{type(error).__name__}: {error}",
    )
