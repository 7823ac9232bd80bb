"""Step-level continuous batching over one shared KV cache.

One background thread owns the model. Each step it (1) drops cancelled sequences, (2) admits
queued requests by prefilling them together and merging their KV cache into the batch's, and
(3) runs one decode forward pass for every active sequence. Sequences of different lengths share
the cache through left padding plus an attention mask, with explicit position ids, so a request
joins or leaves the batch between any two steps.

Why not transformers' own continuous batching (``init_continuous_batching``, 5.x): it samples
every request from one process-global RNG (``torch.multinomial`` after ``torch.manual_seed``),
so a request's ``seed`` cannot make its output repeatable while other requests run beside it,
and its paged-attention path targets accelerators. Here each sequence carries its own
``torch.Generator``.

Tokens go back to the asyncio side through ``loop.call_soon_threadsafe``; the event loop never
waits on the model.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import DynamicCache

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_new_tokens: int
    #: 0 means greedy decoding.
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(slots=True)
class Timing:
    """perf_counter() marks of one sequence; turned into ``time_info`` by the service."""

    submitted: float
    admitted: float = 0.0
    prefilled: float = 0.0
    finished: float = 0.0


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    completion_tokens: int
    timing: Timing


Event = int | Finished


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    active: int
    queued: int
    #: Sequences ended by their caller (disconnect, stop string) since start.
    cancelled: int


@dataclass(eq=False)
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]
    timing: Timing
    generator: torch.Generator
    generated: int = 0
    #: Real tokens whose keys/values are in the cache; also the next input's position id.
    cached: int = 0
    last_token: int = 0
    cancelled: bool = False
    done: bool = False

    def finish(self, reason: FinishReason, outbox: _Outbox) -> None:
        self.done = True
        self.timing.finished = time.perf_counter()
        outbox.add(self, Finished(reason, self.generated, self.timing))


class _Outbox:
    """Events of one step, handed to the event loop in one call.

    One ``call_soon_threadsafe`` per sequence and step means one loop wake-up (and GIL hand-off)
    per token; batching them per step keeps the scheduler thread's steps back to back.
    """

    def __init__(self) -> None:
        self._events: dict[asyncio.AbstractEventLoop, list[tuple[_Sequence, Event]]] = {}

    def add(self, seq: _Sequence, event: Event) -> None:
        self._events.setdefault(seq.loop, []).append((seq, event))

    def flush(self) -> None:
        for loop, events in self._events.items():
            loop.call_soon_threadsafe(_deliver, events)
        self._events = {}


def _deliver(events: list[tuple[_Sequence, Event]]) -> None:
    for seq, event in events:
        seq.queue.put_nowait(event)


class GenerationStream:
    """The caller's side of one sequence: iterate token ids, then one :class:`Finished`."""

    def __init__(self, seq: _Sequence, scheduler: BatchScheduler) -> None:
        self._seq = seq
        self._scheduler = scheduler

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self._seq.queue.get()
            yield event
            if isinstance(event, Finished):
                return

    @property
    def timing(self) -> Timing:
        return self._seq.timing

    def cancel(self) -> None:
        """Free the sequence's slot before its next step (no-op once it finished)."""
        self._scheduler.cancel(self._seq)


