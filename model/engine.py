"""Continuous batching: a fixed number of decode slots, each holding one request, and a new request admitted into
a slot the moment its last occupant finishes, so a job's throughput follows the sum of its work, not its slowest
row (spec §1.6 for the stop ids; the loop is ``model.generate``'s, with rows that come and go).

Each step, every slot decodes one token (``Gemma4.decode``: fixed shapes, all rows together); a free slot runs
too, at position 0, and its token is ignored. Waiting requests are admitted into free slots: each is prefilled
alone, straight into its slot's rows of the shared KV cache (a one-row view of it), one chunk of
``prefill_chunk`` prompt tokens between two decode steps (``Gemma4.prefill``), so a long prompt delays the
others' next tokens by one chunk at a time, not by its whole prefill; its first token is sampled from the last
chunk's logits. While a slot is being prefilled, the decode steps write its row at the position its next chunk
starts at (and overwrites), and its length is kept.

Sampling is per request and reproducible: ``model.generate.sample`` draws a row's noise from (its seed, its step,
the token id), and the engine passes each row its own step (0 for a request's first new token), so a seeded
request draws the same tokens whatever else is in the batch, whichever slot it lands in and whenever it is
admitted; it gives exactly the tokens ``generate`` gives it alone.

Host reads: the (slots,) finished flags once per step, and the tokens of a request once, when it finishes (and,
on the presets with bidirectional image blocks, nothing more: a prompt's chunk edges are planned from its batch
while it is still on the host). Nothing loops over the vocabulary in Python.

Shapes: S slots, C the engine's context (prompt and new tokens of one request), V vocabulary, T prompt tokens.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from data_specs.batch import Batch

from .generate import PREFILL_CHUNK, Sampling, check_chunk, sample

__all__ = ["Completion", "Engine", "Request"]

_END = object()  # the request source is exhausted


@dataclass(frozen=True, kw_only=True)
class Request:
    """One prompt to complete: a one-row :class:`data_specs.batch.Batch` (media allowed) or its token ids, its
    own sampling settings, a limit on new tokens and stop ids (None: the checkpoint's, ``()``: none). ``id`` is
    handed back in its :class:`Completion`."""

    prompt: Batch | Sequence[int]
    max_new_tokens: int
    sampling: Sampling = Sampling()
    stop_ids: Sequence[int] | None = None
    id: Hashable = None

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not isinstance(self.sampling, Sampling):
            raise TypeError(f"sampling must be a model.generate.Sampling, got {type(self.sampling).__name__}")
        if isinstance(self.prompt, Batch):
            if self.prompt.input_ids.shape[0] != 1:
                raise ValueError(f"a request's prompt is one row, got a batch of {self.prompt.input_ids.shape[0]}")
        elif not self.prompt or not all(isinstance(i, int) and not isinstance(i, bool) for i in self.prompt):
            raise ValueError(
                f"a request's prompt is a one-row Batch or a non-empty list of token ids, got {self.prompt!r}"
            )


@dataclass(frozen=True)
class Completion:
    """One request's result: its new token ids (the stop id included when it stopped), why it ended ("stop" or
    "length"), its prompt length, the slot it ran in, and host timings in seconds: ``queue_s`` from ``submit``
    to admission, ``prefill_s`` from admission to its first token known on the host, ``decode_s`` from then to
    its last."""

    id: Hashable
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    slot: int
    queue_s: float
    prefill_s: float
    decode_s: float


@dataclass
class _Job:
    """A request on its way: what the engine derived from it, and when things happened (host clock)."""

    request: Request
    batch: Batch
    prompt_tokens: int
    stop: tuple[int, ...]
    settings: tuple[float, int, float, int]  # Sampling.row(): its seed drawn once, at submission
    submitted: float
    admitted: float = 0.0
    first: float | None = None
    count: int = 0  # new tokens so far (the device holds the same number in ``Engine._count``)
    slot: int = -1
    prefill: Iterator | None = None  # Gemma4.prefill of its prompt, while it runs


class Engine:
    """Continuous batching over ``slots`` rows of up to ``context`` tokens each (one KV cache, allocated once).
    ``submit`` requests (or hand ``run`` an iterable it pulls from lazily, one request per free slot), then
    iterate ``run()``: it yields each request's :class:`Completion` as soon as it finishes. Prompts longer than
    ``prefill_chunk`` tokens are prefilled a chunk per step (None: each in one pass)."""

    def __init__(self, model, *, slots: int, context: int, prefill_chunk: int | None = PREFILL_CHUNK) -> None:
        for name, value in (("slots", slots), ("context", context)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_chunk(prefill_chunk)
        self.model, self.slots, self.context, self.prefill_chunk = model, slots, context, prefill_chunk
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(slots, context)
        self.steps = 0  # decode steps run so far
        self.prefill_chunks = 0  # prefill chunks run so far
        self._queue: deque[_Job] = deque()
        self._running: list[_Job | None] = [None] * slots
        zeros = torch.zeros(slots, dtype=torch.int64, device=self.device)
        self._tokens = zeros.clone()  # (S,) each slot's last token: the next step's input
        self._count = zeros.clone()  # (S,) new tokens so far = the sampling step of the next one
        self._limit = zeros.clone()  # (S,) max_new_tokens
        self._active = torch.zeros(slots, dtype=torch.bool, device=self.device)  # (S,) decoding
        self._filling = torch.zeros(slots, dtype=torch.bool, device=self.device)  # (S,) being prefilled
        # (S,) each: temperature, top_k (0: all), top_p (1: all), seed, as sample() takes them
        self._sampling = (
            torch.zeros(slots, dtype=torch.float32, device=self.device),
            zeros.clone(),
            torch.ones(slots, dtype=torch.float32, device=self.device),
            zeros.clone(),
        )
        self._stop = torch.full((slots, 1), -1, dtype=torch.int64, device=self.device)  # (S, M), −1 pads
        self._out = torch.zeros(slots, context, dtype=torch.int64, device=self.device)  # (S, C) new tokens

    # --- requests ---------------------------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Raise ``ValueError`` if the engine cannot serve ``request`` (its prompt and new tokens exceed the
        context), as ``submit`` would; a job can turn it into an error row before handing requests over."""
        self._job(request)

    def submit(self, request: Request) -> None:
        """Queue ``request``; it is admitted by ``run`` once a slot is free (first come, first served)."""
        self._queue.append(self._job(request))

    def _job(self, request: Request) -> _Job:
        if not isinstance(request, Request):
            raise TypeError(f"the engine takes a model.engine.Request, got {type(request).__name__}")
        prompt = request.prompt
        batch = prompt if isinstance(prompt, Batch) else Batch.from_ids(torch.tensor([list(prompt)]))
        tokens = int(batch.attention_mask.sum())
        if tokens < 1:
            raise ValueError("a request's prompt has no real tokens")
        if tokens + request.max_new_tokens > self.context:
            raise ValueError(
                f"request {request.id!r}: {tokens} prompt tokens + max_new_tokens {request.max_new_tokens} = "
                f"{tokens + request.max_new_tokens} exceed the engine's context of {self.context} tokens"
            )
        stop = self.model.config.tokens.stop_ids if request.stop_ids is None else tuple(request.stop_ids)
        return _Job(request, batch, tokens, stop, request.sampling.row(), submitted=time.perf_counter())

    # --- the loop ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def run(self, requests: Iterable[Request | None] = ()) -> Iterator[Completion]:
        """Serve every submitted request, and those of ``requests`` (pulled one at a time when a slot is free
        and the queue is empty), yielding each :class:`Completion` as it finishes; returns when none is left.
        Requests submitted while iterating are served too. ``requests`` may yield None for "none ready yet":
        the engine then goes on with what it has and asks again at its next step (a source fed by other
        processes should block instead while :attr:`idle`, since the engine has nothing else to do)."""
        self._source = iter(requests)
        self._exhausted = False
        while True:
            self._admit(self._source)
            if self.idle:
                if self._exhausted:
                    return
                continue
            self._advance()
            done = self._finished().tolist()  # the one read per step: it waits for the device
            now = time.perf_counter()
            decoding = [job for job in self._running if job is not None and job.prefill is None]
            for job in decoding:
                if job.first is None:
                    job.first = now
            slots = [slot for slot, flag in enumerate(done) if flag]
            if slots:
                yield from self._release(slots, now)
                continue  # refill the freed slots before the next step
            if decoding:
                self._step()

    @property
    def idle(self) -> bool:
        """No request in any slot (prefilling or decoding)."""
        return all(job is None for job in self._running)

    def _admit(self, pending: Iterator[Request | None]) -> None:
        """Fill free slots from the queue, then from ``pending``: each newcomer's prefill is set up to write its
        slot's cache rows (``_advance`` runs it)."""
        for slot in range(self.slots):
            if self._running[slot] is not None:
                continue
            if not self._queue:
                request = next(pending, _END)
                if request is _END:
                    self._exhausted = True
                    return
                if request is None:  # nothing ready yet
                    return
                self.submit(request)
            job = self._queue.popleft()
            job.slot, job.admitted, job.count = slot, time.perf_counter(), 0
            self._running[slot] = job
            for column, value in zip(self._sampling, job.settings, strict=True):
                column[slot] = value
            self._set_stop(slot, job.stop)
            chunk, prompt = self.prefill_chunk, job.batch.input_ids.shape[1]
            bounds = self.model.chunk_bounds(job.batch, chunk) if chunk and prompt > chunk else None  # on the host
            row = self.cache.row(slot)
            row.lengths.zero_()
            job.prefill = self.model.prefill(job.batch.to(self.device), row, chunk=chunk, bounds=bounds)
            self._filling[slot] = True

    def _advance(self) -> None:
        """One prefill chunk of every slot being prefilled; a slot whose prefill ends samples its first token
        (step 0) from the last logits and starts decoding."""
        for job in self._running:
            if job is None or job.prefill is None:
                continue
            logits = next(job.prefill)  # None until the last chunk
            self.prefill_chunks += 1
            if logits is None:
                continue
            slot, rows = job.slot, slice(job.slot, job.slot + 1)
            job.prefill, job.count = None, 1
            first = sample(logits[:, -1], *(column[rows] for column in self._sampling), 0)  # (1,)
            self._tokens[rows] = first
            self._out[rows, 0] = first
            self._count[slot] = 1
            self._limit[slot] = job.request.max_new_tokens
            self._active[slot] = True
            self._filling[slot] = False

    def _set_stop(self, slot: int, stop: tuple[int, ...]) -> None:
        if len(stop) > self._stop.shape[1]:  # widen the table (rare: a request with more stop ids than any so far)
            wider = torch.full((self.slots, len(stop)), -1, dtype=torch.int64, device=self.device)
            wider[:, : self._stop.shape[1]] = self._stop
            self._stop = wider
        row = torch.full((self._stop.shape[1],), -1, dtype=torch.int64)
        row[: len(stop)] = torch.tensor(stop, dtype=torch.int64)
        self._stop[slot] = row.to(self.device)

    def _finished(self) -> torch.Tensor:
        """(S,) bool: the slots whose request has just drawn a stop id or reached its limit."""
        stopped = (self._tokens[:, None] == self._stop).any(dim=1)  # (S,)
        return self._active & (stopped | (self._count >= self._limit))

    def _step(self) -> None:
        """One token for every slot; a free slot decodes at position 0 (so it never runs past the context), a slot
        being prefilled at the position its next chunk starts at, and keeps its length."""
        self.cache.lengths.masked_fill_(~(self._active | self._filling), 0)
        # every slot's position is below its prompt + new tokens so far (a host fact): full layers read that far
        longest = max((job.prompt_tokens + job.count for job in self._running if job is not None), default=1)
        logits = self.model.decode(self._tokens[:, None], self.cache, span=self.cache.span(longest))[:, -1]  # (S, V)
        self.cache.lengths.sub_(self._filling.long())
        # per-row steps: sample's noise is a function of (seed, step, token id), elementwise in the step
        tokens = sample(logits, *self._sampling, self._count)  # (S,)
        self._out.scatter_(1, self._count.clamp(max=self.context - 1)[:, None], tokens[:, None])
        self._tokens.copy_(tokens)
        self._count.add_(self._active)
        for job in self._running:
            if job is not None and job.prefill is None:
                job.count += 1
        self.steps += 1

    def _release(self, slots: list[int], now: float) -> Iterator[Completion]:
        """Read the finished slots' tokens (one transfer), free the slots, and hand the results over."""
        jobs = [self._running[slot] for slot in slots]
        longest = max(job.count for job in jobs)
        rows = self._out[slots, :longest].tolist()
        for job in jobs:  # freed before any is handed over, whatever the consumer does meanwhile
            self._running[job.slot] = None
            self._active[job.slot] = False
        for job, row in zip(jobs, rows, strict=True):
            tokens = row[: job.count]
            yield Completion(
                id=job.request.id,
                token_ids=tokens,
                finish_reason="stop" if tokens[-1] in job.stop else "length",
                prompt_tokens=job.prompt_tokens,
                slot=job.slot,
                queue_s=job.admitted - job.submitted,
                prefill_s=(job.first or now) - job.admitted,
                decode_s=now - (job.first or now),
            )
