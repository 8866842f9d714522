"""The continuous-batching scheduler: pure policy over :class:`~runtime.request.RequestState` records, no model and
no device. The engine loop is vLLM v1's ``EngineCore.step``: ``plan = scheduler.schedule()``, the runner runs the
plan, ``scheduler.update(plan, finished)`` applies what it sampled.

Each step has a budget of ``token_budget`` tokens, spent in this order (vLLM v1's chunked-prefill policy):

1. every decoding request gets one token (``token_budget >= slots``, so these always fit);
2. requests already prefilling continue, oldest admission first, each with one chunk;
3. waiting requests are admitted first come, first served into free slots (lowest index first), each with its
   first chunk, while budget and slots remain; once the head of the queue cannot be admitted, nobody behind it is.

A chunk runs from the request's ``num_computed_tokens`` to the largest allowed edge (``RequestState.edges``, spec
§2.7: never inside a vision block) within ``min(prompt_tokens, start + budget left, start + chunk)``. When no edge
lies in that range the request waits for a later step, except the step's first chunk, which takes the first
allowed edge beyond it: a vision block longer than the budget (or ``chunk``) still makes progress, and that step
exceeds the budget by the block (``StepPlan.over_budget``). So every step with work makes progress.

The plan depends only on the sequence of ``add`` / ``schedule`` / ``update`` / ``abort`` calls (no clocks, no hash
order). The scheduler does not know the context length: checking that a prompt and its new tokens fit is the
engine's job, before ``add``. Plain Python only: no torch, no numpy.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

from data_specs.checks import check_count

from .request import FinishReason, RequestState, RequestStatus

__all__ = ["PrefillChunk", "Scheduler", "StepPlan"]


@dataclass(frozen=True, kw_only=True)
class PrefillChunk:
    """Prompt positions ``[start, stop)`` of ``request`` to write into ``slot``'s cache rows this step."""

    slot: int
    request: RequestState
    start: int
    stop: int

    @property
    def num_tokens(self) -> int:
        return self.stop - self.start

    @property
    def first(self) -> bool:
        """The prompt's first chunk (the slot's previous contents are not this request's)."""
        return self.start == 0

    @property
    def last(self) -> bool:
        """The prompt's last chunk: the runner samples the request's first new token from its logits."""
        return self.stop == self.request.prompt_tokens


@dataclass(frozen=True, kw_only=True)
class StepPlan:
    """What one step runs: one token for each of ``decodes`` (in slot order), the ``prefills`` chunks (continuing
    requests by admission, then new ones), and which requests this step ``admitted`` (also among ``prefills``).
    ``over_budget``: the step's first chunk had to reach past the budget to the end of a vision block."""

    decodes: tuple[RequestState, ...] = ()
    prefills: tuple[PrefillChunk, ...] = ()
    admitted: tuple[RequestState, ...] = ()
    over_budget: bool = False

    @property
    def num_tokens(self) -> int:
        """Tokens the step feeds the model: one per decode plus every chunk's length."""
        return len(self.decodes) + sum(chunk.num_tokens for chunk in self.prefills)

    @property
    def empty(self) -> bool:
        return not self.decodes and not self.prefills


def _chunk_stop(request: RequestState, room: int, force: bool) -> int | None:
    """Where ``request``'s next chunk ends with ``room`` tokens to spend: the largest allowed edge within reach;
    with none there, the first allowed edge beyond it if ``force``, else None (wait for a later step)."""
    start = request.num_computed_tokens
    limit = min(request.prompt_tokens, start + room)
    edges = request.edges
    if edges is None:  # any position is an edge
        if limit > start:
            return limit
        return start + 1 if force else None
    i = bisect_right(edges, limit) - 1
    if i >= 0 and edges[i] > start:
        return edges[i]
    return edges[bisect_right(edges, start)] if force else None


