from __future__ import annotations

import asyncio

from turnout.gateway.limits import Bucket, estimate_prompt_tokens
from turnout.gateway.traffic import LogHistogram, Traffic


def test_histogram_percentiles_are_within_ten_percent() -> None:
    histogram = LogHistogram()
    assert histogram.quantile(0.5) is None and histogram.mean() is None
    values = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1 s
    for value in values:
        histogram.add(value)
    assert histogram.mean() == sum(values) / len(values)
    for q, exact in ((0.5, 0.5), (0.9, 0.9), (0.99, 0.99)):
        found = histogram.quantile(q)
        assert found is not None and abs(found - exact) / exact < 0.1


def test_roll_moves_the_current_window_to_last() -> None:
    traffic = Traffic(clocked=False)
    traffic.tally("ep", 1).by_status[200] = 3
    assert traffic.last == {}
    traffic.roll()
    assert traffic.last[("ep", "1")].requests == 3 and traffic.current == {}
    traffic.roll()
    assert traffic.last == {}


def test_clocked_windows_roll_until_stopped() -> None:
    async def scenario() -> None:
        traffic = Traffic(window=0.05)
        traffic.tally("ep", None).by_status[500] = 1
        stopping = asyncio.Event()
        task = asyncio.create_task(traffic.run(stopping))
        while not traffic.last:
            await asyncio.sleep(0.01)
        assert traffic.last[("ep", "")].failures() == 1
        stopping.set()
        await task

    asyncio.run(scenario())


def test_bucket_refills_a_minutes_worth_per_minute() -> None:
    bucket = Bucket(60, now=0.0)
    bucket.level -= 60
    bucket.refill(60, now=30.0)
    assert bucket.level == 30
    assert bucket.seconds_until(31) == 1.0
    bucket.refill(120, now=30.0)  # the operator raised the limit: what was used stays used
    assert bucket.level == 90 and bucket.capacity == 120


def test_prompt_estimate() -> None:
    chat = {"messages": [{"role": "user", "content": "x" * 400}, {"content": [{"text": "abcd"}]}]}
    assert estimate_prompt_tokens(chat) == 101 + 8 + 1
    assert estimate_prompt_tokens({"prompt": ["abcd", "efgh"]}) == 3
    assert estimate_prompt_tokens({"prompt": [1, 2, 3]}) == 4
