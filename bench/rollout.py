"""Control-plane overhead of a rollout: rollout time minus the time the replicas took to load.

Starts `turnout serve` on 127.0.0.1 with two tiny-model versions and switches between them a few
times with no load; from each deployment's events: total = submitted → done, load = starting →
"all new replicas ready and warmed up", overhead = total − load. Target (DESIGN §5): ≤ 1 s.
Writes bench/reports/rollout.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.rollout_env import make_deployed  # noqa: E402

from turnout.registry.tinymodel import write_tiny_model  # noqa: E402


def main(switches: int = 4) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def tiny(seed: int = 0, arch_id: str = "tiny-llama") -> Path:
            out = root / f"src-{seed}"
            if not out.exists():
                write_tiny_model(out, arch_id=arch_id, seed=seed)
            return out

        env = make_deployed(root / "run", tiny, {"TURNOUT_DRAIN_TIMEOUT": "5"})
        rows = []
        try:
            for i in range(switches):
                done = env.wait_done(env.deploy("v1" if i % 2 == 0 else "v2"))
                events = done["response"]["events"]
                submitted = events[0]["at"]
                started = next(e["at"] for e in events if e["step"] == "starting")
                ready = next(e["at"] for e in events if e["message"].startswith("all new replicas"))
                finished = events[-1]["at"]
                rows.append(
                    {
                        "total_s": finished - submitted,
                        "replica_load_s": ready - started,
                        "overhead_s": (finished - submitted) - (ready - started),
                    }
                )
        finally:
            env.server.stop()
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "switches": rows,
        "median_overhead_s": statistics.median(r["overhead_s"] for r in rows),
        "target_overhead_s": 1.0,
    }
    out = ROOT / "bench" / "reports" / "rollout.json"
    out.write_text(json.dumps(report, indent=2))
    for r in rows:
        total, load, overhead = r["total_s"], r["replica_load_s"], r["overhead_s"]
        print(f"total {total:.2f}s  load {load:.2f}s  overhead {overhead:.2f}s")
    print(f"median control-plane overhead: {report['median_overhead_s']:.2f}s (target <= 1 s)")


if __name__ == "__main__":
    main()
