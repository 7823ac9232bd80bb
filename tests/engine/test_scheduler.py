"""The scheduler thread with model doubles: device discipline, liveness, idle-time calls."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from tests.engine.doubles import BlockingModel, MetaModel
from turnout.engine.sampling import SamplingParams
from turnout.engine.scheduler import BatchScheduler, Finished, GenerationStream, SchedulerStats

pytestmark = pytest.mark.anyio

GREEDY = SamplingParams(max_new_tokens=3, temperature=0)


async def _finish(stream: GenerationStream) -> Finished:
    async for event in stream:
        if isinstance(event, Finished):
            return event
    raise AssertionError("stream ended without Finished")


async def _first_token(stream: GenerationStream) -> None:
    async for event in stream:
        assert isinstance(event, int)
        return


async def test_every_tensor_of_every_step_is_on_the_models_device() -> None:
    model = MetaModel()
    scheduler = BatchScheduler(model, max_batch_size=4)
    assert scheduler.device == torch.device("meta")
    scheduler.start()
    try:
        first = scheduler.submit([1, 2, 3], SamplingParams(max_new_tokens=6, temperature=0))
        await _first_token(first)
        # These join a running batch (merge), are shorter and longer than it, sample with a
        # seed, and leave it at different steps (row selection and column trimming).
        short = scheduler.submit([4], SamplingParams(max_new_tokens=2, temperature=0.7, seed=1))
        long = scheduler.submit([5] * 7, SamplingParams(max_new_tokens=8, top_p=0.5, seed=2))
        results = [await _finish(s) for s in (first, short, long)]
    finally:
        scheduler.stop()
    assert [(r.reason, r.completion_tokens) for r in results] == [
        ("length", 6),
        ("length", 2),
        ("length", 8),
    ]
    assert model.devices == {torch.device("meta")}


async def test_a_stop_token_ends_a_sequence() -> None:
    scheduler = BatchScheduler(MetaModel())
    scheduler.start()
    try:
        # The double's logits are all equal, so greedy decoding picks token 0.
        params = SamplingParams(max_new_tokens=5, temperature=0, stop_token_ids=frozenset({0}))
        result = await _finish(scheduler.submit([1], params))
    finally:
        scheduler.stop()
    assert (result.reason, result.completion_tokens) == ("stop", 1)


async def test_liveness_reports_a_step_that_does_not_finish() -> None:
    model = BlockingModel()
    scheduler = BatchScheduler(model)
    assert scheduler.liveness().stalled(30.0)  # a scheduler whose thread is not running
    scheduler.start()
    try:
        idle = scheduler.liveness()
        assert (idle.running, idle.has_work, idle.seconds_since_progress) == (True, False, 0.0)
        assert not idle.stalled(0.0)
        await asyncio.sleep(0.05)  # an idle spell is not a stall
        before = time.monotonic()
        stream = scheduler.submit([1, 2], GREEDY)
        await asyncio.to_thread(model.entered.wait, 60)
        stuck = scheduler.liveness()
        waited = time.monotonic() - before
        assert stuck.running and stuck.has_work
        # The clock started when the work arrived, not at the last step before the idle spell.
        assert 0.0 < stuck.seconds_since_progress <= waited
        assert stuck.stalled(0.0)
        assert not stuck.stalled(3600.0)
        model.release.set()
        assert (await _finish(stream)).reason == "length"
        assert not scheduler.liveness().stalled(0.0)
    finally:
        model.release.set()
        scheduler.stop()
    assert not scheduler.liveness().running


async def test_idle_call_runs_once_the_batch_is_empty_and_holds_new_sequences() -> None:
    scheduler = BatchScheduler(MetaModel())
    scheduler.start()
    seen: list[SchedulerStats] = []
    try:
        first = scheduler.submit([1], SamplingParams(max_new_tokens=4, temperature=0))
        await _first_token(first)
        call = scheduler.call_when_idle(lambda: seen.append(scheduler.stats()))
        second = scheduler.submit([2], GREEDY)
        await asyncio.wrap_future(call)
        assert (await _finish(first)).completion_tokens == 4
        assert (await _finish(second)).reason == "length"
    finally:
        scheduler.stop()
    # When it ran, the first sequence was done and the second had not been admitted.
    assert seen == [SchedulerStats(active=0, queued=1, cancelled=0)]


async def test_idle_call_withdrawn_or_failing_leaves_the_scheduler_serving() -> None:
    model = BlockingModel()
    scheduler = BatchScheduler(model)
    scheduler.start()
    ran: list[str] = []
    try:
        stream = scheduler.submit([1], GREEDY)
        await asyncio.to_thread(model.entered.wait, 60)
        withdrawn = scheduler.call_when_idle(lambda: ran.append("withdrawn"))
        assert withdrawn.cancel()
        model.release.set()
        assert (await _finish(stream)).reason == "length"

        def broken() -> None:
            raise OSError("disk gone")

        with pytest.raises(OSError, match="disk gone"):
            await asyncio.wrap_future(scheduler.call_when_idle(broken))
        assert (await _finish(scheduler.submit([3], GREEDY))).reason == "length"
    finally:
        model.release.set()
        scheduler.stop()
    assert ran == []


async def test_a_long_idle_time_call_is_not_a_stall() -> None:
    # A weight copy of a big model may outlast the stall bound; its caller bounds it instead.
    scheduler = BatchScheduler(MetaModel())
    scheduler.start()
    entered, release = threading.Event(), threading.Event()

    def copy_weights() -> None:
        entered.set()
        release.wait(60)

    try:
        call = scheduler.call_when_idle(copy_weights)
        await asyncio.to_thread(entered.wait, 60)
        stream = scheduler.submit([1], GREEDY)  # waits for the call to end
        assert not scheduler.liveness().stalled(0.0)
        release.set()
        await asyncio.wrap_future(call)
        assert (await _finish(stream)).reason == "length"
    finally:
        release.set()
        scheduler.stop()
