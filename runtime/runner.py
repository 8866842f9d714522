"""The runner: owns the persistent device batch of a continuous-batching engine — the KV cache of every slot,
each slot's last token, sampling settings and stop ids, each admitted prompt's ids (host) and merged media
embeddings (device, encoded once at admission) — and runs one planned step (:class:`runtime.scheduler.StepPlan`).

A step runs the first R slots (R = one past the highest slot it uses; finished or empty slots below it compute
rows nobody reads): prompt chunks and one-token decodes together in one forward of a left-padded (R, T) grid
(``TextDecoder.extend``) when any prompt chunk is planned, else a decode step (``TextDecoder.decode``) of R rounded
up to a bucket (1, 2, 4, 8, then multiples of 16), captured as a CUDA graph per (bucket, span, sampler kind) on
CUDA (:mod:`runtime.graphs`). Everything that shapes the step comes from the host: positions and sampling steps
from the scheduler's counters, the span from the longest row. Nothing is read back; the engine reads the
step's (R,) finished codes: ``RUNNING``, ``STOPPED`` (drew a stop id) or ``NONFINITE`` (its logits held a NaN or
an infinity: the draw is meaningless, an argmax over NaN being token 0). The non-finite flag is computed on the
device beside the draw, inside the captured decode step, so the check costs no extra read.

Shapes: S slots, R rows of a step, T tokens per row, C context, V vocabulary, D model dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data_specs.batch import Batch
from data_specs.media import Modality
from model.host import to_device

from .graphs import DecodeGraphs
from .sampler import Sampler
from .scheduler import StepPlan

__all__ = ["NONFINITE", "RUNNING", "STOPPED", "Prompt", "Runner", "bucket", "runs"]

# A step's finished code of each row (Runner.step)
RUNNING, STOPPED, NONFINITE = 0, 1, 2


def bucket(rows: int) -> int:
    """Rows a decode step runs for ``rows`` live ones: 1, 2, 4, 8, then multiples of 16 (few graph shapes)."""
    for size in (1, 2, 4, 8):
        if rows <= size:
            return size
    return -(-rows // 16) * 16


@dataclass
class Prompt:
    """A prompt's real tokens: ids on the host (the pad id at media placeholders) and token types, and, when it
    holds media, its merged input embeddings on the device (T, D) — or the one-row batch they are encoded from
    at admission (``media``)."""

    ids: np.ndarray
    types: np.ndarray
    embeds: torch.Tensor | None
    media: Batch | None = None

    @classmethod
    def of(cls, model, batch: Batch) -> Prompt:
        """A one-row batch on the host as a prompt whose media (if any) are encoded later, by :meth:`encode`."""
        real = np.flatnonzero(batch.attention_mask[0].bool().numpy())
        types = batch.mm_token_type_ids[0].numpy()[real]
        ids = np.where(types == Modality.TEXT, batch.input_ids[0].numpy()[real], model.config.tokens.pad)
        return cls(ids=ids, types=types, embeds=None, media=batch if any(len(m) for _, m in batch.media) else None)

    def encode(self, model) -> Prompt:
        """The media encoded (once): a prompt with its merged embeddings on the model's device."""
        if self.media is None:
            return self
        return Prompt.rows(model, self.media)[0]

    @classmethod
    def rows(cls, model, batch: Batch) -> list[Prompt]:
        """Every row of ``batch`` (on the host; left or right padding) as a prompt: media encoded once for the
        whole batch, on the model's device."""
        mask = batch.attention_mask.bool().cpu().numpy()  # host facts: no read for a batch on the host
        types = batch.mm_token_type_ids.cpu().numpy()
        ids = np.where(types == Modality.TEXT, batch.input_ids.cpu().numpy(), model.config.tokens.pad)
        merged = None
        if any(len(media) for _, media in batch.media):
            device = next(model.parameters()).device
            _, _, merged = model.embed_inputs(batch.to(device))  # (B, T, D) soft tokens in place
        out = []
        for row in range(len(mask)):
            real = np.flatnonzero(mask[row])
            embeds = None
            if merged is not None:
                embeds = merged[row].index_select(0, to_device(real, merged.device))  # (T_real, D)
            out.append(cls(ids=ids[row, real], types=types[row, real], embeds=embeds))
        return out


