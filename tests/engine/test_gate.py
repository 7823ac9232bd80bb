"""The admission gate: requests inside finish before a swap; new ones wait (bounded)."""

from __future__ import annotations

import asyncio

import pytest

from turnout.engine.gate import AdmissionGate, DrainTimeout
from turnout.errors import EndpointNotReady

pytestmark = pytest.mark.anyio


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_swap_waits_for_requests_inside_and_holds_new_ones() -> None:
    gate = AdmissionGate()
    await gate.enter(1.0)
    order: list[str] = []

    async def swap() -> int:
        async with gate.closed_for_swap(30.0) as closure:
            order.append("swap")
        return closure.held

    async def late_request() -> None:
        await gate.enter(30.0)
        order.append("late request")
        gate.leave()

    swapping = asyncio.create_task(swap())
    await _settle()
    late = asyncio.create_task(late_request())
    await _settle()
    assert gate.closed and gate.waiting == 1 and not swapping.done()
    order.append("first request leaves")
    gate.leave()
    assert await swapping == 1
    await late
    assert order == ["first request leaves", "swap", "late request"]
    assert not gate.closed and gate.inside == 0


async def test_drain_timeout_abandons_the_swap_and_reopens() -> None:
    gate = AdmissionGate()
    await gate.enter(1.0)
    with pytest.raises(DrainTimeout, match="1 request"):
        async with gate.closed_for_swap(0.01):
            pytest.fail("swapped with a request inside")
    assert not gate.closed
    await gate.enter(1.0)  # open again
    assert gate.inside == 2


async def test_waiting_is_bounded() -> None:
    gate = AdmissionGate()
    await gate.enter(1.0)
    holder = asyncio.create_task(_hold_closed(gate))
    await _settle()
    with pytest.raises(EndpointNotReady) as caught:
        await gate.enter(0.01)
    assert caught.value.status == 503 and caught.value.code == "weights_swapping"
    assert gate.waiting == 0
    gate.leave()
    await holder


async def _hold_closed(gate: AdmissionGate) -> None:
    async with gate.closed_for_swap(30.0):
        pass
