"""CUDA graphs for the decode step: captured once per shape key (live-row bucket, span, sampler kind), lazily the
first time a key is used, then replayed (as vLLM and nano-vllm capture their decode batches). The step function
reads only static buffers (the last tokens, the positions in the cache's lengths, the sampling steps) and writes
its draw into one; its host-side branches depend only on the key. Eager decode is launch-bound on a GPU (an E2B
step dispatches ≈ 1,000 operations, against a weight read of ≈ 1.4 ms on an H100); a replay is one launch.

Off the GPU, or with ``enabled=False`` (``--no-cuda-graphs``), the very same step function runs eagerly. A capture
that fails (an operation that cannot be captured) turns graphs off for the rest of the run with one warning, and
the step runs eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import torch

__all__ = ["DecodeGraphs"]

log = logging.getLogger(__name__)


class DecodeGraphs:
    def __init__(self, step: Callable[..., None], *, enabled: bool) -> None:
        self.step = step  # the eager step: what every capture records
        self.enabled = enabled
        self.graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        self._pool = None

    def run(self, key: Hashable, *args) -> None:
        """Run ``step(*args)``: replay the graph of ``key`` (capturing it first if new), or eagerly."""
        if not self.enabled:
            self.step(*args)
            return
        graph = self.graphs.get(key)
        if graph is None:
            try:
                graph = self._capture(args)
            except Exception as error:  # noqa: BLE001 - any capture failure falls back to eager decode
                self.enabled = False
                log.warning(
                    "CUDA graph capture failed (%s: %s); decoding eagerly from now on", type(error).__name__, error
                )
                torch.cuda.synchronize()
                self.step(*args)
                return
            self.graphs[key] = graph
        graph.replay()

    def _capture(self, args) -> torch.cuda.CUDAGraph:
        side = torch.cuda.Stream()  # warm-up off the default stream, as torch.cuda.graphs recommends
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step(*args)  # the step is idempotent: the same inputs write the same cache slots
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # one memory pool shared by every captured bucket
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self.step(*args)
        return graph
