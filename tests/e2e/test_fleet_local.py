"""Local placement on a GPU machine (faked with TURNOUT_GPUS): every replica gets its own GPUs,
a rollout surges when the new set fits next to the old one and rolls one replica at a time when
it does not, with no failed request either way."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import Deployed, make_deployed
from tests.e2e.test_rollout import Load

pytestmark = pytest.mark.slow


def replicas(env: Deployed) -> list[dict[str, Any]]:
    listed = env.server.cli("admin", "replica", "list", "--endpoint", env.endpoint, "--json")
    found: list[dict[str, Any]] = json.loads(listed.stdout)["replicas"]
    return found


def visible_devices(env: Deployed) -> dict[str, str]:
    """Each live replica's CUDA_VISIBLE_DEVICES, read from its engine process's environment."""
    found = {}
    for record in (env.server.data_dir / "run" / "replicas").glob("*.json"):
        rec = json.loads(record.read_text())
        environ = Path(f"/proc/{rec['pid']}/environ").read_bytes().split(b"\0")
        pairs = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        found[rec["replica_id"]] = pairs.get("CUDA_VISIBLE_DEVICES", "")
    return found


def roll_under_load(env: Deployed, label: str) -> dict[str, Any]:
    with Load(env, streaming=1, plain=2) as load:
        time.sleep(1)
        done = env.wait_done(env.deploy(label), timeout=300)
        time.sleep(2)
    assert done["response"]["rollout_status"] == "complete", done
    errors = [o.error for o in load.outcomes if o.error]
    assert not errors, errors[:5]
    assert len(load.outcomes) > 10
    return done


@pytest.mark.timeout(500)
@pytest.mark.parametrize(
    ("gpus", "strategy"), [("0,1,2,3", "surge"), ("0,1", "rolling")], ids=["4-gpus", "2-gpus"]
)
def test_gpus_per_replica_decide_surge_or_rolling(
    tmp_path: Path, tiny_model: TinyModelFactory, gpus: str, strategy: str
) -> None:
    env = make_deployed(
        tmp_path,
        tiny_model,
        {"TURNOUT_GPUS": gpus},
        replicas=2,
        endpoint_args=("--gpus-per-replica", "1"),
    )
    try:
        assert env.wait_done(env.deploy("v1"))["response"]["rollout_status"] == "complete"
        first = replicas(env)
        assert sorted(len(r["gpus"]) for r in first) == [1, 1]
        assert len({g for r in first for g in r["gpus"]}) == 2  # distinct devices
        assert {r["node"] for r in first} == {"local"} and {r["state"] for r in first} == {"ready"}
        devices = visible_devices(env)
        assert sorted(devices.values()) == sorted(str(r["gpus"][0]) for r in first)
        done = roll_under_load(env, "v2")
        steps = [e["step"] for e in done["response"]["events"]]
        messages = " ".join(e["message"] for e in done["response"]["events"])
        assert (strategy == "rolling") == ("rolling" in steps)
        assert f"{strategy}:" in messages
        after = replicas(env)
        assert {r["version_id"] for r in after} == {env.version_id("v2")}
        used = [g for r in after for g in r["gpus"]]
        assert len(used) == len(set(used)) == 2
        assert set(used) <= {int(g) for g in gpus.split(",")}
    finally:
        env.server.stop()
