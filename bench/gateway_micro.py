"""In-process costs of the gateway's per-request and per-chunk work (no network, no other
process): ``python bench/gateway_micro.py``. Best of 7 repeats, so a shared machine's noise
mostly drops out. Prints microseconds per call; run ``bench/gateway.py`` for the real thing."""

from __future__ import annotations

import json
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway_load import COMPLETION, builtin_events, vllm_events

from turnout.gateway.keys import KeyEntry
from turnout.gateway.limits import Limits
from turnout.gateway.rewrite import rewrite_json
from turnout.gateway.sse import SSERewriter
from turnout.gateway.streaming import Exchange
from turnout.gateway.traffic import Traffic
from turnout.routing.table import EndpointRoute


def best_us(fn: Callable[[], Any], number: int = 20000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main() -> None:
    route = EndpointRoute("bench", "org", "dep", 1, "fp_0123456789", ())
    exchange = Exchange(
        route=route,
        path="/v1/chat/completions",
        body=b"",
        stream=False,
        request_id="r",
        started=time.perf_counter(),
        received=time.time(),
    )
    exchange.sent = time.perf_counter()
    rewriter = SSERewriter(
        "bench", "fp_0123456789", wants_usage=False, time_info=exchange.time_info
    )
    builtin_chunk = builtin_events(5, False)[2]
    vllm_chunk = vllm_events(5, False)[2]
    whole = json.dumps(COMPLETION).encode()
    limits = Limits()
    entry = KeyEntry("org", "k", rpm=10**9, tpm=10**12)
    payload = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}

    def admit_and_finish() -> None:
        limits.finish(limits.admit(entry, payload), 6)

    traffic = Traffic(clocked=False)

    def tally() -> None:
        t = traffic.tally("bench", 1)
        t.by_status[200] = t.by_status.get(200, 0) + 1
        t.latency.add(0.001)
        t.ttft.add(0.001)
        t.queue.add(0.0001)

    results = {
        "stream chunk, built-in shape": best_us(lambda: rewriter.feed(builtin_chunk)),
        "stream chunk, vLLM shape (fingerprint inserted)": best_us(
            lambda: rewriter.feed(vllm_chunk)
        ),
        "whole answer rewrite + time_info": best_us(
            lambda: rewrite_json(whole, "bench", "fp_0123456789", exchange.time_info)
        ),
        "limits: admit + settle (rpm and tpm)": best_us(admit_and_finish),
        "per-minute tally of one request": best_us(tally),
    }
    for name, us in results.items():
        print(f"{name:50} {us:6.2f} us")
    out = Path(__file__).parent / "reports" / "gateway_micro.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
