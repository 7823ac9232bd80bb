"""`turnout demo --exit` end to end on the tiny-llama path (the SmolLM2 path is too slow for CI):
a real server, version 1 live, version 2 rolled out under load, and a summary with 0 failed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from turnout.demo.load import Outcome, summarize

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_demo_rolls_out_version_2_under_load_without_failures(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    env = {**os.environ, "TURNOUT_DEMO_EXIT": "1", "COLUMNS": "200"}
    env.pop("TURNOUT_DATA_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "turnout.cli.main", "demo", "--arch", "tiny-llama"]
        + ["--data-dir", str(data_dir), "--settle", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "failed requests: 0" in out
    served = re.search(r"requests served per version: version 1: (\d+), version 2: (\d+)", out)
    assert served and int(served[1]) > 0 and int(served[2]) > 0, out[-2000:]
    assert "(version 1)" in out and "(version 2)" in out
    assert "alias production moved to orgs/demo/models/tiny-llama/versions/2" in out
    assert "turnout chat demo-tiny" in out
    # Both versions are cached for the next run, which then skips building them.
    assert sorted(p.name for p in (data_dir / "models" / "tiny-llama").iterdir()) == ["v1", "v2"]


def test_demo_rejects_an_architecture_it_cannot_build(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "turnout.cli.main", "demo", "--arch", "llama3.1-8b"]
        + ["--data-dir", str(tmp_path), "--exit"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "llama3.1-8b" in result.stdout + result.stderr


def test_summary_counts_versions_failures_and_phases() -> None:
    outcomes = [
        Outcome(started=1, finished=2, version=1, streamed=False, error=None),
        Outcome(started=9, finished=12, version=1, streamed=True, error=None),
        Outcome(started=11, finished=13, version=2, streamed=False, error=None),
        Outcome(started=21, finished=22, version=2, streamed=True, error=None),
        Outcome(started=23, finished=24, version=None, streamed=False, error="boom"),
    ]
    summary = summarize(outcomes, submitted=10, complete=20)
    assert summary.served == {1: 2, 2: 2}
    assert summary.failed == 1 and summary.errors == ["boom"]
    assert summary.switch_s == 10
    assert {phase: n for phase, (n, _, _) in summary.latency.items()} == {
        "before": 1,
        "during": 2,
        "after": 1,
    }
