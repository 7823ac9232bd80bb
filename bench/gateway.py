"""Gateway overhead benchmark (DESIGN §5): run ``python bench/gateway.py [--quick] [--no-engine]``.

Three processes: a minimal fast upstream (raw aiohttp), the gateway (uvicorn, one worker,
uvloop + httptools when installed) and this process as the load generator (aiohttp client).
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
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


def run_gateway(port: int, upstream: str) -> None:
    import uvicorn

    from turnout.gateway.app import create_gateway_app
    from turnout.gateway.keys import StaticInferenceKeys, hash_key
    from turnout.gateway.routing import EndpointRoute, ReplicaRoute, Router, RoutingTable

    route = EndpointRoute("bench", "org", "dep", 1, "fp_0123456789", (ReplicaRoute("r", upstream),))
    app = create_gateway_app(
        Router(RoutingTable({"bench": route}, 1)), StaticInferenceKeys({hash_key(KEY): "org"})
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


class Load:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.errors = 0

    async def call(self, url: str, body: bytes) -> float:
        started = time.perf_counter()
        async with self.session.post(url, data=body, headers=self.headers) as response:
            await response.read()
            if response.status != 200:
                self.errors += 1
        return time.perf_counter() - started

    async def ttft(self, url: str, body: bytes) -> float:
        started = time.perf_counter()
        first = 0.0
        async with self.session.post(url, data=body, headers=self.headers) as response:
            async for chunk in response.content.iter_any():
                if not first and b"data:" in chunk:
                    first = time.perf_counter() - started
            if response.status != 200:
                self.errors += 1
        return first

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


async def sequential(fn: Callable[[], Awaitable[float]], count: int) -> list[float]:
    for _ in range(max(50, count // 10)):  # warm-up: pooled connections, caches
        await fn()
    return [await fn() for _ in range(count)]


async def throughput(fn: Callable[[], Awaitable[float]], total: int, concurrency: int) -> float:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await fn()

    await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up round
    remaining = total
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


async def measure(direct: str, gateway: str, n: int, engine: str | None) -> dict[str, Any]:
    import aiohttp

    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]}).encode()
    stream = json.dumps({"model": "bench", "messages": [], "stream": True}).encode()
    out: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        load = Load(session)
        d_url, g_url = direct + "/v1/chat/completions", gateway + "/v1/chat/completions"
        # Interleave direct and gateway blocks so drift affects both alike.
        lat_d, lat_g = [], []
        for _ in range(2):
            lat_d += await sequential(lambda: load.call(d_url, body), n // 2)
            lat_g += await sequential(lambda: load.call(g_url, body), n // 2)
        out["c1"] = summary(lat_d, lat_g)
        out["c32_rps_direct"] = await throughput(lambda: load.call(d_url, body), n * 5, 32)
        out["c32_rps_gateway"] = await throughput(lambda: load.call(g_url, body), n * 5, 32)
        ttft_d = await sequential(lambda: load.ttft(d_url, stream), n // 2)
        ttft_g = await sequential(lambda: load.ttft(g_url, stream), n // 2)
        out["ttft"] = summary(ttft_d, ttft_g)
        out["streams_256"] = await many_streams(load, g_url)
        if engine is not None:
            e_body = json.dumps(
                {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            ).encode()
            lat_e = await sequential(
                lambda: load.call(engine + "/v1/chat/completions", e_body), 100
            )
            out["engine_c1_direct_ms"] = {
                "p50": pct(lat_e, 0.5) * 1e3,
                "p99": pct(lat_e, 0.99) * 1e3,
            }
        out["errors"] = load.errors
    return out


async def many_streams(load: Load, url: str) -> dict[str, Any]:
    body = json.dumps(
        {"model": "bench", "messages": [], "stream": True, "events": 20, "pace": 0.01}
    ).encode()
    before = load.errors
    started = time.perf_counter()
    results = await asyncio.gather(
        *(load.ttft(url, body) for _ in range(256)), return_exceptions=True
    )
    failed = sum(1 for r in results if isinstance(r, BaseException)) + load.errors - before
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


def start_engine(procs: list[subprocess.Popen[bytes]]) -> str | None:
    try:
        from turnout.registry.tinymodel import write_tiny_model
    except ImportError as exc:
        print(f"note: built-in engine part skipped ({exc})")
        return None
    model_dir = Path(tempfile.mkdtemp(prefix="bench-tiny-"))
    write_tiny_model(model_dir)
    port = free_port()
    cmd = [sys.executable, "-m", "turnout.cli.main", "engine", "serve"]
    cmd += ["--model-dir", str(model_dir), "--port", str(port), "--served-name", "tiny"]
    cmd += ["--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs.append(subprocess.Popen(cmd, env=env))
    return f"http://127.0.0.1:{port}"


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
    opts = parser.parse_args()
    if opts.role == "upstream":
        return run_upstream(int(opts.args[0]))
    if opts.role == "gateway":
        return run_gateway(int(opts.args[0]), opts.args[1])
    up_port, gw_port = free_port(), free_port()
    direct, gateway = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
    procs = [spawn("upstream", str(up_port)), spawn("gateway", str(gw_port), direct)]
    try:
        engine = None if opts.no_engine else start_engine(procs)
        asyncio.run(wait_ready(gateway + "/metrics"))
        if engine is not None:
            asyncio.run(wait_ready(engine + "/ready"))
        results = asyncio.run(measure(direct, gateway, opts.requests, engine))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    report = {"machine": machine(), "results": results}
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
        ("added TTFT p50 (stream)", f"{ttft['added_p50_ms']:.3f} ms", ""),
        ("added TTFT p99 (stream)", f"{ttft['added_p99_ms']:.3f} ms", "<= 2 ms"),
        ("256 concurrent streams", f"{s['failed']} failed in {s['seconds']:.2f} s", "0 failed"),
        ("errors", str(r["errors"]), "0"),
    ]
    if "engine_c1_direct_ms" in r:
        e = r["engine_c1_direct_ms"]
        rows.append(("engine direct p50/p99", f"{e['p50']:.1f} / {e['p99']:.1f} ms", ""))
    m = report["machine"]
    print(f"machine: {m['nproc']} cpus, {m['cpu']}, uvloop={m['uvloop']}")
    for name, value, target in rows:
        print(f"{name:28} {value:>28}   {target}")


if __name__ == "__main__":
    main()
