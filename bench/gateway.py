"""Gateway overhead benchmark (DESIGN §5): run ``python bench/gateway.py [--quick] [--no-engine]``.

Three processes: a minimal fast upstream (raw aiohttp), the gateway (uvicorn, one worker,
uvloop + httptools when installed) and this process as the load generator (raw keep-alive
HTTP/1.1 connections parsed with httptools, on uvloop, so that it costs less than what it
loads). Every number is the median of ``--rounds`` rounds (default 3) in the same processes.
Measures, against calling the upstream directly:

* added latency at concurrency 1, non-streaming (p50, p99);
* requests/s at concurrency 32, via the gateway and direct;
* added time to first token (first SSE chunk) for streams, concurrency 1;
* 256 concurrent streams, each with paced events, all complete without error;
* optionally the same c=1 latency against the built-in engine with a tiny model.

Writes ``bench/reports/gateway.json`` and prints a table. Request counts are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
KEY = "sk-bench"
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- upstream process


def run_upstream(port: int) -> None:
    from aiohttp import web

    whole = json.dumps(COMPLETION).encode()

    def event(i: int, last: bool) -> bytes:
        chunk = dict(COMPLETION, object="chat.completion.chunk")
        chunk["choices"] = [{"index": 0, "delta": {"content": f"t{i}"}}]
        if last:
            chunk["usage"] = COMPLETION["usage"]
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=whole, content_type="application/json")
        events, pace = int(body.get("events", 4)), float(body.get("pace", 0))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(events):
            if i and pace:
                await asyncio.sleep(pace)
            await response.write(event(i, i == events - 1))
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---------------------------------------------------------------- gateway process


def run_gateway(port: int, upstream: str, engine: str | None = None) -> None:
    import uvicorn

    from turnout.gateway.app import create_gateway_app
    from turnout.gateway.keys import StaticInferenceKeys, hash_key
    from turnout.gateway.routing import Router
    from turnout.routing.table import EndpointRoute, ReplicaRoute, RoutingTable

    routes = {
        "bench": EndpointRoute(
            "bench", "org", "dep", 1, "fp_0123456789", (ReplicaRoute("r", upstream),)
        )
    }
    if engine:
        # The built-in engine serves under the name "tiny", which is also this endpoint's id.
        routes["tiny"] = EndpointRoute(
            "tiny", "org", "dep-e", 1, "fp_0123456789", (ReplicaRoute("e", engine),)
        )
    app = create_gateway_app(
        Router(RoutingTable(routes, 1)), StaticInferenceKeys({hash_key(KEY): "org"})
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, ws="none")


# ---------------------------------------------------------------- load generator


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_ready(url: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            try:
                async with session.get(url) as response:
                    await response.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the load generator.

    Requests are pre-built bytes and responses are parsed by httptools: a load generator
    built on a full HTTP client (aiohttp) spent more CPU per request than the gateway, on the
    same two cores, and so measured itself.
    """

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[int] | None = None
        self.first = 0.0  # perf_counter() of the first body bytes holding an SSE event
        self.keep_alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        if not self.first and b"data:" in body:
            self.first = time.perf_counter()

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
        self.first = 0.0
        self.transport.write(request)
        return await self.done


class Target:
    """One server under test: pre-built requests and a pool of idle connections."""

    def __init__(self, base: str, path: str = "/v1/chat/completions") -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port, self.path = host, int(port), path
        self.idle: list[Conn] = []
        self.errors = 0

    def request(self, body: bytes) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
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

    async def ttft(self, request: bytes) -> float:
        """Seconds to the first SSE event."""
        started = time.perf_counter()
        conn = await self._conn()
        try:
            status = await conn.send(request)
        except ConnectionError:
            self.errors += 1
            return 0.0
        if status != 200 or not conn.first:
            self.errors += 1
        self._put(conn)
        return conn.first - started

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


