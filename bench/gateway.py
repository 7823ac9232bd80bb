"""Gateway overhead benchmark (DESIGN §5): ``python bench/gateway.py [--no-engine] [--src DIR]``.

Three processes: a fast stub upstream (``gateway_load.run_upstream``: built-in-shaped or
vLLM-shaped chunks), the gateway (uvicorn, one worker, uvloop + httptools, **pinned to one
core**) and this process as the load generator (pinned to the other cores with the upstream).
Every number is the median of ``--rounds`` rounds (default 3) in the same processes. Measures,
against calling the upstream directly:

* added latency at concurrency 1, non-streaming (p50, p99);
* requests/s and gateway CPU per request at concurrency 32, with a key without limits and
  with a key that has requests- and tokens-per-minute limits (never reached);
* added time to first token (first SSE event) at c=1, built-in-shaped and vLLM-shaped streams;
* a soak of 64 concurrent vLLM-shaped streams (paced events) for ``--soak-seconds``: streams
  that stalled (a gap > 200 ms between two events; the upstream paces them 20 ms apart);
* 256 concurrent streams all complete;
* optionally the same c=1 latency against the built-in engine with a tiny model.

``--src DIR`` runs another checkout's ``src`` as the gateway (for before/after comparisons).
Writes ``bench/reports/gateway.json`` (or ``--out``) and prints a table.
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
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from gateway_load import (
    KEY,
    LIMITED_KEY,
    Target,
    cpu_seconds,
    run_upstream,
    sequential,
    summary,
    throughput,
)

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
STALL = 0.2  # seconds without an event, while the upstream sends one every 20 ms


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpus: set[int]) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def run_gateway(port: int, upstream: str, engine: str | None, cpu: int) -> None:
    pin({cpu})
    import uvicorn

    from turnout.gateway import keys as gateway_keys
    from turnout.gateway.app import create_gateway_app
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
    table: dict[str, Any] = {gateway_keys.hash_key(KEY): "org"}
    entry = getattr(gateway_keys, "KeyEntry", None)  # absent before per-key limits
    if entry is not None:
        limited = entry("org", "key-limited", rpm=10**9, tpm=10**12)
        table[gateway_keys.hash_key(LIMITED_KEY)] = limited
    app = create_gateway_app(
        Router(RoutingTable(routes, 1)), gateway_keys.StaticInferenceKeys(table)
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, ws="none")


# ---------------------------------------------------------------- measurements


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "bench", "messages": [], **fields}).encode()


async def measure(
    direct_url: str, gateway_url: str, n: int, pids: tuple[int, int], soak_seconds: float
) -> dict[str, Any]:
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]}).encode()
    out: dict[str, Any] = {}
    direct, gateway = Target(direct_url), Target(gateway_url)
    d_req, g_req = direct.request(body), gateway.request(body)
    # Interleave direct and gateway blocks so drift affects both alike.
    lat_d: list[float] = []
    lat_g: list[float] = []
    for _ in range(2):
        lat_d += await sequential(lambda: direct.call(d_req), n // 2)
        lat_g += await sequential(lambda: gateway.call(g_req), n // 2)
    out["c1"] = summary(lat_d, lat_g)
    up_pid, gw_pid = pids
    rps, cpu = await throughput(lambda: direct.call(d_req), n * 5, 32, up_pid)
    out["c32_rps_direct"], out["c32_upstream_cpu_us_per_request"] = rps, cpu
    out.update(await limits_on_and_off(gateway, body, n, gw_pid))
    for shape in ("builtin", "vllm"):
        out["ttft" if shape == "builtin" else "ttft_vllm"] = await ttft(direct, gateway, shape, n)
    out["soak_64_vllm"] = await soak(gateway, 64, soak_seconds, gw_pid)
    out["streams_256"] = await many_streams(gateway)
    out["errors"] = direct.errors + gateway.errors
    direct.close()
    gateway.close()
    return out


async def limits_on_and_off(gateway: Target, body: bytes, n: int, pid: int) -> dict[str, float]:
    """c=32 through the gateway with a key without limits and one with rpm and tpm limits,
    in alternating blocks (medians of three each), so drift on a shared machine hits both."""
    free, limited = gateway.request(body), gateway.request(body, LIMITED_KEY)
    off: list[tuple[float, float]] = []
    on: list[tuple[float, float]] = []
    for _ in range(3):
        off.append(await throughput(lambda: gateway.call(free), n * 2, 32, pid))
        before = gateway.errors
        result = await throughput(lambda: gateway.call(limited), n * 2, 32, pid)
        if gateway.errors != before:  # a gateway without limits refuses the unknown key
            gateway.errors = before
        else:
            on.append(result)
    out = {
        "c32_rps_gateway": statistics.median(r for r, _ in off),
        "c32_gateway_cpu_us_per_request": statistics.median(c for _, c in off),
    }
    if on:
        out["c32_rps_gateway_limits"] = statistics.median(r for r, _ in on)
        out["c32_gateway_cpu_us_per_request_limits"] = statistics.median(c for _, c in on)
    return out


async def ttft(direct: Target, gateway: Target, shape: str, n: int) -> dict[str, float]:
    """Added time to the first event at c=1, direct and gateway blocks interleaved."""
    stream = chat(stream=True, shape=shape)
    d_req, g_req = direct.request(stream), gateway.request(stream)
    ttft_d: list[float] = []
    ttft_g: list[float] = []
    for _ in range(2):
        ttft_d += await sequential(lambda: direct.ttft(d_req), n // 4)
        ttft_g += await sequential(lambda: gateway.ttft(g_req), n // 4)
    return summary(ttft_d, ttft_g)


async def soak(gateway: Target, concurrency: int, seconds: float, pid: int) -> dict[str, Any]:
    """``concurrency`` vLLM-shaped streams at all times; each has 50 events 20 ms apart.

    Besides the stalls (which also count the time the shared core was given to other
    processes), the gateway's own CPU use: busy share of its core, and microseconds per event.
    """
    request = gateway.request(chat(stream=True, shape="vllm", events=50, pace=0.02))
    gaps: list[float] = []
    before = gateway.errors
    deadline = time.perf_counter() + seconds
    cpu = cpu_seconds(pid)

    async def worker() -> None:
        while time.perf_counter() < deadline:
            gaps.append((await gateway.stream(request))[1])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu
    ordered = sorted(gaps)
    return {
        "gateway_cpu_share": cpu / elapsed,
        "gateway_cpu_us_per_event": cpu / (len(gaps) * 51) * 1e6,
        "concurrency": concurrency,
        "streams": len(gaps),
        "failed": gateway.errors - before,
        "stalled": sum(1 for g in gaps if g > STALL),
        "max_gap_ms": ordered[-1] * 1e3,
        "p99_max_gap_ms": ordered[int(0.99 * (len(ordered) - 1))] * 1e3,
        "seconds": elapsed,
    }


async def many_streams(gateway: Target) -> dict[str, Any]:
    request = gateway.request(chat(stream=True, events=20, pace=0.01))
    before = gateway.errors
    started = time.perf_counter()
    results = await asyncio.gather(
        *(gateway.ttft(request) for _ in range(256)), return_exceptions=True
    )
    failed = sum(1 for r in results if isinstance(r, BaseException)) + gateway.errors - before
    return {"streams": 256, "failed": failed, "seconds": time.perf_counter() - started}


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


# ---------------------------------------------------------------- orchestration


def spawn(src: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(src)}
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


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run the load generator on uvloop when installed: it must cost less than what it loads."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key medians of the rounds; error and stall counts are summed instead."""
    out: dict[str, Any] = {}
    for key, first in rounds[0].items():
        values = [r[key] for r in rounds if key in r]
        if isinstance(first, dict):
            out[key] = median_of(values)
        elif key in ("errors", "failed", "stalled", "streams"):
            out[key] = sum(values)
        elif key == "max_gap_ms":
            out[key] = max(values)
        else:
            out[key] = statistics.median(values)
    return out


