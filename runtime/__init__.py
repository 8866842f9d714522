"""The inference runtime: request records, scheduler, runner, sampler, engine loop (nano-vllm's split, STYLE.md
"The runtime and the jobs"). ``runtime.request`` and ``runtime.scheduler`` are pure Python and need no model."""

from .request import FinishReason, RequestState, RequestStatus, chunk_edges
from .scheduler import PrefillChunk, Scheduler, StepPlan

__all__ = [
    "FinishReason",
    "PrefillChunk",
    "RequestState",
    "RequestStatus",
    "Scheduler",
    "StepPlan",
    "chunk_edges",
]
