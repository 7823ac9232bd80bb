"""The gateway benchmark's two helpers: a fast stub upstream, and the load generator.

The upstream answers like the built-in engine (``"shape": "builtin"``: every chunk carries
``model`` and ``system_fingerprint``) or like vLLM (``"shape": "vllm"``: a role chunk first, no
``system_fingerprint`` but on the last JSON chunk, a ``"choices": []`` usage chunk when the
request sets ``stream_options.include_usage``; docs/engines.md "vLLM's wire format"), so the
gateway's rewriting is measured on both.

The load generator speaks raw keep-alive HTTP/1.1 parsed by httptools on uvloop: one built on a
full HTTP client (aiohttp) spent more CPU per request than the gateway, on the same cores, and
so measured itself.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

KEY = "sk-bench"
#: a key with requests- and tokens-per-minute limits high enough never to refuse in the bench
LIMITED_KEY = "sk-bench-limited"
COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1723733419,
    "model": "upstream",
    "system_fingerprint": "fp_upstream",
    "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
VLLM_FINGERPRINT = "vllm-0.32.0-83558d41"


def _compact(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def builtin_events(count: int, include_usage: bool) -> list[bytes]:
    """The built-in engine's chunks: each with model and fingerprint; usage in one more chunk
    without choices when the request asks for it."""
    head = {k: v for k, v in COMPLETION.items() if k not in ("choices", "usage")}
    head["object"] = "chat.completion.chunk"
    out = []
    for i in range(count):
        last = i == count - 1
        choice = {
            "index": 0,
            "delta": {"content": f"t{i}"},
            "finish_reason": "stop" if last else None,
        }
        out.append(b"data: " + _compact({**head, "choices": [choice]}) + b"\n\n")
    if include_usage:
        usage = {**head, "choices": [], "usage": COMPLETION["usage"]}
        out.append(b"data: " + _compact(usage) + b"\n\n")
    return out


def vllm_events(count: int, include_usage: bool) -> list[bytes]:
    """vLLM 0.32's chunk bytes (compact JSON, keys in its order; docs/engines.md)."""
    head = {"id": "chatcmpl-85225c94ced2464a", "object": "chat.completion.chunk"}
    head.update({"created": 1796178715, "model": "facts-endpoint"})
    first = dict(head)
    first["choices"] = [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    first.update({"prompt_token_ids": None, "prompt_text": None})
    out = [b"data: " + _compact(first) + b"\n\n"]
    for i in range(count - 1):
        last = i == count - 2
        chunk: dict[str, Any] = dict(head)
        choice: dict[str, Any] = {"index": 0, "delta": {"content": f" t{i}"}, "logprobs": None}
        choice["finish_reason"] = "length" if last else None
        if last:
            choice["stop_reason"] = None
        choice["token_ids"] = None
        chunk["choices"] = [choice]
        if last and not include_usage:
            chunk["system_fingerprint"] = VLLM_FINGERPRINT
        out.append(b"data: " + _compact(chunk) + b"\n\n")
    if include_usage:
        usage = dict(head, choices=[])
        total = 40 + count
        usage["usage"] = {"prompt_tokens": 40, "total_tokens": total, "completion_tokens": count}
        usage["system_fingerprint"] = VLLM_FINGERPRINT
        out.append(b"data: " + _compact(usage) + b"\n\n")
    return out


def run_upstream(port: int) -> None:
    from aiohttp import web

    whole = _compact(COMPLETION)

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=whole, content_type="application/json")
        count, pace = int(body.get("events", 4)), float(body.get("pace", 0))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        shape = vllm_events if body.get("shape") == "vllm" else builtin_events
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, event in enumerate(shape(count, include_usage)):
            if i and pace:
                await asyncio.sleep(pace)
            await response.write(event)
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---------------------------------------------------------------- load generator


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; records when SSE events arrive."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[int] | None = None
        self.first = 0.0  # perf_counter() of the first body bytes holding an SSE event
        self.last = 0.0
        self.max_gap = 0.0  # longest wait between two body pieces holding events
        self.keep_alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        if b"data:" not in body:
            return
        now = time.perf_counter()
        if not self.first:
            self.first = now
        else:
            self.max_gap = max(self.max_gap, now - self.last)
        self.last = now

    def on_message_complete(self) -> None:
        # Only meaningful here: httptools resets it once the message is over.
        self.keep_alive = self.parser.should_keep_alive()
        if self.done is not None and not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.first = self.last = self.max_gap = 0.0
        self.transport.write(request)
        return await self.done


class Target:
    """One server under test: pre-built requests and a pool of idle connections."""

    def __init__(self, base: str, path: str = "/v1/chat/completions") -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port, self.path = host, int(port), path
        self.idle: list[Conn] = []
        self.errors = 0

    def request(self, body: bytes, key: str = KEY) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def _conn(self) -> Conn:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Conn, self.host, self.port)
        return conn

    async def call(self, request: bytes) -> float:
        """Seconds to the whole response."""
        started = time.perf_counter()
        conn = await self._conn()
        try:
            status = await conn.send(request)
        except ConnectionError:
            self.errors += 1
            return time.perf_counter() - started
        elapsed = time.perf_counter() - started
        if status != 200:
            self.errors += 1
        self._put(conn)
        return elapsed

    async def stream(self, request: bytes) -> tuple[float, float]:
        """Seconds to the first SSE event, and the longest gap between events."""
        started = time.perf_counter()
        conn = await self._conn()
        try:
            status = await conn.send(request)
        except ConnectionError:
            self.errors += 1
            return 0.0, 0.0
        if status != 200 or not conn.first:
            self.errors += 1
        self._put(conn)
        return conn.first - started, conn.max_gap

    async def ttft(self, request: bytes) -> float:
        return (await self.stream(request))[0]

    def _put(self, conn: Conn) -> None:
        if conn.transport is None:
            return
        if conn.keep_alive:
            self.idle.append(conn)
        else:
            conn.transport.close()

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def sequential(fn: Callable[[], Awaitable[float]], count: int) -> list[float]:
    for _ in range(max(50, count // 10)):  # warm-up: pooled connections, caches
        await fn()
    return [await fn() for _ in range(count)]


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (0 when unknown)."""
    if pid is None:
        return 0.0
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def throughput(
    fn: Callable[[], Awaitable[float]], total: int, concurrency: int, pid: int | None = None
) -> tuple[float, float]:
    """Requests/s, and CPU microseconds per request of process ``pid``.

    The CPU cost is what tells versions of the gateway apart on a shared machine: req/s
    moves with whatever else runs on the cores, CPU time per request much less.
    """
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await fn()

    remaining = total // 5
    await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up: connections
    remaining = total
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return total / elapsed, (cpu_seconds(pid) - cpu) / total * 1e6


def summary(direct: list[float], gateway: list[float]) -> dict[str, float]:
    ms = 1e3
    d50, d99 = pct(direct, 0.5) * ms, pct(direct, 0.99) * ms
    g50, g99 = pct(gateway, 0.5) * ms, pct(gateway, 0.99) * ms
    return {
        "direct_p50_ms": d50, "direct_p99_ms": d99, "gateway_p50_ms": g50, "gateway_p99_ms": g99,
        "added_p50_ms": g50 - d50, "added_p99_ms": g99 - d99,
        "direct_mean_ms": statistics.fmean(direct) * ms,
        "gateway_mean_ms": statistics.fmean(gateway) * ms,
    }  # fmt: skip