class Scheduler:
    """Plans each step of continuous batching over ``slots`` decode slots with at most ``token_budget`` tokens
    per step (``>= slots``); ``chunk`` caps one prefill chunk (None: the budget alone limits it).

    A request is live from ``add`` until it finishes or is aborted; ids are unique among live requests (a
    finished request's id may be added again). ``schedule`` admits requests (status, slot) and returns the plan;
    ``update`` must apply it before the next ``schedule``."""

    def __init__(self, slots: int, token_budget: int, chunk: int | None = None) -> None:
        check_count(slots, "slots")
        check_count(token_budget, "token_budget")
        if token_budget < slots:
            raise ValueError(
                f"token_budget must be at least slots so every decoding slot fits, got token_budget={token_budget} "
                f"< slots={slots}"
            )
        check_count(chunk, "chunk", optional=True)
        self.slots = slots
        self.token_budget = token_budget
        self.chunk = chunk
        self._waiting: deque[RequestState] = deque()
        self._slots: list[RequestState | None] = [None] * slots
        self._prefilling: list[RequestState] = []  # admission order
        self._live: dict[Hashable, RequestState] = {}
        self._pending: StepPlan | None = None  # the plan schedule returned that update has not applied

    # --- state ------------------------------------------------------------------------------------------------

    @property
    def waiting(self) -> tuple[RequestState, ...]:
        """Requests not yet admitted, first come first."""
        return tuple(self._waiting)

    @property
    def running(self) -> tuple[RequestState, ...]:
        """Requests holding a slot (prefilling or decoding), in slot order."""
        return tuple(r for r in self._slots if r is not None)

    @property
    def free_slots(self) -> tuple[int, ...]:
        """Indices of the free slots, rising."""
        return tuple(i for i, r in enumerate(self._slots) if r is None)

    @property
    def has_work(self) -> bool:
        """A request is waiting or running (``schedule`` would return a non-empty plan)."""
        return bool(self._live)

    # --- calls ------------------------------------------------------------------------------------------------

    def add(self, request: RequestState) -> None:
        """Queue ``request`` (status WAITING, id not live) behind the waiting ones."""
        if request.status is not RequestStatus.WAITING:
            raise ValueError(f"request {request.id!r}: status must be WAITING to be added, got {request.status}")
        if request.id in self._live:
            raise ValueError(f"request id {request.id!r} is already waiting or running")
        if request.submitted is None:
            request.submitted = time.perf_counter()
        self._live[request.id] = request
        self._waiting.append(request)

    def schedule(self) -> StepPlan:
        """Admit what fits and plan the next step (see the module docstring for the policy)."""
        if self._pending is not None:
            raise RuntimeError("schedule() called again before update() applied the previous plan")
        budget = self.token_budget
        decodes = tuple(r for r in self._slots if r is not None and r.status is RequestStatus.DECODING)
        budget -= len(decodes)
        prefills: list[PrefillChunk] = []
        for request in self._prefilling:
            if budget <= 0:
                break
            chunk = self._chunk(request, budget, force=not prefills)
            if chunk is not None:
                prefills.append(chunk)
                budget -= chunk.num_tokens
        admitted: list[RequestState] = []
        now = time.perf_counter()
        while self._waiting and budget > 0 and None in self._slots:
            request = self._waiting[0]
            slot = self._slots.index(None)
            chunk = self._chunk(request, budget, force=not prefills, slot=slot)
            if chunk is None:
                break  # first come, first served: nobody overtakes the head of the queue
            self._waiting.popleft()
            request.status, request.slot, request.admitted = RequestStatus.PREFILLING, slot, now
            self._slots[slot] = request
            self._prefilling.append(request)
            admitted.append(request)
            prefills.append(chunk)
            budget -= chunk.num_tokens
        plan = StepPlan(decodes=decodes, prefills=tuple(prefills), admitted=tuple(admitted), over_budget=budget < 0)
        self._pending = None if plan.empty else plan
        return plan

    def _chunk(
        self, request: RequestState, budget: int, *, force: bool, slot: int | None = None
    ) -> PrefillChunk | None:
        room = budget if self.chunk is None else min(budget, self.chunk)
        stop = _chunk_stop(request, room, force)
        if stop is None:
            return None
        slot = request.slot if slot is None else slot
        return PrefillChunk(slot=slot, request=request, start=request.num_computed_tokens, stop=stop)

    def update(
        self, plan: StepPlan, finished: Mapping[Hashable, FinishReason] | Iterable[Hashable] = ()
    ) -> list[RequestState]:
        """Apply the step ``plan`` (the last one ``schedule`` returned) and return the requests it finished, in
        slot order. ``finished``: the runner's stop detections, ids of requests that sampled a token this step
        (a decode or a last chunk) mapped to their reason, or an iterable of ids meaning ``STOP``. A request that
        reaches ``max_new_tokens`` finishes with ``LENGTH`` unless ``finished`` names it. Requests aborted
        since ``schedule`` are skipped."""
        if plan is not self._pending and not (plan.empty and self._pending is None):
            raise ValueError("plan must be the last plan schedule() returned, not yet applied by update()")
        if isinstance(finished, Mapping):
            reasons = {key: FinishReason(reason) for key, reason in finished.items()}
        else:
            reasons = dict.fromkeys(finished, FinishReason.STOP)
        sampling = [chunk.request for chunk in plan.prefills if chunk.last] + list(plan.decodes)
        ids = {r.id for r in sampling}
        for key in reasons:
            if key not in ids:
                raise ValueError(f"finished names request {key!r}, which sampled no token in this plan")
        now = time.perf_counter()
        sampled: list[RequestState] = []
        for chunk in plan.prefills:
            request = chunk.request
            if request.is_finished:  # aborted since schedule
                continue
            request.num_computed_tokens = chunk.stop
            if chunk.last:
                request.num_output_tokens, request.status, request.first_token = 1, RequestStatus.DECODING, now
                self._prefilling.remove(request)
                sampled.append(request)
        for request in plan.decodes:
            if request.is_finished:
                continue
            request.num_computed_tokens += 1
            request.num_output_tokens += 1
            sampled.append(request)
        self._pending = None
        done = []
        for request in sampled:
            reason = reasons.get(request.id)
            if reason is None and request.num_output_tokens >= request.max_new_tokens:
                reason = FinishReason.LENGTH
            if reason is not None:
                self._finish(request, reason, now)
                done.append(request)
        return sorted(done, key=lambda r: r.slot)

    def abort(self, request_id: Hashable, reason: FinishReason = FinishReason.ABORT) -> RequestState:
        """Finish the live request ``request_id`` now with ``reason`` (``ABORT``: cancelled; ``ERROR``: the engine
        could not run it) (waiting: leaves the queue; running: frees its slot) and return it. Allowed between
        ``schedule`` and ``update``: ``update`` then skips it."""
        request = self._live.get(request_id)
        if request is None:
            raise KeyError(f"request id {request_id!r} is not waiting or running")
        reason = FinishReason(reason)
        if request.is_waiting:
            self._waiting.remove(request)
        self._finish(request, reason, time.perf_counter())
        return request

    def _finish(self, request: RequestState, reason: FinishReason, now: float) -> None:
        if request.is_prefilling:
            self._prefilling.remove(request)
        if request.is_running:
            self._slots[request.slot] = None  # the record keeps its slot, for reporting
        request.status, request.finish_reason, request.finished = RequestStatus.FINISHED, reason, now
        del self._live[request.id]
