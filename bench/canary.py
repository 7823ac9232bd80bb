"""What a progressive rollout buys, measured through real processes under real load.

1. **A bad version** (every 3rd request answers 500; tests/e2e/behaving_engine.py, its behaviour
   in the version's config.json) deployed under continuous load (client threads in a loop through
   the gateway, whole answers) onto an endpoint that serves a good version:

   - *canary*: one step at 5 % (held 60 s), gates ``min_requests`` and ``max_error_rate``. The
     gate rolls it back by itself. Exposure window: the event that gave it 5 % (its first traffic)
     to the event that failed the deployment (the rollback; traffic goes back to 0 % right after).
   - *surge* (the published body): 100 % get it at the switch and nothing rolls it back. We keep
     the load on for the canary's own window (same repeat), then roll back by hand
     (``:rollback``, what an operator would do) and count (a) requests that reached it within
     the canary's window after the switch, and (b) all requests that reached it until the
     rollback's switch, which adds the manual rollback's own time.

   "Reached" = answered with ``x-turnout-version`` of the bad version, whether 200 or 500.

2. **In place vs surge** on the built-in engine (tiny random-weight model), light load: rollout
   time (submitted → complete, from the deployment's events) and peak replicas (live engine
   processes recorded under the data dir's run/replicas/*.json, sampled every 50 ms).

Each repeats ``--repeats`` times; the report gives every run and the medians. Writes
bench/reports/canary.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import reap_replicas  # noqa: E402
from tests.e2e.rollout_env import Deployed, make_deployed  # noqa: E402

from turnout.demo.load import ClientLoop  # noqa: E402
from turnout.placement import process  # noqa: E402
from turnout.registry.tinymodel import write_tiny_model  # noqa: E402

BEHAVING = "acme-behaving"
ENGINE = {
    "behaving": {
        "argv": [
            "{python}", str(ROOT / "tests" / "e2e" / "behaving_engine.py"),
            "--model-dir", "{model_dir}", "--host", "{host}", "--port", "{port}",
            "--served-name", "{served_name}",
        ],
        "ready_path": "/health",
        "reload_path": "/update_weights_from_disk",
    }
}  # fmt: skip
BEHAVIOURS = {
    "good": {"answer": "4", "first_delay": 0.01, "token_delay": 0.005},
    "bad": {"answer": "4", "error_every": 3, "first_delay": 0.01, "token_delay": 0.005},
}
CANARY_SHARE = 5
GATES = {"min_requests": 20, "max_error_rate": 0.02}
CANARY_POLICY = {
    "strategy": "canary",
    "steps": [{"traffic_percent": CANARY_SHARE, "hold_seconds": 60}],
    "gates": GATES,
}
BAD_LOAD_THREADS = 4
SWAP_LOAD_THREADS = 2


# -- load ------------------------------------------------------------------------------------


@dataclass
class Answer:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer
    version: int | None  # x-turnout-version, also on error answers


@dataclass
class Load(ClientLoop):
    """Client threads in a loop through the gateway, one chat completion after another."""

    url: str
    key: str
    endpoint: str
    answers: list[Answer] = field(default_factory=list)

    def run(self, index: int) -> None:
        body = {"model": self.endpoint, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8}  # fmt: skip
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, timeout=60, trust_env=False) as http:
            while not self.stopping.is_set():
                started = time.time()
                try:
                    resp = http.post("/v1/chat/completions", json=body, headers=headers)
                    version = resp.headers.get("x-turnout-version")
                    status: int | None = resp.status_code
                    served = int(version) if version and version.isdigit() else None
                except httpx.HTTPError:
                    status, served = None, None
                self.answers.append(Answer(started, time.time(), status, served))

    def between(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.started < end]


# -- live replicas ---------------------------------------------------------------------------


@contextmanager
def replica_sampler(data_dir: Path, every: float = 0.05) -> Iterator[list[int]]:
    """Counts of live engine processes (pid files whose process runs), sampled meanwhile."""
    records = data_dir / "run" / "replicas"
    samples: list[int] = []
    stopping = threading.Event()

    def count() -> int:
        live = 0
        for path in records.glob("*.json"):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being rewritten or removed
            live += process.is_alive(rec["pid"], rec.get("start_ticks"))
        return live

    def sample() -> None:
        while not stopping.is_set():
            samples.append(count())
            time.sleep(every)

    worker = threading.Thread(target=sample, daemon=True)
    worker.start()
    try:
        yield samples
    finally:
        stopping.set()
        worker.join(timeout=10)


# -- deployments -----------------------------------------------------------------------------


def deploy(env: Deployed, endpoint: str, label: str, rollout: dict[str, Any] | None) -> Any:
    with env.client() as client:
        operation = client.deploy(endpoint, env.versions[label]["name"], rollout=rollout)
        return client.wait_deployment(operation, timeout=600, interval=0.2)


def rollback(env: Deployed, endpoint: str) -> Any:
    with env.client() as client:
        return client.wait_deployment(client.rollback(endpoint), timeout=600, interval=0.2)


def event_at(done: dict[str, Any], step: str, first: bool = True) -> float:
    times = [e["at"] for e in done["response"]["events"] if e["step"] == step]
    if not times:
        raise RuntimeError(f"no {step!r} event in {done['response']['events']}")
    return float(times[0] if first else times[-1])


def stats(answers: list[Answer], bad: int) -> dict[str, int]:
    return {
        "requests": len(answers),
        "reached_bad": sum(a.version == bad for a in answers),
        "errors_seen_by_clients": sum(a.status != 200 for a in answers),
    }


# -- 1. a bad version: canary vs surge ---------------------------------------------------------


def bad_version_runs(root: Path, repeats: int) -> list[dict[str, Any]]:
    root.mkdir(parents=True)
    templates = root / "engines.json"
    templates.write_text(json.dumps(ENGINE))
    env = make_deployed(root, tiny_factory(root), {"TURNOUT_ENGINE_TEMPLATES": str(templates)})
    runs = []
    try:
        env.server.cli(
            "admin", "endpoint", "create", BEHAVING, "--org", "acme", "--arch", "tiny-llama",
            "--engine", "behaving",
        )  # fmt: skip
        for label, behaviour in BEHAVIOURS.items():
            folder = root / "weights-in" / label
            shutil.copytree(root / "weights-in" / "seed1", folder)
            config = json.loads((folder / "config.json").read_text())
            config["turnout_test"] = behaviour
            (folder / "config.json").write_text(json.dumps(config))
            env.upload(label, folder)
        assert deploy(env, BEHAVING, "good", None)["response"]["rollout_status"] == "complete"
        bad = env.version_id("bad")
        for n in range(repeats):
            canary = canary_run(env, bad)
            surge = surge_run(env, bad, canary["window_s"])
            runs.append({"canary": canary, "surge": surge})
            print(f"run {n + 1}: canary {canary}\n        surge {surge}", flush=True)
    finally:
        env.server.stop()
    return runs


def canary_run(env: Deployed, bad: int) -> dict[str, Any]:
    load = Load(env.server.url, env.inference_key, BEHAVING, threads=BAD_LOAD_THREADS)
    with load:
        time.sleep(1)
        done = deploy(env, BEHAVING, "bad", CANARY_POLICY)
        time.sleep(1)
    if done["response"]["rollout_status"] != "failed" or done["error"]["code"] != "gate_failed":
        raise RuntimeError(f"the gate did not roll the bad version back: {done}")
    first_traffic, rolled_back = event_at(done, "canary"), event_at(done, "failed")
    reached = [a for a in load.answers if a.version == bad]
    window = load.between(first_traffic, rolled_back)
    return {
        "window_s": rolled_back - first_traffic,
        "reached_bad": len(reached),
        "requests_in_window": len(window),
        "share_reached_pct": 100 * sum(a.version == bad for a in window) / max(1, len(window)),
        "errors_seen_by_clients": sum(a.status != 200 for a in load.answers),
        "client_first_to_last_bad_s": (reached[-1].ended - reached[0].started) if reached else 0,
        "load_rps": len(window) / max(1e-9, rolled_back - first_traffic),
        "gate_message": done["error"]["message"],
    }


def surge_run(env: Deployed, bad: int, window_s: float) -> dict[str, Any]:
    load = Load(env.server.url, env.inference_key, BEHAVING, threads=BAD_LOAD_THREADS)
    with load:
        time.sleep(1)
        done = deploy(env, BEHAVING, "bad", None)
        if done["response"]["rollout_status"] != "complete":
            raise RuntimeError(f"the surge of the bad version did not complete: {done}")
        switched = event_at(done, "switched")
        time.sleep(max(0.0, switched + window_s - time.time()))
        manual = time.time()
        back = rollback(env, BEHAVING)
        time.sleep(1)
    if back["response"]["rollout_status"] != "complete":
        raise RuntimeError(f"the manual rollback did not complete: {back}")
    restored = event_at(back, "switched")
    in_window = load.between(switched, switched + window_s)
    return {
        "window_s": window_s,
        "reached_bad_in_window": sum(a.version == bad for a in in_window),
        "requests_in_window": len(in_window),
        "errors_in_window": sum(a.status != 200 for a in in_window),
        "rollback_submitted_after_s": manual - switched,
        "exposure_until_rollback_switch_s": restored - switched,
        "reached_bad_until_rollback": sum(a.version == bad for a in load.answers),
        "errors_seen_by_clients": sum(a.status != 200 for a in load.answers),
        "load_rps": len(in_window) / max(1e-9, window_s),
    }


# -- 2. in place vs surge ----------------------------------------------------------------------


def swap_runs(root: Path, repeats: int, replicas: int) -> list[dict[str, Any]]:
    root.mkdir(parents=True)
    env = make_deployed(root, tiny_factory(root), replicas=replicas)
    runs = []
    try:
        assert deploy(env, env.endpoint, "v1", None)["response"]["rollout_status"] == "complete"
        target = "v2"
        for n in range(repeats):
            run = {}
            for strategy in ("surge", "in_place"):
                run[strategy] = swap_run(env, target, strategy)
                target = "v1" if target == "v2" else "v2"
            runs.append(run)
            print(f"run {n + 1}: {run}", flush=True)
    finally:
        env.server.stop()
    return runs


def swap_run(env: Deployed, target: str, strategy: str) -> dict[str, Any]:
    load = Load(env.server.url, env.inference_key, env.endpoint, threads=SWAP_LOAD_THREADS)
    with load, replica_sampler(env.server.data_dir) as samples:
        time.sleep(0.5)
        before = samples[-1]
        submitted = time.time()
        done = deploy(env, env.endpoint, target, {"strategy": strategy})
        waited = time.time() - submitted
        time.sleep(0.5)
    if done["response"]["rollout_status"] != "complete":
        raise RuntimeError(f"{strategy} did not complete: {done}")
    events = done["response"]["events"]
    return {
        "rollout_s": events[-1]["at"] - events[0]["at"],
        "client_wait_s": waited,
        "replicas_before": before,
        "peak_replicas": max(samples),
        "replicas_after": samples[-1],
        "requests": len(load.answers),
        "failed_requests": sum(a.status != 200 for a in load.answers),
    }


# -- report ------------------------------------------------------------------------------------


def tiny_factory(root: Path) -> Any:
    def tiny(seed: int = 0, arch_id: str = "tiny-llama") -> Path:
        out = root / f"tiny-{arch_id}-{seed}"
        if not out.exists():
            write_tiny_model(out, arch_id=arch_id, seed=seed)
        return out

    return tiny


def median(runs: list[dict[str, Any]], part: str, key: str) -> float:
    return float(statistics.median(run[part][key] for run in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2, help="replicas of the swap endpoint")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            bad = bad_version_runs(root / "bad", args.repeats)
            swaps = swap_runs(root / "swap", args.repeats, args.replicas)
        finally:
            reap_replicas(root)  # replicas outlive their server by design
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "note": "2 CPU cores shared with other engineers' builds and tests while this ran",
            "loadavg_1m_before_after": [load_before[0], os.getloadavg()[0]],
        },
        "bad_version": {
            "setup": {
                "endpoint": "1 replica, test-double engine (tests/e2e/behaving_engine.py)",
                "bad_version": "answers 500 to every 3rd request",
                "load": f"{BAD_LOAD_THREADS} client threads, whole answers of 8 tokens",
                "canary_policy": CANARY_POLICY,
                "surge": "published body; rolled back by hand (:rollback) once the canary's "
                "window (same repeat) had passed since the switch",
                "reached": "answered with the bad version's x-turnout-version (200 or 500)",
            },
            "runs": bad,
            "median": {
                "canary_reached_bad": median(bad, "canary", "reached_bad"),
                "canary_first_traffic_to_rollback_s": median(bad, "canary", "window_s"),
                "canary_errors_seen_by_clients": median(bad, "canary", "errors_seen_by_clients"),
                "surge_reached_bad_in_same_window": median(bad, "surge", "reached_bad_in_window"),
                "surge_reached_bad_until_manual_rollback": median(
                    bad, "surge", "reached_bad_until_rollback"
                ),
                "surge_exposure_until_rollback_switch_s": median(
                    bad, "surge", "exposure_until_rollback_switch_s"
                ),
                "surge_errors_seen_by_clients": median(bad, "surge", "errors_seen_by_clients"),
                "load_rps": median(bad, "canary", "load_rps"),
            },
        },
        "in_place_vs_surge": {
            "setup": {
                "endpoint": f"{args.replicas} replica(s), built-in engine, tiny random model",
                "load": f"{SWAP_LOAD_THREADS} client threads, whole answers of 8 tokens",
                "rollout_s": "deployment events: submitted -> complete (old replicas stopped)",
                "peak_replicas": "live engine processes from run/replicas/*.json, every 50 ms",
            },
            "runs": swaps,
            "median": {
                f"{strategy}_{key}": median(swaps, strategy, key)
                for strategy in ("surge", "in_place")
                for key in ("rollout_s", "peak_replicas", "failed_requests")
            },
        },
    }
    out = ROOT / "bench" / "reports" / "canary.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report, args.repeats)


def print_table(report: dict[str, Any], repeats: int) -> None:
    bad, swap = report["bad_version"]["median"], report["in_place_vs_surge"]["median"]
    print(f"\nmedians of {repeats} runs; {report['machine']['note']}")
    print(f"bad version (500 on every 3rd request), load {bad['load_rps']:.0f} req/s")
    print(f"{'':34}{'reached bad':>12}{'seconds':>9}{'client errors':>15}")
    rows = [
        ("canary 5% (gate rollback)", "canary_reached_bad",
         "canary_first_traffic_to_rollback_s", "canary_errors_seen_by_clients"),
        ("surge, same window", "surge_reached_bad_in_same_window",
         "canary_first_traffic_to_rollback_s", None),
        ("surge, until manual rollback", "surge_reached_bad_until_manual_rollback",
         "surge_exposure_until_rollback_switch_s", "surge_errors_seen_by_clients"),
    ]  # fmt: skip
    for name, reached, seconds, errors in rows:
        shown = "" if errors is None else f"{bad[errors]:.0f}"
        print(f"{name:34}{bad[reached]:12.0f}{bad[seconds]:9.1f}{shown:>15}")
    print(f"\n{'':12}{'rollout s':>10}{'peak replicas':>15}{'failed':>8}")
    for strategy in ("surge", "in_place"):
        print(
            f"{strategy:12}{swap[f'{strategy}_rollout_s']:10.2f}"
            f"{swap[f'{strategy}_peak_replicas']:15.0f}{swap[f'{strategy}_failed_requests']:8.0f}"
        )


if __name__ == "__main__":
    main()
