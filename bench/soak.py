"""Soak: many version switches under continuous streaming and plain load (issue 13).

Starts `turnout serve` on 127.0.0.1 with two tiny-model versions and an endpoint on the fast
stub engine (tests/e2e/stub_engine.py: stdlib, starts in a fraction of a second, answers with
the name of the weight directory it serves), then switches the endpoint between the versions
``--switches`` times, back to back, while ``--streams`` clients stream and ``--plain`` clients
send plain requests without pause. Counted:

* failed requests: any status other than 200, or a transport error;
* truncated streams: a 200 stream that did not end with ``data: [DONE]`` (or carried no
  ``finish_reason``);
* old-version answers after a switch: a request that *started* after a deployment completed
  and was answered by the previous version — by the engine's own text (which weights really
  answered), and separately by the gateway's ``x-turnout-version`` header;
* hung requests: none may take longer than ``--request-timeout``.

Writes bench/reports/soak.json and prints it. Run:
``PYTHONPATH=src .venv/bin/python bench/soak.py --switches 1000``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.hardening_env import deployed_with_stub, engine_pids, kill_leftovers  # noqa: E402

from turnout.demo.load import ClientLoop  # noqa: E402
from turnout.registry.tinymodel import write_tiny_model  # noqa: E402


@dataclass(slots=True)
class Outcome:
    started: float
    finished: float
    stream: bool
    status: int | None
    header_version: int | None
    #: The weight directory (digest hex) named by the engine's own text.
    served_digest: str | None
    complete: bool
    error: str | None


class Load(ClientLoop):
    """``streams`` streaming and ``plain`` plain clients; a client still in a request
    ``timeout + 10`` seconds after the stop is counted as hung."""

    def __init__(
        self, url: str, key: str, endpoint: str, timeout: float, streams: int, plain: int
    ) -> None:
        super().__init__(threads=streams + plain, join_timeout=timeout + 10)
        self.url, self.key, self.endpoint, self.timeout = url, key, endpoint, timeout
        self.streams = streams
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()

    def run(self, index: int) -> None:
        stream = index < self.streams
        with httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=self.timeout,
            trust_env=False,
        ) as client:
            while not self.stopping.is_set():
                outcome = self._one(client, stream)
                with self.lock:
                    self.outcomes.append(outcome)

    def _one(self, client: httpx.Client, stream: bool) -> Outcome:
        body = {"model": self.endpoint, "messages": [{"role": "user", "content": "hi"}],
                "stream": stream, "max_tokens": 16}  # fmt: skip
        started = time.time()
        status = version = digest = None
        complete = False
        try:
            with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                status = resp.status_code
                version = int(resp.headers.get("x-turnout-version") or 0) or None
                if stream:
                    text, lines = _read_stream(resp)
                    complete = lines[-1:] == ["data: [DONE]"] and '"finish_reason": "stop"' in (
                        "\n".join(lines)
                    )
                else:
                    payload = json.loads(resp.read())
                    text = payload["choices"][0]["message"]["content"]
                    complete = payload["choices"][0]["finish_reason"] == "stop"
                digest = text.split("v:", 1)[1][:64] if "v:" in text else None
            error = None if status == 200 else f"HTTP {status}"
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        return Outcome(started, time.time(), stream, status, version, digest, complete, error)


def _read_stream(resp: httpx.Response) -> tuple[str, list[str]]:
    lines = [line for line in resp.iter_lines() if line]
    text = ""
    for line in lines:
        if line.startswith("data: {"):
            delta = json.loads(line[6:])["choices"][0]["delta"]
            text += delta.get("content") or ""
    return text, lines


def soak(switches: int, streams: int, plain: int, request_timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def tiny(seed: int = 0, arch_id: str = "tiny-llama") -> Path:
            out = root / f"src-{seed}"
            if not out.exists():
                write_tiny_model(out, arch_id=arch_id, seed=seed)
            return out

        env, _ = deployed_with_stub(root / "run", tiny, {"TURNOUT_DRAIN_TIMEOUT": "30"},
                                    chunks=20, delay=0.002)  # fmt: skip
        digests = {label: env.versions[label]["response"]["digest"].split(":", 1)[1]
                   for label in ("v1", "v2")}  # fmt: skip
        pids: set[int] = set()
        try:
            assert env.wait_done(env.deploy("v1"))["response"]["rollout_status"] == "complete"
            load = Load(env.server.url, env.inference_key, env.endpoint, request_timeout,
                        streams, plain)  # fmt: skip
            load.start()
            time.sleep(1)
            began = time.time()
            # (switched at, complete at, label) of every deployment, the first one included.
            completed: list[tuple[float, float, str]] = [(0.0, 0.0, "v1")]
            failed_deployments = 0
            with env.client() as client:
                for i in range(switches):
                    label = "v2" if i % 2 == 0 else "v1"
                    name = client.deploy(env.endpoint, env.versions[label]["name"])["name"]
                    done = client.wait_deployment(client.deployment(name), timeout=300,
                                                  interval=0.02)  # fmt: skip
                    if done["response"]["rollout_status"] != "complete":
                        failed_deployments += 1
                        continue
                    events = done["response"]["events"]
                    switched = min(e["at"] for e in events if e["step"] == "switched")
                    completed.append((switched, max(e["at"] for e in events), label))
                    pids |= engine_pids(env)
                    if (i + 1) % 50 == 0:
                        print(f"{i + 1} switches, {len(load.outcomes)} requests", flush=True)
            ended = time.time()
            time.sleep(1)
            load.stop()
            hung = sum(worker.is_alive() for worker in load.workers)
        finally:
            pids |= engine_pids(env)
            env.server.stop()
            kill_leftovers(pids)
    return _report(load.outcomes, completed, digests, env, switches, failed_deployments,
                   began, ended, hung, streams, plain)  # fmt: skip


def _report(
    outcomes: list[Outcome],
    completed: list[tuple[float, float, str]],
    digests: dict[str, str],
    env: Any,
    switches: int,
    failed_deployments: int,
    began: float,
    ended: float,
    hung: int,
    streams: int,
    plain: int,
) -> dict[str, Any]:
    # A request that started after deployment i completed (its old replicas drained and
    # stopped) and finished before deployment i+1 switched must be answered by deployment i's
    # version. Between a switch and its completion either version may answer (in-flight work
    # drains), and a request sent just before a switch may reach the gateway just after it:
    # those are not counted.
    done_at = [complete for _, complete, _ in completed]
    old_by_engine = old_by_header = checked = 0
    examples: list[dict[str, Any]] = []
    gaps = sorted(complete - switched for switched, complete, _ in completed[1:])
    for o in outcomes:
        i = bisect.bisect_right(done_at, o.started) - 1
        next_switch = completed[i + 1][0] if i + 1 < len(completed) else float("inf")
        if o.error is not None or o.finished >= next_switch:
            continue
        label = completed[i][2]
        checked += 1
        wrong_engine = bool(o.served_digest) and o.served_digest != digests[label]
        wrong_header = o.header_version != env.version_id(label)
        old_by_engine += wrong_engine
        old_by_header += wrong_header
        if (wrong_engine or wrong_header) and len(examples) < 10:
            examples.append({
                "started_after_complete_ms": round((o.started - completed[i][1]) * 1000, 1),
                "finished_before_next_switch_ms": round((next_switch - o.finished) * 1000, 1),
                "finished_after_start_ms": round((o.finished - o.started) * 1000, 1),
                "stream": o.stream, "header_version": o.header_version,
                "expected_version": env.version_id(label),
                "engine_says_expected": o.served_digest == digests[label],
            })  # fmt: skip
    minutes = (ended - began) / 60
    return {
        "switches_requested": switches,
        "switches_completed": len(completed) - 1,
        "requests_checked_for_old_versions": checked,
        "failed_deployments": failed_deployments,
        "minutes": round(minutes, 2),
        "switches_per_minute": round((len(completed) - 1) / minutes, 1) if minutes else None,
        "clients": {"streaming": streams, "plain": plain},
        "requests": len(outcomes),
        "streams": sum(o.stream for o in outcomes),
        "failed_requests": sum(o.error is not None for o in outcomes),
        "failed_examples": sorted({o.error for o in outcomes if o.error})[:5],
        "truncated_streams": sum(
            o.stream and o.error is None and not o.complete for o in outcomes
        ),  # fmt: skip
        "old_version_after_switch_by_engine_text": old_by_engine,
        "old_version_after_switch_by_header": old_by_header,
        "old_version_examples": examples,
        "switch_to_complete_ms_median": round(gaps[len(gaps) // 2] * 1000, 1) if gaps else None,
        "hung_clients": hung,
        "max_request_seconds": round(max((o.finished - o.started for o in outcomes), default=0), 3),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "note": "shared with other engineers' builds and tests while it ran",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--plain", type=int, default=2)
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "reports" / "soak.json")
    args = parser.parse_args()
    report = soak(args.switches, args.streams, args.plain, args.request_timeout)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
