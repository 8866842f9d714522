"""Worker processes for the batch jobs, with crash recovery: a worker that dies costs only the rows that kill it.

Both jobs hand shards of :class:`pipelines.rows.Item` to a :class:`ShardPool`. A :class:`Work` says what to run:
``shard`` (one shard's items → the shard's result, in a worker), ``rows`` (a few items → their outcomes, one per
item, in a worker), ``from_rows`` (a shard's outcomes → the shard's result, here) and ``dead_row`` (the outcome of
a row that killed its worker, here). Its functions must pickle (module-level functions, ``functools.partial``).

When a worker dies (killed for memory, a crash in a decoder), the pool breaks and every shard in flight fails:
finished shards are kept, the pool is replaced, and each lost shard is retried alone in a fresh worker; if it
kills that worker too, its rows are run one per task, and each row that kills its worker becomes ``dead_row``'s
outcome (an error row, stage ``worker``). The job goes on in the new pool.

Workers are spawned (children of the job's process, with no fork of a threaded parent), run torch on one thread
(parallelism comes from the workers, and float results must not depend on their number), ignore Ctrl-C (the
job's process stops the job with one line) and exit by themselves when the job's process dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["WORKER_DIED", "ShardPool", "Work", "init_worker", "threads", "worker_pool"]

log = logging.getLogger(__name__)

WORKER_DIED = (
    "the worker process died while processing this row (killed by the system, e.g. for lack of memory, or crashed "
    "in a decoder); it died again when the row was retried alone"
)


def init_worker(parent: int | None = None) -> None:
    """A worker process's (or Ray task's) setup: one torch thread, since parallelism comes from the workers, and
    float results must not depend on the worker count. With ``parent`` (the job's pid), a watchdog thread ends
    this process when the job's process is gone, so a ``kill -9`` of the job leaves no orphans behind, and Ctrl-C
    (which the terminal sends to every process of the job) is left to the job's process: it stops the job with one
    line, and no worker prints a traceback."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)  # BLAS and OpenMP pools of numpy and friends too
    if parent is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="gemma4-watchdog").start()


@contextmanager
def threads(count: int) -> Iterator[None]:
    """Inside the block, torch's intra-op threads and the BLAS/OpenMP pools (``threadpoolctl``) are ``count``."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        torch.set_num_threads(previous)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)  # the job is gone: nobody will read this worker's results


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes set up by :func:`init_worker`."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker, initargs=(os.getpid(),))


@dataclass(frozen=True)
class Work:
    """What a :class:`ShardPool` runs (see the module docstring)."""

    shard: Callable[[int, list], Any]  # (shard, items) → the shard's result; in a worker
    rows: Callable[[list], list]  # items → their outcomes, one per item; in a worker
    from_rows: Callable[[int, list], Any]  # (shard, outcomes) → the shard's result; here
    dead_row: Callable[[Any], Any]  # an item whose row killed its worker → its outcome; here


class ShardPool:
    """Shards through ``workers`` processes (see the module docstring). ``submit`` a shard, then take finished
    ones from ``finished``; ``len()`` is the number in flight. Use it as a context manager, or ``close`` it."""

    def __init__(self, workers: int, work: Work) -> None:
        self.workers, self.work = workers, work
        self._pool = worker_pool(workers)
        self._running: dict[Future, tuple[int, list]] = {}
        self._lost: list[tuple[int, list]] = []  # shards a broken pool took down, to retry alone

    def __len__(self) -> int:
        return len(self._running) + len(self._lost)

    def __enter__(self) -> ShardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    def submit(self, shard: int, items: list) -> None:
        try:
            self._running[self._pool.submit(self.work.shard, shard, items)] = (shard, items)
        except BrokenProcessPool:  # a worker died since the last collection: this shard never started
            self._lost.append((shard, items))

    def finished(self, block: bool) -> list[tuple[int, Any]]:
        """``(shard, result)`` of the shards that finished, in shard order; with ``block``, waits for at least
        one (when any is in flight). Shards lost to a dead worker are recovered here (alone, then row by row)."""
        out = []
        if self._running and not self._lost:
            done, _ = wait(self._running, timeout=None if block else 0, return_when=FIRST_COMPLETED)
            out += self._take(done)
        if self._lost:  # the pool is broken: every shard in flight fails or has finished; collect them all
            out += self._take(wait(self._running).done)
            self._pool.shutdown(cancel_futures=True)
            self._pool = worker_pool(self.workers)
            lost, self._lost = sorted(self._lost, key=lambda pair: pair[0]), []
            out += [(shard, self._recover(shard, items)) for shard, items in lost]
        return sorted(out, key=lambda pair: pair[0])

    def _take(self, done) -> list[tuple[int, Any]]:
        out = []
        for future in done:
            shard, items = self._running.pop(future)
            try:
                out.append((shard, future.result()))
            except BrokenProcessPool:
                self._lost.append((shard, items))
        return out

    def _recover(self, shard: int, items: list) -> Any:
        """A shard whose worker died: alone in a fresh worker; if that dies too, one row per task."""
        log.warning("a worker died while processing shard %s; retrying it alone", shard)
        with worker_pool(1) as pool:
            try:
                return pool.submit(self.work.shard, shard, items).result()
            except BrokenProcessPool:
                log.warning("shard %s killed its worker again; running its %d rows one at a time", shard, len(items))
        outcomes = []
        pool = worker_pool(1)
        try:
            for item in items:
                try:
                    outcomes += pool.submit(self.work.rows, [item]).result()
                except BrokenProcessPool:
                    pool.shutdown()
                    pool = worker_pool(1)
                    outcomes.append(self.work.dead_row(item))
        finally:
            pool.shutdown()
        return self.work.from_rows(shard, outcomes)