def machine(gateway_cpu: int) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mods = {}
    for mod in ("uvloop", "httptools", "orjson"):
        try:
            __import__(mod)
            mods[mod] = True
        except ImportError:
            mods[mod] = False
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "gateway_pinned_to_cpu": gateway_cpu,
        **mods,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "role", nargs="?", default="bench", choices=["bench", "upstream", "gateway"]
    )
    parser.add_argument("args", nargs="*")
    parser.add_argument("--requests", type=int, default=2000, help="c=1 requests per side")
    parser.add_argument("--no-engine", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="results are medians of rounds")
    parser.add_argument("--soak-seconds", type=float, default=20.0)
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the gateway's code")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "reports" / "gateway.json")
    opts = parser.parse_args()
    gateway_cpu = (os.cpu_count() or 1) - 1
    others = set(range(os.cpu_count() or 1)) - {gateway_cpu}
    if opts.role == "upstream":
        pin(others)
        return run_upstream(int(opts.args[0]))
    if opts.role == "gateway":
        port, upstream, engine = int(opts.args[0]), opts.args[1], opts.args[2] or None
        return run_gateway(port, upstream, engine, gateway_cpu)
    pin(others)
    up_port, gw_port, engine_port = free_port(), free_port(), free_port()
    direct, gateway = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
    engine_url = "" if opts.no_engine else f"http://127.0.0.1:{engine_port}"
    src = opts.src.resolve()
    procs = [
        spawn(src, "upstream", str(up_port)),
        spawn(src, "gateway", str(gw_port), direct, engine_url),
    ]
    try:
        engine = None if opts.no_engine else start_engine(procs, engine_port)
        asyncio.run(wait_ready(gateway + "/metrics"))
        pids = (procs[0].pid, procs[1].pid)
        rounds = [
            run_loop(measure(direct, gateway, opts.requests, pids, opts.soak_seconds))
            for _ in range(opts.rounds)
        ]
        if engine is not None:
            # The engine part is slow and not the gateway's: once is enough.
            asyncio.run(wait_ready(engine + "/ready"))
            rounds[0].update(run_loop(measure_engine(engine, gateway)))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    report = {
        "machine": machine(gateway_cpu),
        "gateway_src": str(src),
        "load_generator": "raw HTTP/1.1 keep-alive connections (httptools), one per concurrent "
        "request, on uvloop; shares its cores with the upstream, the gateway has one core",
        "results": median_of(rounds),
        "rounds": rounds,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def ms_pair(d: dict[str, float], a: str, b: str, digits: int = 3) -> str:
    return f"{d[a]:.{digits}f} / {d[b]:.{digits}f} ms"


def print_table(report: dict[str, Any]) -> None:
    r = report["results"]
    c1, s, soaked = r["c1"], r["streams_256"], r["soak_64_vllm"]
    rows = [
        ("added latency p50 (c=1)", f"{c1['added_p50_ms']:.3f} ms", "<= 0.5 ms"),
        ("added latency p99 (c=1)", f"{c1['added_p99_ms']:.3f} ms", "<= 1.5 ms"),
        ("direct p50 / p99", ms_pair(c1, "direct_p50_ms", "direct_p99_ms"), ""),
        ("gateway p50 / p99", ms_pair(c1, "gateway_p50_ms", "gateway_p99_ms"), ""),
        ("req/s c=32 via gateway", f"{r['c32_rps_gateway']:.0f}", ">= 3000"),
        ("req/s c=32 direct", f"{r['c32_rps_direct']:.0f}", ""),
        ("gateway CPU per request c=32", f"{r['c32_gateway_cpu_us_per_request']:.0f} us", ""),
    ]
    if "c32_gateway_cpu_us_per_request_limits" in r:
        cpu = r["c32_gateway_cpu_us_per_request_limits"]
        rows.append(("  ... with rpm+tpm limits", f"{cpu:.0f} us", ""))
    upstream_cpu = r["c32_upstream_cpu_us_per_request"]
    rows.append(("upstream CPU per request c=32", f"{upstream_cpu:.0f} us", ""))
    for key, name in (("ttft", "built-in chunks"), ("ttft_vllm", "vLLM chunks")):
        added = ms_pair(r[key], "added_p50_ms", "added_p99_ms")
        rows.append((f"added TTFT p50/p99 ({name})", added, "p99 <= 2 ms"))
    streams = f"{soaked['streams']} streams, {soaked['stalled']} stalled, {soaked['failed']} failed"
    rows += [
        ("64 vLLM streams soak", streams, "0 stalled"),
        ("  worst gap / p99 of max gap", ms_pair(soaked, "max_gap_ms", "p99_max_gap_ms", 0), ""),
        (
            "  gateway CPU: core share, per event",
            f"{soaked['gateway_cpu_share']:.0%}, {soaked['gateway_cpu_us_per_event']:.1f} us",
            "",
        ),
        ("256 concurrent streams", f"{s['failed']} failed in {s['seconds']:.2f} s", "0 failed"),
        ("errors", str(r["errors"]), "0"),
    ]
    if "engine_c1" in r:
        e, t = r["engine_c1"], r["engine_ttft"]
        rows += [
            ("engine direct p50/p99", ms_pair(e, "direct_p50_ms", "direct_p99_ms", 2), ""),
            ("engine added p50/p99", ms_pair(e, "added_p50_ms", "added_p99_ms"), ""),
            ("engine added TTFT p50/p99", ms_pair(t, "added_p50_ms", "added_p99_ms"), ""),
            ("engine errors", str(r["engine_errors"]), "0"),
        ]
    m = report["machine"]
    print(f"machine: {m['nproc']} cpus, {m['cpu']}, gateway on cpu {m['gateway_pinned_to_cpu']}")
    for name, value, target in rows:
        print(f"{name:32} {value:>40}   {target}")


if __name__ == "__main__":
    main()
