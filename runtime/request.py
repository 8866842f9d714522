"""A request's record in the runtime: its status, how far its prompt is in the KV cache, how many tokens it has
produced, its slot and why it finished. The scheduler (``runtime.scheduler``) reads and advances these records;
it never sees token ids, pixels or tensors, only counts.

Counting follows nano-vllm's ``Sequence`` and vLLM v1's ``Request``: ``num_computed_tokens`` counts the tokens
whose K/V are in the cache. During the prefill it rises chunk by chunk to ``prompt_tokens``; the last chunk's
logits give the first new token, which is not yet in the cache; each decode step then writes the previous token's
K/V and samples the next, so while decoding ``num_computed_tokens == prompt_tokens + num_output_tokens - 1``.

Chunk edges (spec §2.7): on the presets with bidirectional vision attention, a run of image or video soft tokens
attends to itself both ways, so a prefill chunk must not end strictly inside one; ``chunk_edges`` lists the
positions where a chunk may end. Plain Python only: no torch, no numpy.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from data_specs.checks import check_count, is_count

__all__ = ["FinishReason", "RequestState", "RequestStatus", "chunk_edges"]


class RequestStatus(enum.Enum):
    """Where a request is: queued, having its prompt written to the cache, producing tokens, or done."""

    WAITING = enum.auto()
    PREFILLING = enum.auto()
    DECODING = enum.auto()
    FINISHED = enum.auto()


class FinishReason(enum.StrEnum):
    """Why a request finished (a ``StrEnum``: ``reason == "stop"`` holds and ``str(reason)`` is its value)."""

    STOP = "stop"  # the runner sampled one of the request's stop ids
    LENGTH = "length"  # the request produced max_new_tokens tokens
    ABORT = "abort"  # Scheduler.abort: cancelled by the caller, waiting or running
    ERROR = "error"  # the engine could not serve it: refused, failed at admission, or its logits were not finite


def chunk_edges(length: int, runs: Sequence[tuple[int, int]] = ()) -> tuple[int, ...]:
    """The positions where a prefill chunk of a ``length``-token prompt may end: every ``e`` in 1..``length``
    except those strictly inside a run (``start < e < stop``). ``runs`` are half-open ``(start, stop)`` spans of
    prompt positions that must not be split (a vision block's soft tokens, spec §2.7); they may touch or overlap.
    The result is rising and always ends with ``length`` (the value of :attr:`RequestState.edges`).

    >>> chunk_edges(6, [(1, 4)])
    (1, 4, 5, 6)
    """
    if not is_count(length, 1):
        raise ValueError(f"length must be a positive integer, got {length!r}")
    inside = [False] * (length + 1)  # inside[e]: an edge at e would split a run
    for run in runs:
        start, stop = run
        if not (is_count(start, 0) and is_count(stop, 0) and start < stop <= length):
            raise ValueError(f"runs must hold spans (start, stop) with 0 <= start < stop <= {length}, got {run!r}")
        inside[start + 1 : stop] = [True] * (stop - start - 1)
    return tuple(e for e in range(1, length + 1) if not inside[e])


@dataclass(kw_only=True, eq=False)
class RequestState:
    """One request as the scheduler sees it. Mutable: ``Scheduler.schedule`` admits it (status, slot,
    ``admitted``) and ``Scheduler.update`` advances it; compared and hashed by identity.

    ``id``: the caller's key (unique among the scheduler's live requests). ``prompt_tokens``: the prompt's
    length (≥ 1). ``max_new_tokens``: the most tokens to produce (≥ 1); reaching it finishes the request with
    ``LENGTH``. ``edges``: the prompt positions where a prefill chunk may end, rising, ending with
    ``prompt_tokens`` (see :func:`chunk_edges`); None means anywhere. Timestamps are ``time.perf_counter``
    values on the host, None until the event: ``submitted`` (``Scheduler.add``), ``admitted`` (given a slot),
    ``first_token`` (its last prefill chunk applied), ``finished``."""

    id: Hashable
    prompt_tokens: int
    max_new_tokens: int
    edges: tuple[int, ...] | None = None
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    slot: int = -1
    finish_reason: FinishReason | None = None
    submitted: float | None = None
    admitted: float | None = None
    first_token: float | None = None
    finished: float | None = None

    def __post_init__(self) -> None:
        check_count(self.prompt_tokens, "prompt_tokens")
        check_count(self.max_new_tokens, "max_new_tokens")
        if not isinstance(self.status, RequestStatus):
            raise ValueError(f"status must be a RequestStatus, got {self.status!r}")
        if not is_count(self.num_computed_tokens, 0):
            raise ValueError(f"num_computed_tokens must be a non-negative integer, got {self.num_computed_tokens!r}")
        if not is_count(self.num_output_tokens, 0):
            raise ValueError(f"num_output_tokens must be a non-negative integer, got {self.num_output_tokens!r}")
        if self.edges is not None:
            self._check_edges(self.edges)

    def _check_edges(self, edges: object) -> None:
        if not isinstance(edges, tuple) or not all(is_count(e, 1) for e in edges):
            raise ValueError(f"edges must be a tuple of positive integers or None, got {edges!r}")
        if not edges or edges[-1] != self.prompt_tokens or any(a >= b for a, b in zip(edges, edges[1:], strict=False)):
            shown = edges if len(edges) <= 8 else (*edges[:4], "…", *edges[-2:])
            raise ValueError(f"edges must rise strictly and end with prompt_tokens={self.prompt_tokens}, got {shown}")

    @property
    def prefill_remaining(self) -> int:
        """Prompt tokens not yet in the cache."""
        return max(self.prompt_tokens - self.num_computed_tokens, 0)

    @property
    def num_tokens(self) -> int:
        """Prompt and produced tokens so far (the request's length in its slot once the last is written)."""
        return self.prompt_tokens + self.num_output_tokens

    @property
    def is_waiting(self) -> bool:
        return self.status is RequestStatus.WAITING

    @property
    def is_prefilling(self) -> bool:
        return self.status is RequestStatus.PREFILLING

    @property
    def is_decoding(self) -> bool:
        return self.status is RequestStatus.DECODING

    @property
    def is_running(self) -> bool:
        """Holds a slot: prefilling or decoding."""
        return self.status in (RequestStatus.PREFILLING, RequestStatus.DECODING)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