async def measure(
    direct_url: str, gateway_url: str, n: int, engine: str | None, pids: tuple[int, int]
) -> dict[str, Any]:
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]}).encode()
    stream = json.dumps({"model": "bench", "messages": [], "stream": True}).encode()
    out: dict[str, Any] = {}
    direct, gateway = Target(direct_url), Target(gateway_url)
    d_req, g_req = direct.request(body), gateway.request(body)
    # Interleave direct and gateway blocks so drift affects both alike.
    lat_d, lat_g = [], []
    for _ in range(2):
        lat_d += await sequential(lambda: direct.call(d_req), n // 2)
        lat_g += await sequential(lambda: gateway.call(g_req), n // 2)
    out["c1"] = summary(lat_d, lat_g)
    up_pid, gw_pid = pids
    rps, cpu = await throughput(lambda: direct.call(d_req), n * 5, 32, up_pid)
    out["c32_rps_direct"], out["c32_upstream_cpu_us_per_request"] = rps, cpu
    rps, cpu = await throughput(lambda: gateway.call(g_req), n * 5, 32, gw_pid)
    out["c32_rps_gateway"], out["c32_gateway_cpu_us_per_request"] = rps, cpu
    d_req, g_req = direct.request(stream), gateway.request(stream)
    ttft_d = await sequential(lambda: direct.ttft(d_req), n // 2)
    ttft_g = await sequential(lambda: gateway.ttft(g_req), n // 2)
    out["ttft"] = summary(ttft_d, ttft_g)
    out["streams_256"] = await many_streams(gateway)
    if engine is not None:
        out.update(await measure_engine(engine, gateway_url))
    out["errors"] = direct.errors + gateway.errors
    direct.close()
    gateway.close()
    return out


async def measure_engine(engine_url: str, gateway_url: str) -> dict[str, Any]:
    """The same comparisons against the built-in engine on a tiny model (c=1, interleaved)."""
    messages = [{"role": "user", "content": "hi"}]
    body = json.dumps({"model": "tiny", "messages": messages, "max_tokens": 4}).encode()
    stream = json.dumps(
        {"model": "tiny", "messages": messages, "max_tokens": 4, "stream": True}
    ).encode()
    direct, gateway = Target(engine_url), Target(gateway_url)
    lat_d: list[float] = []
    lat_g: list[float] = []
    ttft_d: list[float] = []
    ttft_g: list[float] = []
    for _ in range(2):
        lat_d += await sequential(lambda: direct.call(direct.request(body)), 50)
        lat_g += await sequential(lambda: gateway.call(gateway.request(body)), 50)
        ttft_d += await sequential(lambda: direct.ttft(direct.request(stream)), 50)
        ttft_g += await sequential(lambda: gateway.ttft(gateway.request(stream)), 50)
    out = {"engine_c1": summary(lat_d, lat_g), "engine_ttft": summary(ttft_d, ttft_g)}
    out["engine_errors"] = direct.errors + gateway.errors
    direct.close()
    gateway.close()
    return out


async def many_streams(gateway: Target) -> dict[str, Any]:
    body = json.dumps(
        {"model": "bench", "messages": [], "stream": True, "events": 20, "pace": 0.01}
    ).encode()
    request = gateway.request(body)
    before = gateway.errors
    started = time.perf_counter()
    results = await asyncio.gather(
        *(gateway.ttft(request) for _ in range(256)), return_exceptions=True
    )
    failed = sum(1 for r in results if isinstance(r, BaseException)) + gateway.errors - before
    return {"streams": 256, "failed": failed, "seconds": time.perf_counter() - started}


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


# ---------------------------------------------------------------- orchestration


def spawn(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, __file__, *args], env=env)


def start_engine(procs: list[subprocess.Popen[bytes]], port: int) -> str | None:
    try:
        from turnout.registry.tinymodel import write_tiny_model
    except ImportError as exc:
        print(f"note: built-in engine part skipped ({exc})")
        return None
    model_dir = Path(tempfile.mkdtemp(prefix="bench-tiny-"))
    write_tiny_model(model_dir)
    cmd = [sys.executable, "-m", "turnout.cli.main", "engine", "serve"]
    cmd += ["--model-dir", str(model_dir), "--port", str(port), "--served-name", "tiny"]
    cmd += ["--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs.append(subprocess.Popen(cmd, env=env))
    return f"http://127.0.0.1:{port}"


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run the load generator on uvloop when installed: it must cost less than what it loads."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key medians of the rounds; error counts are summed instead."""
    out: dict[str, Any] = {}
    for key, first in rounds[0].items():
        values = [r[key] for r in rounds if key in r]
        if isinstance(first, dict):
            out[key] = median_of(values)
        elif key in ("errors", "failed"):
            out[key] = sum(values)
        else:
            out[key] = statistics.median(values)
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mods = {}
    for mod in ("uvloop", "httptools"):
        try:
            __import__(mod)
            mods[mod] = True
        except ImportError:
            mods[mod] = False
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), **mods}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "role", nargs="?", default="bench", choices=["bench", "upstream", "gateway"]
    )
    parser.add_argument("args", nargs="*")
    parser.add_argument("--requests", type=int, default=2000, help="c=1 requests per side")
    parser.add_argument("--no-engine", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="results are medians of rounds")
    opts = parser.parse_args()
    if opts.role == "upstream":
        return run_upstream(int(opts.args[0]))
    if opts.role == "gateway":
        return run_gateway(int(opts.args[0]), opts.args[1], (opts.args[2:] or [""])[0] or None)
    up_port, gw_port, engine_port = free_port(), free_port(), free_port()
    direct, gateway = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
    engine_url = "" if opts.no_engine else f"http://127.0.0.1:{engine_port}"
    procs = [spawn("upstream", str(up_port)), spawn("gateway", str(gw_port), direct, engine_url)]
    try:
        engine = None if opts.no_engine else start_engine(procs, engine_port)
        asyncio.run(wait_ready(gateway + "/metrics"))
        if engine is not None:
            asyncio.run(wait_ready(engine + "/ready"))
        pids = (procs[0].pid, procs[1].pid)
        rounds = []
        for i in range(opts.rounds):
            # The engine part is slow and not the gateway's: once is enough.
            rounds.append(
                run_loop(measure(direct, gateway, opts.requests, engine if i == 0 else None, pids))
            )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    report = {
        "machine": machine(),
        "load_generator": "raw HTTP/1.1 keep-alive connections (httptools), one per concurrent "
        "request, on uvloop; shares the cores with the upstream and the gateway",
        "results": median_of(rounds),
        "rounds": rounds,
    }
    out = ROOT / "bench" / "reports" / "gateway.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(report: dict[str, Any]) -> None:
    r = report["results"]
    c1, ttft, s = r["c1"], r["ttft"], r["streams_256"]
    rows = [
        ("added latency p50 (c=1)", f"{c1['added_p50_ms']:.3f} ms", "<= 0.5 ms"),
        ("added latency p99 (c=1)", f"{c1['added_p99_ms']:.3f} ms", "<= 1.5 ms"),
        ("direct p50 / p99", f"{c1['direct_p50_ms']:.3f} / {c1['direct_p99_ms']:.3f} ms", ""),
        ("gateway p50 / p99", f"{c1['gateway_p50_ms']:.3f} / {c1['gateway_p99_ms']:.3f} ms", ""),
        ("req/s c=32 via gateway", f"{r['c32_rps_gateway']:.0f}", ">= 3000"),
        ("req/s c=32 direct", f"{r['c32_rps_direct']:.0f}", ""),
        ("gateway CPU per request c=32", f"{r['c32_gateway_cpu_us_per_request']:.0f} us", ""),
        ("upstream CPU per request c=32", f"{r['c32_upstream_cpu_us_per_request']:.0f} us", ""),
        ("added TTFT p50 (stream)", f"{ttft['added_p50_ms']:.3f} ms", ""),
        ("added TTFT p99 (stream)", f"{ttft['added_p99_ms']:.3f} ms", "<= 2 ms"),
        ("256 concurrent streams", f"{s['failed']} failed in {s['seconds']:.2f} s", "0 failed"),
        ("errors", str(r["errors"]), "0"),
    ]
    if "engine_c1" in r:
        e, t = r["engine_c1"], r["engine_ttft"]
        rows += [
            (
                "engine direct p50/p99",
                f"{e['direct_p50_ms']:.2f} / {e['direct_p99_ms']:.2f} ms",
                "",
            ),
            ("engine added p50/p99", f"{e['added_p50_ms']:.3f} / {e['added_p99_ms']:.3f} ms", ""),
            (
                "engine added TTFT p50/p99",
                f"{t['added_p50_ms']:.3f} / {t['added_p99_ms']:.3f} ms",
                "",
            ),
            ("engine errors", str(r["engine_errors"]), "0"),
        ]
    m = report["machine"]
    print(f"machine: {m['nproc']} cpus, {m['cpu']}, uvloop={m['uvloop']}")
    for name, value, target in rows:
        print(f"{name:28} {value:>28}   {target}")


if __name__ == "__main__":
    main()