class BatchScheduler:
    def __init__(
        self,
        model: Any,
        *,
        eos_token_ids: frozenset[int],
        max_batch_size: int = 16,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        self._model = model
        self._threads = threads
        self._eos = eos_token_ids
        self.max_batch_size = max_batch_size
        self._device = torch.device(device)
        self._cond = threading.Condition()
        self._pending: deque[_Sequence] = deque()
        self._stopping = False
        self._cancelled = 0
        self._thread: threading.Thread | None = None
        # Batch state, touched only by the scheduler thread.
        self._batch: list[_Sequence] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._outbox = _Outbox()

    # --- public, called from the event loop ----------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="turnout-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> GenerationStream:
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        seq = _Sequence(
            prompt_ids=list(prompt_ids),
            params=params,
            loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
            timing=Timing(submitted=time.perf_counter()),
            generator=torch.Generator(device=self._device).manual_seed(seed),
        )
        with self._cond:
            self._pending.append(seq)
            self._cond.notify_all()
        return GenerationStream(seq, self)

    def cancel(self, seq: _Sequence) -> None:
        with self._cond:
            if not seq.cancelled and not seq.done:
                self._cancelled += 1
            seq.cancelled = True
            self._cond.notify_all()

    def stats(self) -> SchedulerStats:
        with self._cond:
            active = sum(1 for s in self._batch if not s.done)
            return SchedulerStats(active, len(self._pending), self._cancelled)

    # --- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        if self._threads:
            # Set from this thread: OpenMP's thread count is per calling thread.
            torch.set_num_threads(self._threads)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._stopping or self._pending or self._batch):
                        self._cond.wait()
                    if self._stopping:
                        break
                    admitted = self._take_pending()
                try:
                    self._step(admitted)
                except Exception:  # the one guarded boundary: fail this batch, keep serving
                    logger.exception("generation step failed; failing %d sequences", len(admitted))
                    self._fail_all(admitted)
                self._outbox.flush()
        self._fail_all([])
        self._outbox.flush()

    def _take_pending(self) -> list[_Sequence]:
        room = self.max_batch_size - len(self._batch)
        admitted: list[_Sequence] = []
        while self._pending and len(admitted) < room:
            seq = self._pending.popleft()
            if seq.cancelled:
                seq.finish("cancelled", self._outbox)
                continue
            admitted.append(seq)
        return admitted

    def _step(self, admitted: list[_Sequence]) -> None:
        self._drop_finished()
        if self._batch:
            self._decode()
        if admitted:
            self._prefill(admitted)
        self._drop_finished()

    def _fail_all(self, admitted: list[_Sequence]) -> None:
        with self._cond:
            leftovers = list(self._pending) if self._stopping else []
            if self._stopping:
                self._pending.clear()
        reason: FinishReason = "cancelled" if self._stopping else "error"
        for seq in [*self._batch, *admitted, *leftovers]:
            if not seq.done:
                seq.finish(reason, self._outbox)
        self._batch, self._cache, self._mask = [], None, None

    def _prefill(self, seqs: list[_Sequence]) -> None:
        now = time.perf_counter()
        for seq in seqs:
            seq.timing.admitted = now
        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            n = len(seq.prompt_ids)
            ids[row, width - n :] = torch.tensor(seq.prompt_ids)
            mask[row, width - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache)
        now = time.perf_counter()
        for seq in seqs:
            seq.cached = len(seq.prompt_ids)
            seq.timing.prefilled = now
        self._merge(seqs, cache, mask)
        self._sample_and_emit(seqs, logits)

    def _decode(self) -> None:
        if self._mask is None or self._cache is None:
            return
        ids = torch.tensor([[s.last_token] for s in self._batch], dtype=torch.long)
        positions = torch.tensor([[s.cached] for s in self._batch], dtype=torch.long)
        mask = torch.cat([self._mask, torch.ones((len(self._batch), 1), dtype=torch.long)], -1)
        logits = self._forward(ids, mask, positions, self._cache)
        self._mask = mask
        for seq in self._batch:
            seq.cached += 1
        self._sample_and_emit(self._batch, logits)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        out = self._model(
            input_ids=ids.to(self._device),
            attention_mask=mask.to(self._device),
            position_ids=positions.to(self._device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits[:, -1, :].float()
        return logits

    def _sample_and_emit(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        greedy = logits.argmax(-1).tolist()
        for row, seq in enumerate(seqs):
            if seq.params.temperature == 0:
                token = int(greedy[row])
            else:
                token = _sample(logits[row], seq.params, seq.generator)
            seq.last_token = token
            seq.generated += 1
            self._outbox.add(seq, token)
            if token in self._eos:
                seq.finish("stop", self._outbox)
            elif seq.generated >= seq.params.max_new_tokens:
                seq.finish("length", self._outbox)

    def _merge(self, seqs: list[_Sequence], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append freshly prefilled sequences to the batch, left-padding the shorter side."""
        mask = mask.to(self._device)
        if self._cache is None or self._mask is None or not self._batch:
            self._batch, self._cache, self._mask = list(seqs), cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(_layers(self._cache), _layers(cache), strict=True):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)], 0)
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)], 0)
        self._mask = torch.cat([_left_pad_mask(self._mask, width), _left_pad_mask(mask, width)])
        self._batch.extend(seqs)

    def _drop_finished(self) -> None:
        for seq in self._batch:
            if seq.cancelled and not seq.done:
                seq.finish("cancelled", self._outbox)
        keep = [i for i, s in enumerate(self._batch) if not s.done]
        if len(keep) == len(self._batch):
            return
        with self._cond:
            self._batch = [self._batch[i] for i in keep]
        if not self._batch or self._cache is None or self._mask is None:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self._device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        # Columns that are padding for every remaining sequence cost compute and hold nothing.
        used = self._mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else 0
        if start > 0:
            self._mask = self._mask[:, start:]
            for layer in _layers(self._cache):
                layer.keys = layer.keys[..., start:, :]
                layer.values = layer.values[..., start:, :]


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    probs = torch.softmax(logits / params.temperature, -1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _layers(cache: DynamicCache) -> list[Any]:
    # Llama caches hold DynamicLayer objects (keys/values tensors [batch, heads, seq, dim]).
    return list(cache.layers)


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, 0, width - t.shape[-2], 0))


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[1], 0))
