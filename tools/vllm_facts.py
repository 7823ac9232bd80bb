"""Measure how vLLM behaves as a Turnout engine: start-up, memory, speed and its wire format.

Starts vLLM from Turnout's own ``vllm`` template (placeholders filled here), on a model
directory, and prints a JSON report: time to ``/health`` 200, RSS of the process tree, tokens/s
at concurrency 1 and 8, the exact bodies of its health, models, chat, stream chunks and errors,
what SIGTERM does to a running stream with and without ``--shutdown-timeout``, and whether
``/collective_rpc reload_weights`` swaps the weights in place.

    .venv/bin/python tools/vllm_facts.py --model-dir DIR [--v2-dir DIR] [--out report.json]

The numbers depend on the machine (and on who else uses it); docs/engines.md records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from turnout.placement.engines import BUILTIN_ENGINES  # noqa: E402

SERVED = "facts-endpoint"
PROMPT = [{"role": "user", "content": "Tell me a long story about a railway turnout."}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def argv_for(model_dir: Path, port: int, shutdown_timeout: int | None) -> list[str]:
    values = {
        "python": str(ROOT / ".venv" / "bin" / "python"),
        "model_dir": str(model_dir),
        "host": "127.0.0.1",
        "port": str(port),
        "served_name": SERVED,
        "device": "cpu",
        "max_model_len": "2048",
        "dtype": "auto",
        "tensor_parallel_size": "1",
        "gpus": "",
    }
    argv = [a.format_map(values) for a in BUILTIN_ENGINES["vllm"].argv]
    if shutdown_timeout is not None:
        argv[argv.index("--shutdown-timeout") + 1] = str(shutdown_timeout)
    return argv


class Engine:
    def __init__(self, model_dir: Path, log: Path, shutdown_timeout: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "TURNOUT_VLLM_ARGS": os.environ.get(
                "TURNOUT_VLLM_ARGS", "--enforce-eager --kv-cache-memory-bytes 2G"
            ),
            "VLLM_SERVER_DEV_MODE": "1",
        }
        self.started = time.monotonic()
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv_for(model_dir, self.port, shutdown_timeout),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float = 600) -> float:
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"vLLM not healthy after {timeout} s; see {self.log}")

    def rss_gib(self) -> float:
        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 2**30

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def raw(resp: httpx.Response) -> dict[str, Any]:
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    return {
        "status": resp.status_code,
        "content_type": resp.headers.get("content-type"),
        "body": body,
    }


def sse_lines(url: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> list[str]:
    with httpx.stream("POST", url + path, json=body, timeout=300) as resp:
        head = f"HTTP {resp.status_code} {resp.headers.get('content-type')}"
        return [head, *(line for line in resp.iter_lines() if line)]


def wire_facts(url: str) -> dict[str, Any]:
    chat = {"model": SERVED, "messages": PROMPT, "max_tokens": 8, "temperature": 0}
    facts: dict[str, Any] = {
        "health": raw(httpx.get(url + "/health")),
        "models": raw(httpx.get(url + "/v1/models")),
        "chat": raw(httpx.post(url + "/v1/chat/completions", json=chat, timeout=120)),
        "stream": sse_lines(url, {**chat, "max_tokens": 3, "stream": True}),
        "stream_include_usage": sse_lines(
            url,
            {**chat, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}},
        ),
    }
    errors = {
        "max_tokens_beyond_context": {**chat, "max_tokens": 5000},
        "prompt_beyond_context": {**chat, "messages": [{"role": "user", "content": "go " * 3000}]},
        "bad_field_type": {**chat, "temperature": "hot"},
        "bad_role": {**chat, "messages": [{"role": "wizard", "content": "hi"}]},
        "negative_max_tokens": {**chat, "max_tokens": -1},
        "unknown_model": {**chat, "model": "no-such-model"},
        "unknown_field_accepted": {**chat, "turnout_unknown_field": 1},
        "prompt_plus_max_tokens_beyond_context": {**chat, "max_tokens": 2040},
    }
    for name, body in errors.items():
        facts[name] = raw(httpx.post(url + "/v1/chat/completions", json=body, timeout=120))
    facts["streaming_error"] = sse_lines(
        url, {**errors["max_tokens_beyond_context"], "stream": True}
    )
    facts["completions_stream"] = sse_lines(
        url,
        {"model": SERVED, "prompt": "Hello", "max_tokens": 2, "stream": True},
        "/v1/completions",
    )
    facts["chat_headers"] = dict(
        httpx.post(url + "/v1/chat/completions", json=chat, timeout=120).headers
    )
    facts["no_json_body"] = raw(httpx.post(url + "/v1/chat/completions", content=b"{nope"))
    facts["unknown_route"] = raw(httpx.get(url + "/v1/nope"))
    facts["tcp_warming"] = raw(httpx.get(url + "/v1/tcp_warming"))
    return facts


async def throughput(url: str, concurrency: int, max_tokens: int = 128) -> float:
    body = {
        "model": SERVED,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one() -> int:
            resp = await client.post("/v1/chat/completions", json=body)
            resp.raise_for_status()
            return int(resp.json()["usage"]["completion_tokens"])

        await one()  # warm
        best = 0.0
        for _ in range(2):
            started = time.monotonic()
            tokens = await asyncio.gather(*(one() for _ in range(concurrency)))
            best = max(best, sum(tokens) / (time.monotonic() - started))
        return round(best, 1)


def late_request(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """A new request half a second after SIGTERM, while the engine drains."""
    time.sleep(0.5)
    try:
        return raw(
            httpx.post(
                url + "/v1/chat/completions",
                timeout=30,
                json={**body, "stream": False, "max_tokens": 4},
            )
        )
    except httpx.HTTPError as exc:
        return {"error": repr(exc)}


def sigterm_during_stream(
    model_dir: Path, log: Path, shutdown_timeout: int, max_tokens: int = 300
) -> dict[str, Any]:
    engine = Engine(model_dir, log, shutdown_timeout)
    try:
        engine.wait_healthy()
        body = {
            "model": SERVED,
            "messages": PROMPT,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        lines: list[str] = []
        signalled = ended = 0.0
        late: dict[str, Any] = {}
        hung = False
        # A short read timeout: without --shutdown-timeout the stream can stall for good.
        timeout = httpx.Timeout(30, read=30)
        try:
            with httpx.stream(
                "POST", engine.url + "/v1/chat/completions", json=body, timeout=timeout
            ) as resp:
                for line in resp.iter_lines():
                    if not line:
                        continue
                    lines.append(line)
                    if len(lines) == 20:
                        signalled = time.monotonic()
                        engine.proc.send_signal(signal.SIGTERM)
                        late = late_request(engine.url, body)
        except httpx.ReadTimeout:
            hung = True
        ended = time.monotonic()
        try:
            engine.proc.wait(timeout=60)
            exit_after: float | None = round(time.monotonic() - signalled, 2)
        except subprocess.TimeoutExpired:
            exit_after = None
        chunks = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        return {
            "shutdown_timeout": shutdown_timeout,
            "max_tokens": max_tokens,
            "content_chunks": sum(1 for c in chunks if c.get("choices")),
            "finish_reasons": [
                c["choices"][0].get("finish_reason")
                for c in chunks
                if c.get("choices") and c["choices"][0].get("finish_reason")
            ],
            "error_chunks": [c for c in chunks if "error" in c],
            "last_lines": lines[-3:],
            "ended_with_done": lines[-1] == "data: [DONE]" if lines else False,
            "stream_hung_30s": hung,
            "stream_end_after_sigterm_s": round(ended - signalled, 2),
            "exit_after_sigterm_s": exit_after,
            "exit_code": engine.proc.returncode,
            "new_request_during_drain": late,
        }
    finally:
        engine.stop()


def greedy(url: str) -> str:
    body = {"model": SERVED, "messages": PROMPT, "max_tokens": 24, "temperature": 0}
    resp = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    return str(resp.json()["choices"][0]["message"]["content"])


def reload_in_place(url: str, v2_dir: Path) -> dict[str, Any]:
    before = greedy(url)
    started = time.monotonic()
    resp = httpx.post(
        url + "/collective_rpc",
        timeout=300,
        json={"method": "reload_weights", "kwargs": {"weights_path": str(v2_dir)}},
    )
    took = time.monotonic() - started
    after = greedy(url)
    # The prefix cache still holds the prompt's KV computed with the old weights.
    reset = raw(httpx.post(url + "/reset_prefix_cache", timeout=60))
    return {
        "response": raw(resp),
        "seconds": round(took, 2),
        "before": before,
        "after_without_cache_reset": after,
        "reset_prefix_cache": reset,
        "after_cache_reset": greedy(url),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--v2-dir", type=Path)
    parser.add_argument("--logs", type=Path, default=Path("/tmp/vllm-facts"))
    parser.add_argument("--skip", nargs="*", default=[], help="sections to leave out")
    parser.add_argument("--out", type=Path, default=Path("vllm-facts.json"))
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"argv": argv_for(args.model_dir, 0, None)}

    def save(section: str, value: Any) -> None:
        # Written after every section, so a run cut short still reports what it measured.
        report[section] = value
        args.out.write_text(json.dumps(report, indent=1))

    engine = Engine(args.model_dir, args.logs / "main.log")
    try:
        save("startup_to_health_s", round(engine.wait_healthy(), 1))
        save("rss_gib_idle", round(engine.rss_gib(), 2))
        if "wire" not in args.skip:
            save("wire", wire_facts(engine.url))
        if "speed" not in args.skip:
            save("tokens_per_s_c1", asyncio.run(throughput(engine.url, 1)))
            save("tokens_per_s_c8", asyncio.run(throughput(engine.url, 8)))
            save("rss_gib_after_load", round(engine.rss_gib(), 2))
        if args.v2_dir and "reload" not in args.skip:
            reload = reload_in_place(engine.url, args.v2_dir)
            engine.stop()
            v2 = Engine(args.v2_dir, args.logs / "v2.log")
            try:
                v2.wait_healthy()
                reload["fresh_v2"] = greedy(v2.url)
            finally:
                v2.stop()
            save("reload_in_place", reload)
    finally:
        engine.stop()
    if "sigterm" not in args.skip:
        runs = []
        for timeout, max_tokens in ((0, 300), (0, 300), (8, 100), (3, 1000)):
            log = args.logs / f"sigterm-{timeout}-{max_tokens}-{len(runs)}.log"
            runs.append(sigterm_during_stream(args.model_dir, log, timeout, max_tokens))
            save("sigterm", runs)


if __name__ == "__main__":
    main()
