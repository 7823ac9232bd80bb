"""The GPU half of bench/device_check.sh: SmolLM2-135M v1 then v2 through Turnout, per engine.

For each engine (the built-in one on CUDA, then vLLM when --vllm-python is given): a fresh
`turnout serve`, an endpoint of one replica, v1 deployed, tokens/s measured through the gateway
at concurrency 1 and 8, then v2 rolled out under continuous load (rollout time, failed
requests). Prints one JSON summary and writes bench/reports/device_check.json.

A surge needs the old and the new replica at once. On a one-GPU machine both share the GPU: the
check turns GPU accounting off (TURNOUT_GPUS empty: replicas see every GPU) and gives vLLM a
third of the GPU's memory each (a 135M model needs little).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from turnout.client import TurnoutClient  # noqa: E402
from turnout.demo.load import ClientLoop  # noqa: E402
from turnout.demo.models import build_versions  # noqa: E402
from turnout.demo.server import ServerProcess  # noqa: E402

ORG, ARCH, ENDPOINT = "bench", "smollm2-135m", "bench-smollm2"
PROMPT = [{"role": "user", "content": "Write a short story about a railway turnout."}]


def tokens_per_second(url: str, key: str, concurrency: int, tokens: int = 128) -> float:
    """Aggregate completion tokens/s of ``concurrency`` clients, one request each."""
    counts: list[int] = []

    def one() -> None:
        with TurnoutClient(url, key, timeout=300) as client:
            body = client.call(
                "POST",
                "/v1/chat/completions",
                {
                    "model": ENDPOINT,
                    "messages": PROMPT,
                    "max_tokens": tokens,
                    "temperature": 0.8,
                    "seed": len(counts),
                },
            )
        counts.append(int(body["usage"]["completion_tokens"]))

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


class Load(ClientLoop):
    """Two plain and one streaming client in a loop; counts answers and failures."""

    def __init__(self, url: str, key: str) -> None:
        # No join timeout: every request in flight at the stop is counted, however long.
        super().__init__(threads=3, join_timeout=None)
        self.url, self.key = url, key
        self.ok = 0
        self.failed: list[str] = []

    def run(self, index: int) -> None:
        stream = index == 0
        body = {"model": ENDPOINT, "messages": PROMPT, "max_tokens": 32, "stream": stream}
        with TurnoutClient(self.url, self.key, timeout=300) as client:
            while not self.stopping.is_set():
                try:
                    if stream:
                        with client.stream("/v1/chat/completions", body) as resp:
                            lines = [line for line in resp.iter_lines() if line]
                        if lines[-1] != "data: [DONE]":
                            raise RuntimeError("stream cut before [DONE]")
                    else:
                        client.call("POST", "/v1/chat/completions", body)
                    self.ok += 1
                except Exception as exc:  # every failure is counted and shown
                    self.failed.append(f"{type(exc).__name__}: {exc}")


def check_engine(engine: str, versions: tuple[Path, Path], vllm_python: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "TURNOUT_ALLOWED_LOCAL_ROOTS": str(versions[0].parent),
            "TURNOUT_ADMIN_TOKEN": "device-check-admin-token-0123456789abcdef",
            "TURNOUT_DEVICE": "cuda",
            "TURNOUT_GPUS": "",
        }
        if vllm_python:
            env["TURNOUT_VLLM_PYTHON"] = vllm_python
            env["TURNOUT_VLLM_ARGS"] = "--gpu-memory-utilization 0.3"
        server = ServerProcess(Path(tmp) / "data", env=env).start(timeout=120)
        try:
            with server.client(env["TURNOUT_ADMIN_TOKEN"]) as admin:
                admin.create_org(ORG)
                management = admin.create_key(ORG, "management")
                inference = admin.create_key(ORG, "inference")
                admin.create_endpoint(ENDPOINT, ORG, ARCH, engine=engine)
            with server.client(management, timeout=60) as api:
                names = []
                for path in versions:
                    done = api.wait_sync(api.upload(ORG, ARCH, str(path)), timeout=600)
                    names.append(done["name"])
                first = api.wait_deployment(api.deploy(ENDPOINT, names[0]), timeout=900)
                assert first["response"]["rollout_status"] == "complete", first
                speed = {
                    f"tokens_per_s_c{c}": round(
                        statistics.median(
                            tokens_per_second(server.url, inference, c) for _ in range(3)
                        ),
                        1,
                    )
                    for c in (1, 8)
                }
                with Load(server.url, inference) as load:
                    time.sleep(3)
                    submitted = time.monotonic()
                    second = api.wait_deployment(api.deploy(ENDPOINT, names[1]), timeout=900)
                    rollout_s = time.monotonic() - submitted
                    time.sleep(3)
            return {
                "engine": engine,
                **speed,
                "rollout_status": second["response"]["rollout_status"],
                "rollout_s": round(rollout_s, 1),
                "requests_during_load": load.ok + len(load.failed),
                "failed_requests": len(load.failed),
                "failures": load.failed[:5],
            }
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vllm-python", default="")
    args = parser.parse_args()
    versions = build_versions(ARCH, ROOT / ".device-check-models", print)
    results = [check_engine("builtin", versions, "")]
    if args.vllm_python:
        results.append(check_engine("vllm", versions, args.vllm_python))
    report = {"model": "SmolLM2-135M-Instruct v1 -> v2", "results": results}
    print(json.dumps(report, indent=2))
    out = ROOT / "bench" / "reports" / "device_check.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
