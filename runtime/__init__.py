"""The inference runtime: request records, scheduler, runner, sampler, engine loop (nano-vllm's split, STYLE.md
"The runtime and the jobs"). ``runtime.request`` and ``runtime.scheduler`` are pure Python and need no model;
``runtime.runner`` owns the device batch, ``runtime.sampler`` the draw, ``runtime.graphs`` the CUDA graphs of the
decode step, ``runtime.engine`` the loop, and ``runtime.generate`` runs a batch through it."""

from .engine import PREFILL_CHUNK, Completion, Engine, Request
from .generate import generate, stream
from .request import FinishReason, RequestState, RequestStatus, chunk_edges
from .sampler import Sampling
from .scheduler import PrefillChunk, Scheduler, StepPlan

__all__ = [
    "PREFILL_CHUNK",
    "Completion",
    "Engine",
    "Request",
    "Sampling",
    "generate",
    "stream",
    "FinishReason",
    "PrefillChunk",
    "RequestState",
    "RequestStatus",
    "Scheduler",
    "StepPlan",
    "chunk_edges",
]