class Runner:
    def __init__(self, model, *, slots: int, context: int, cuda_graphs: bool | None = None) -> None:
        self.model, self.slots, self.context = model, slots, context
        self.decoder = model.language_model
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(slots, context)
        self.pad = model.config.tokens.pad
        zeros = torch.zeros(slots, dtype=torch.int64, device=self.device)
        self.tokens = zeros.clone()  # (S,) each slot's last token: the next decode's input
        self.next = zeros.clone()  # (S,) the step's draw
        self.steps = zeros.clone()  # (S,) each row's sampling step (its new tokens so far)
        self.nonfinite = torch.zeros(slots, dtype=torch.bool, device=self.device)  # (S,) the step's logits not finite
        self.out = torch.zeros(slots, context + 1, dtype=torch.int64, device=self.device)  # (S, C + 1) new tokens
        self.sampler = Sampler(slots, self.device)
        self.stop = torch.full((slots, 1), -1, dtype=torch.int64, device=self.device)  # (S, M), −1 pads
        self.prompts: dict[int, Prompt] = {}  # by slot
        graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if graphs and self.decoder.ple_on_host:
            graphs = False  # the host table reads the ids back: nothing to capture
        self.graphs = DecodeGraphs(self._decode, enabled=graphs and self.device.type == "cuda")

    # --- slots ------------------------------------------------------------------------------------------------

    def admit(self, slot: int, prompt: Prompt, sampling: tuple[float, int, float, int], stop: tuple[int, ...]) -> None:
        """Take ``prompt`` into ``slot`` (its media, if any, encoded here, once), with its sampling settings
        (``Sampling.row()``) and stop ids."""
        self.prompts[slot] = prompt.encode(self.model)
        self.sampler.set(slot, sampling)
        if len(stop) > self.stop.shape[1]:  # widen the table (rare)
            wider = torch.full((self.slots, len(stop)), -1, dtype=torch.int64, device=self.device)
            wider[:, : self.stop.shape[1]] = self.stop
            self.stop = wider
        row = np.full(self.stop.shape[1], -1, dtype=np.int64)
        row[: len(stop)] = stop
        self.stop[slot] = to_device(row, self.device)

    def release(self, slot: int, *, clear: bool = False) -> None:
        """Free ``slot``; ``clear`` also zeroes its KV cache rows: after non-finite logits they may hold NaN, and
        a masked cache position still reaches attention's output as 0 × NaN = NaN for the slot's next request."""
        self.prompts.pop(slot, None)
        if clear:
            for store in (self.cache.keys, self.cache.values):
                for t in store.values():  # (B, K, C + 1, H)
                    t[slot].zero_()

    # --- a step -----------------------------------------------------------------------------------------------

    def step(self, plan: StepPlan) -> tuple[torch.Tensor, list[int]]:
        """Run ``plan`` → (finished (R,) int64 on the device: each row's code, ``STOPPED`` for a row that drew a
        stop id, ``NONFINITE`` for one whose logits were not finite, else ``RUNNING`` (always for rows that drew
        no token); the slots that drew a token this step (host))."""
        drawn = [c.slot for c in plan.prefills if c.last] + [r.slot for r in plan.decodes]
        steps = np.zeros(self.slots, dtype=np.int64)
        for request in plan.decodes:
            steps[request.slot] = request.num_output_tokens
        if plan.prefills:
            rows = self._mixed(plan, drawn, steps)
        else:
            rows = self._decode_only(plan, drawn, steps)
        emitted = np.zeros(rows, dtype=bool)
        emitted[drawn] = True
        emit = to_device(emitted, self.device)
        columns = np.where(emitted, steps[:rows], self.context)  # each drawn token's index; the rest: spare column
        self.out[:rows].scatter_(1, to_device(columns, self.device)[:, None], self.next[:rows, None])
        self.tokens[:rows] = torch.where(emit, self.next[:rows], self.tokens[:rows])
        stopped = (self.next[:rows, None] == self.stop[:rows]).any(dim=1)  # (R,)
        codes = torch.where(self.nonfinite[:rows], NONFINITE, torch.where(stopped, STOPPED, RUNNING))  # (R,)
        return torch.where(emit, codes, RUNNING), drawn

    def _decode_only(self, plan: StepPlan, drawn: list[int], steps: np.ndarray) -> int:
        rows = min(bucket(max(drawn) + 1), self.slots)
        positions = np.full(rows, self.context, dtype=np.int64)  # rows nobody reads write the spare slots
        for request in plan.decodes:
            positions[request.slot] = request.num_computed_tokens  # the position of its last token
        self.cache.lengths[:rows].copy_(to_device(positions, self.device))
        self.steps[:rows].copy_(to_device(steps[:rows], self.device))
        span = self.cache.span(max(r.num_computed_tokens for r in plan.decodes) + 1)
        kind = self.sampler.kind(drawn)
        self.graphs.run((rows, span, kind), rows, span, kind)
        return rows

    def _decode(self, rows: int, span: int | None, kind: int | None) -> None:
        """The captured decode step: static inputs (last tokens, positions in the cache's lengths, sampling
        steps) → ``self.next[:rows]`` and ``self.nonfinite[:rows]``; ``rows``, ``span`` and ``kind`` are its
        graph's key."""
        logits = self.decoder.decode(self.tokens[:rows, None], self.cache.rows(rows), span=span)[:, -1]  # (R, V)
        self._draw(logits, rows, kind)

    def _draw(self, logits: torch.Tensor, rows: int, kind: int | None) -> None:
        """logits (R, V) → the draw in ``self.next[:rows]`` and whether each row's logits were not all finite in
        ``self.nonfinite[:rows]`` (fixed shapes: part of the captured step)."""
        self.nonfinite[:rows].copy_(~logits.isfinite().all(dim=-1))
        self.next[:rows].copy_(self.sampler(logits, self.steps[:rows], kind))

    def _mixed(self, plan: StepPlan, drawn: list[int], steps: np.ndarray) -> int:
        """Prompt chunks and decodes in one forward of a left-padded (R, T) grid."""
        used = [c.slot for c in plan.prefills] + [r.slot for r in plan.decodes]
        rows = max(used) + 1
        width = max([c.stop - c.start for c in plan.prefills] + [1])
        ids = np.full((rows, width), self.pad, dtype=np.int64)
        types = np.zeros((rows, width), dtype=np.int64)
        real = np.zeros((rows, width), dtype=bool)
        start = np.zeros(rows, dtype=np.int64)
        for chunk in plan.prefills:
            prompt, n = self.prompts[chunk.slot], chunk.stop - chunk.start
            ids[chunk.slot, width - n :] = prompt.ids[chunk.start : chunk.stop]
            types[chunk.slot, width - n :] = prompt.types[chunk.start : chunk.stop]
            real[chunk.slot, width - n :] = True
            start[chunk.slot] = chunk.start
        decodes = [r.slot for r in plan.decodes]
        for request in plan.decodes:
            real[request.slot, -1] = True
            start[request.slot] = request.num_computed_tokens
        ids_dev = to_device(ids, self.device)
        if decodes:  # the decoding rows' last tokens are on the device
            index = to_device(np.asarray(decodes, dtype=np.int64), self.device)
            ids_dev[:, -1].index_copy_(0, index, self.tokens.index_select(0, index))
        x = self.decoder.embed(ids_dev)  # (R, T, D)
        for chunk in plan.prefills:
            embeds = self.prompts[chunk.slot].embeds
            if embeds is not None:
                x[chunk.slot, width - (chunk.stop - chunk.start) :] = embeds[chunk.start : chunk.stop].to(x.dtype)
        ends = start + real.sum(axis=1)
        fresh = None
        if not decodes and all(c.start == 0 for c in plan.prefills):  # prompts from position 0: planned as one
            fresh = (not bool(real.all()), _longest_run((types == Modality.IMAGE) | (types == Modality.VIDEO)))
        logits = self.decoder.extend(
            ids_dev,
            to_device(real, self.device),
            to_device(start, self.device),
            int(ends.max()),
            min(self.cache.ring, int(start.max())),
            cache=self.cache.rows(rows),
            inputs_embeds=x,
            mm_token_type_ids=to_device(types, self.device),
            whole=bool(drawn),
            fresh=fresh,
        )
        if logits is not None:
            self.steps[:rows].copy_(to_device(steps[:rows], self.device))
            self._draw(logits[:, -1], rows, self.sampler.kind(drawn))
        return rows


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Half-open (start, stop) spans of the runs of True in flags (T,) (the soft tokens of each image)."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _longest_run(flags: np.ndarray) -> int:
    """The longest run of True along the rows of flags (R, T): the most soft tokens of one image in a row."""
    return max((stop - start for row in flags for start, stop in runs(row)), default=0)
