"""Step-level continuous batching over one shared KV cache.

One background thread owns the model. Each step it (1) drops cancelled sequences, (2) admits
queued requests by prefilling them together and merging their KV cache into the batch's, and
(3) runs one decode forward pass for every active sequence. Sequences of different lengths share
the cache through left padding plus an attention mask, with explicit position ids, so a request
joins or leaves the batch between any two steps (the tensors: :mod:`turnout.engine.batch`).

Why not transformers' own continuous batching (``init_continuous_batching``, 5.x): it samples
every request from one process-global RNG (``torch.multinomial`` after ``torch.manual_seed``),
so a request's ``seed`` cannot make its output repeatable while other requests run beside it,
and its paged-attention path targets accelerators. Here each sequence carries its own
``torch.Generator``.

The device is the model's (``model.device``); every tensor of a step is built there.

The thread keeps a heartbeat (:meth:`BatchScheduler.liveness`): a loop that has work but makes
no progress is stuck, whatever its process looks like from outside. Work that must not overlap
any sequence, such as swapping the weights, runs on this thread between steps once the batch is
empty (:meth:`BatchScheduler.call_when_idle`).

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
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache

from turnout.engine.batch import decode_inputs, keep_rows, merge, prefill_inputs
from turnout.engine.sampling import SamplingParams, choose_tokens

__all__ = ["BatchScheduler", "Finished", "GenerationStream", "Liveness", "Timing"]

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled", "error"]


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


@dataclass(frozen=True, slots=True)
class Liveness:
    """Whether the scheduler thread is making progress on the work it has."""

    #: The thread runs (it ends only when the scheduler stops).
    running: bool
    #: Sequences waiting for the thread or in its batch. Not while it runs an idle-time call
    #: (a weight copy): the caller bounds that, and a big copy may outlast the stall bound.
    has_work: bool
    #: Seconds since the thread last finished a step while it had work; 0 when it has none.
    seconds_since_progress: float

    def stalled(self, bound: float) -> bool:
        return not self.running or (self.has_work and self.seconds_since_progress > bound)


@dataclass(eq=False)
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]
    timing: Timing
    #: Made on first sampling, on the device of the logits it samples from.
    generator: torch.Generator | None = None
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

    def generator_on(self, device: torch.device) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.generator


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
    def __init__(self, model: Any, *, max_batch_size: int = 16, threads: int | None = None) -> None:
        self._model = model
        self._threads = threads
        self.max_batch_size = max_batch_size
        #: The one device every tensor of a step is built on: the model's.
        self.device: torch.device = torch.device(model.device)
        self._cond = threading.Condition()
        self._pending: deque[_Sequence] = deque()
        self._idle_calls: deque[tuple[Future[None], Callable[[], None]]] = deque()
        self._stopping = False
        self._waiting = False
        #: A step runs (the sequences it admits are in neither the queue nor the batch yet).
        self._stepping = False
        #: An idle-time call runs.
        self._calling = False
        self._progress_at = time.monotonic()
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
        seq = _Sequence(
            prompt_ids=list(prompt_ids),
            params=params,
            seed=params.seed if params.seed is not None else secrets.randbits(63),
            loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
            timing=Timing(submitted=time.perf_counter()),
        )
        with self._cond:
            self._wake()
            self._pending.append(seq)
        return GenerationStream(seq, self)

    def call_when_idle(self, fn: Callable[[], None]) -> Future[None]:
        """Run ``fn`` on the scheduler thread once no sequence is in the batch.

        Queued sequences wait meanwhile. Cancel the returned future to withdraw the call (it is
        then skipped if it has not started).
        """
        done: Future[None] = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the scheduler is stopping")
            self._wake()
            self._idle_calls.append((done, fn))
        return done

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

    def liveness(self) -> Liveness:
        with self._cond:
            waiting = bool(self._pending or self._batch or self._stepping)
            has_work = waiting and not self._calling
            age = time.monotonic() - self._progress_at if has_work else 0.0
        running = self._thread is not None and self._thread.is_alive()
        return Liveness(running=running, has_work=has_work, seconds_since_progress=age)

    def _wake(self) -> None:
        # Called holding the lock. Work arriving at an idle thread starts the progress clock
        # now; an idle spell is not a stall.
        if self._waiting:
            self._progress_at = time.monotonic()
        self._cond.notify_all()

    # --- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        if self._threads and self.device.type == "cpu":
            # Set from this thread: OpenMP's thread count is per calling thread.
            torch.set_num_threads(self._threads)
        with torch.inference_mode():
            while self._next_round():
                with self._cond:
                    self._stepping = self._calling = False
                    self._progress_at = time.monotonic()
                self._outbox.flush()
        self._fail_all([])
        self._cancel_idle_calls()
        self._outbox.flush()

    def _next_round(self) -> bool:
        """Wait for work, then do one step or one idle-time call; False once stopping."""
        with self._cond:
            while not (self._stopping or self._pending or self._batch or self._idle_calls):
                self._waiting = True
                self._cond.wait()
            self._waiting = False
            if self._stopping:
                return False
            call = self._idle_calls.popleft() if self._idle_calls and not self._batch else None
            self._calling, self._stepping = call is not None, call is None
            # While an idle-time call waits, admit nobody: the batch must run empty.
            admitted = self._take_pending() if not self._idle_calls and call is None else []
        if call is not None:
            _run_call(*call)
            return True
        try:
            self._step(admitted)
        except Exception:  # the one guarded boundary: fail this batch, keep serving
            logger.exception("generation step failed; failing %d sequences", len(admitted))
            self._fail_all(admitted)
        return True

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

    def _cancel_idle_calls(self) -> None:
        with self._cond:
            calls, self._idle_calls = [c for c, _ in self._idle_calls], deque()
        for call in calls:
            if call.set_running_or_notify_cancel():
                call.set_exception(RuntimeError("the scheduler stopped"))

    def _prefill(self, seqs: list[_Sequence]) -> None:
        now = time.perf_counter()
        for seq in seqs:
            seq.timing.admitted = now
        inputs = prefill_inputs([s.prompt_ids for s in seqs], self.device)
        cache = DynamicCache()
        logits = self._forward(*inputs.tensors(), cache)
        now = time.perf_counter()
        for seq in seqs:
            seq.cached = len(seq.prompt_ids)
            seq.timing.prefilled = now
        if self._cache is None or self._mask is None or not self._batch:
            self._batch, self._cache, self._mask = list(seqs), cache, inputs.mask
        else:
            self._mask = merge(self._cache.layers, self._mask, cache.layers, inputs.mask)
            self._batch.extend(seqs)
        self._sample_and_emit(seqs, logits)

    def _decode(self) -> None:
        if self._mask is None or self._cache is None:
            return
        inputs = decode_inputs(
            [s.last_token for s in self._batch],
            [s.cached for s in self._batch],
            self._mask,
            self.device,
        )
        logits = self._forward(*inputs.tensors(), self._cache)
        self._mask = inputs.mask
        for seq in self._batch:
            seq.cached += 1
        self._sample_and_emit(self._batch, logits)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits[:, -1, :].float()
        return logits

    def _sample_and_emit(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        tokens = choose_tokens(
            logits, [s.params for s in seqs], lambda row: seqs[row].generator_on(logits.device)
        )
        for seq, token in zip(seqs, tokens, strict=True):
            seq.last_token = token
            seq.generated += 1
            self._outbox.add(seq, token)
            if token in seq.params.stop_token_ids:
                seq.finish("stop", self._outbox)
            elif seq.generated >= seq.params.max_new_tokens:
                seq.finish("length", self._outbox)

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
        longest = max(s.cached for s in self._batch)
        self._mask = keep_rows(self._cache, self._mask, keep, longest)


def _run_call(call: Future[None], fn: Callable[[], None]) -> None:
    if not call.set_running_or_notify_cancel():
        return  # withdrawn by its caller
    try:
        fn()
    except BaseException as exc:  # handed to the caller, who decides
        call.set_exception(exc)
    else:
        call.set_result(None)
