"""Progressive rollouts through real processes and real load: canary steps that split traffic by
weight (and by session), gates that roll a bad version back by themselves, golden prompts that
keep a wrong one from any traffic, steering, in-place swaps and endpoints that follow an alias.

A good version runs the built-in engine; bad versions run a test-double engine whose behaviour
comes with its weights (tests/e2e/behaving_engine.py): a real model cannot be made to fail a
third of its requests on cue.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import Deployed, make_deployed, wait_until
from turnout.demo.load import ClientLoop

pytestmark = pytest.mark.slow

BEHAVING = "acme-behaving"
ENGINE = {
    "behaving": {
        "argv": [
            "{python}", str(Path(__file__).with_name("behaving_engine.py")),
            "--model-dir", "{model_dir}", "--host", "{host}", "--port", "{port}",
            "--served-name", "{served_name}",
        ],
        "ready_path": "/health",
        "reload_path": "/update_weights_from_disk",
    }
}  # fmt: skip
BEHAVIOURS = {
    "good": {"answer": "4", "first_delay": 0.01, "token_delay": 0.005},
    "good2": {"answer": "4", "first_delay": 0.01, "token_delay": 0.005, "tokens": 9},
    "errors": {"answer": "4", "error_every": 3, "first_delay": 0.01, "token_delay": 0.005},
    "slow": {"answer": "4", "first_delay": 0.15, "token_delay": 0.05},
    "wrong": {"answer": "five"},
}
GOLDEN = [{"messages": [{"role": "user", "content": "2+2?"}], "expect_regex": r"\b4\b"}]


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModelFactory
) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("canary")
    templates = root / "engines.json"
    templates.write_text(json.dumps(ENGINE))
    deployed = make_deployed(root, tiny_model, {"TURNOUT_ENGINE_TEMPLATES": str(templates)})
    deployed.server.cli(
        "admin", "endpoint", "create", BEHAVING, "--org", "acme", "--arch", "tiny-llama",
        "--engine", "behaving", "--replicas", "2",
    )  # fmt: skip
    for label, behaviour in BEHAVIOURS.items():
        folder = root / "weights-in" / label
        shutil.copytree(tiny_model(seed=1), folder)
        config = json.loads((folder / "config.json").read_text())
        config["turnout_test"] = behaviour
        (folder / "config.json").write_text(json.dumps(config))
        deployed.upload(label, folder)
    try:
        for endpoint, label in ((deployed.endpoint, "v1"), (BEHAVING, "good")):
            assert deploy(deployed, endpoint, label)["response"]["rollout_status"] == "complete"
        yield deployed
    finally:
        deployed.server.stop()


def deploy(
    env: Deployed, endpoint: str, label: str, rollout: dict[str, Any] | None = None
) -> dict[str, Any]:
    with env.client() as client:
        operation = client.deploy(endpoint, env.versions[label]["name"], rollout=rollout)
        return client.wait_deployment(operation, timeout=300, interval=0.2)


@dataclass
class Answer:
    started: float
    version: int | None
    session: str
    error: str | None


@dataclass
class Load(ClientLoop):
    """Clients in a loop through the gateway; each thread is a few sessions, taken in turn."""

    env: Deployed
    endpoint: str
    sessions: int = 0  # 0: no session header
    threads: int = field(default=3, kw_only=True)
    stream: bool = True
    answers: list[Answer] = field(default_factory=list)

    def run(self, index: int) -> None:
        mine = [f"s{n}" for n in range(index, self.sessions, self.threads)] or [""]
        auth = {"Authorization": f"Bearer {self.env.inference_key}"}
        body = {"model": self.endpoint, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8, "stream": self.stream}  # fmt: skip
        with httpx.Client(base_url=self.env.server.url, timeout=60) as http:
            turn = 0
            while not self.stopping.is_set():
                session = mine[turn % len(mine)]
                turn += 1
                headers = {**auth, "x-session-id": session} if session else auth
                started = time.time()
                try:
                    resp = http.post("/v1/chat/completions", json=body, headers=headers)
                    text = resp.text
                    if resp.status_code != 200 or (self.stream and "data: [DONE]" not in text):
                        raise RuntimeError(f"{resp.status_code}: {text[-200:]}")
                    version, error = int(resp.headers["x-turnout-version"]), None
                except (httpx.HTTPError, RuntimeError) as exc:
                    version, error = None, repr(exc)
                self.answers.append(Answer(started, version, session, error))


def step_windows(done: dict[str, Any]) -> list[tuple[int, float, float]]:
    """(traffic %, start, end) of each canary step, from the deployment's events."""
    events = done["response"]["events"]
    starts = [(e["at"], e["message"]) for e in events if e["step"] == "canary"]
    ends = [e["at"] for e in events if e["step"] in ("switched", "failed", "cancelled")]
    windows = []
    for i, (at, message) in enumerate(starts):
        share = int(message.split(": ", 1)[1].split("%", 1)[0])
        end = starts[i + 1][0] if i + 1 < len(starts) else ends[0]
        windows.append((share, at, end))
    return windows


@pytest.mark.timeout(300)
def test_a_good_canary_splits_by_weight_and_completes(env: Deployed) -> None:
    rollout = {
        "strategy": "canary",
        "steps": [{"traffic_percent": 10, "hold_seconds": 8},
                  {"traffic_percent": 50, "hold_seconds": 8}],
        "gates": {"min_requests": 5, "max_error_rate": 0.05, "golden_prompts": []},
    }  # fmt: skip
    with Load(env, env.endpoint, stream=False) as load:
        done = deploy(env, env.endpoint, "v2", rollout)
        time.sleep(1)
    assert done["response"]["rollout_status"] == "complete", done
    assert not [a.error for a in load.answers if a.error]
    v2 = env.version_id("v2")
    for share, start, end in step_windows(done):
        # Requests that started and ended inside the step (1 s margin for the table's move).
        inside = [a for a in load.answers if start + 1 < a.started < end - 0.5]
        assert len(inside) > 20, (share, len(inside))
        measured = 100 * sum(a.version == v2 for a in inside) / len(inside)
        assert abs(measured - share) <= 12, (share, measured, len(inside))
    gates = {g["name"]: g["verdict"] for g in done["response"]["gates"]}
    assert gates == {"min_requests": "pass", "max_error_rate": "pass"}
    assert done["response"]["traffic_percent"] == 100


def serving_version(env: Deployed, endpoint: str) -> int:
    with env.client() as client:
        (serving,) = [m for m in client.endpoint(endpoint)["deployed_models"] if m["serving"]]
    return int(serving["model"].rsplit("/", 1)[1])


@pytest.mark.timeout(300)
def test_sticky_sessions_change_version_at_most_once(env: Deployed) -> None:
    old = serving_version(env, BEHAVING)
    new = "good2" if old == env.version_id("good") else "good"
    rollout = {
        "strategy": "canary",
        "steps": [{"traffic_percent": 20, "hold_seconds": 5},
                  {"traffic_percent": 60, "hold_seconds": 5}],
        "sticky": "header:x-session-id",
        "gates": {"min_requests": 5, "max_error_rate": 0.05},
    }  # fmt: skip
    with Load(env, BEHAVING, sessions=40, threads=4) as load:
        done = deploy(env, BEHAVING, new, rollout)
    assert done["response"]["rollout_status"] == "complete", done
    assert not [a.error for a in load.answers if a.error]
    by_session: dict[str, list[Answer]] = {}
    for answer in sorted(load.answers, key=lambda a: a.started):
        by_session.setdefault(answer.session, []).append(answer)
    assert len(by_session) == 40
    for session, answers in by_session.items():
        versions = [a.version for a in answers]
        changes = sum(1 for x, y in zip(versions, versions[1:], strict=False) if x != y)
        assert changes <= 1 and (changes == 0 or versions[-1] == env.version_id(new)), (
            session,
            versions,
        )
    # Within one step a session sees one version (1 s margin for the table's move).
    for _, start, end in step_windows(done):
        for session, answers in by_session.items():
            inside = {a.version for a in answers if start + 1 < a.started < end - 0.5}
            assert len(inside) <= 1, (session, inside)
    moved = sum(1 for answers in by_session.values() if answers[-1].version != old)
    assert 0 < moved  # some sessions moved during the canary, the rest at the switch


@pytest.mark.timeout(300)
def test_an_erroring_version_is_rolled_back_by_its_gate(env: Deployed) -> None:
    rollout = {
        "strategy": "canary",
        "steps": [{"traffic_percent": 25, "hold_seconds": 60}],
        "gates": {"min_requests": 12, "max_error_rate": 0.1},
    }  # fmt: skip
    old = serving_version(env, BEHAVING)
    with Load(env, BEHAVING, stream=False) as load:
        done = deploy(env, BEHAVING, "errors", rollout)
        rolled_back = time.time()
        time.sleep(2)
    assert done["response"]["rollout_status"] == "failed"
    assert done["error"]["code"] == "gate_failed"
    assert "error rate" in done["error"]["message"] and "> 0.1 over" in done["error"]["message"]
    bad = env.version_id("errors")
    during = [a for a in load.answers if a.started < rolled_back]
    reached = sum(a.version == bad or a.error is not None for a in during)
    assert reached <= 0.25 * len(during) + 5, (reached, len(during))  # its share of the window
    after = [a for a in load.answers if a.started > rolled_back + 1]
    assert after and {a.version for a in after} == {old}
    assert not [a for a in after if a.error]


@pytest.mark.timeout(300)
def test_a_slow_version_is_rolled_back_by_its_latency_gate(env: Deployed) -> None:
    rollout = {
        "strategy": "canary",
        "steps": [{"traffic_percent": 30, "hold_seconds": 60}],
        "gates": {"min_requests": 8, "max_ttft_p95_ratio": 1.5, "max_tpot_p95_ratio": 1.5},
    }  # fmt: skip
    with Load(env, BEHAVING):
        done = deploy(env, BEHAVING, "slow", rollout)
    assert done["response"]["rollout_status"] == "failed"
    assert done["error"]["code"] == "gate_failed"
    assert "ratio" in done["error"]["message"]


@pytest.mark.timeout(300)
def test_a_version_failing_its_golden_prompt_never_gets_traffic(env: Deployed) -> None:
    rollout = {
        "strategy": "canary",
        "steps": [{"traffic_percent": 50, "hold_seconds": 5}],
        "gates": {"min_requests": 1, "golden_prompts": GOLDEN},
    }  # fmt: skip
    with Load(env, BEHAVING, stream=False) as load:
        done = deploy(env, BEHAVING, "wrong", rollout)
    assert done["response"]["rollout_status"] == "failed"
    assert "golden prompt 1" in done["error"]["message"]
    assert "before any traffic" in done["error"]["message"]
    assert load.answers and env.version_id("wrong") not in {a.version for a in load.answers}
    assert done["response"]["traffic_percent"] == 0


@pytest.mark.timeout(300)
def test_pause_holds_resume_continues_promote_finishes(env: Deployed) -> None:
    rollout = {
        "strategy": "canary",
        "steps": [{"traffic_percent": 20, "hold_seconds": 600},
                  {"traffic_percent": 60, "hold_seconds": 600}],
        "gates": {"min_requests": 1},
    }  # fmt: skip
    with Load(env, BEHAVING, stream=False), env.client() as client:
        operation = client.deploy(BEHAVING, env.versions["good"]["name"], rollout=rollout)
        name = operation["name"]

        def step() -> str | None:
            step_now: str | None = client.deployment(name)["response"].get("step")
            return step_now

        wait_until(step, lambda s: s == "judging", timeout=120)
        paused = client.steer(name, "pause")
        assert paused["response"]["step"] == "paused"
        time.sleep(2)
        held = client.deployment(name)["response"]
        assert held["step"] == "paused" and held["traffic_percent"] == 20
        client.steer(name, "resume")
        wait_until(step, lambda s: s == "judging", timeout=60)
        client.steer(name, "promote")
        done = client.wait_deployment(client.deployment(name), timeout=120)
    assert done["response"]["rollout_status"] == "complete"
    messages = [e["message"] for e in done["response"]["events"]]
    assert "pause requested" in messages and "resume requested" in messages
    assert not [m for m in messages if m.startswith("step 2/2")]  # promoted past it


@pytest.mark.timeout(300)
def test_in_place_on_one_replica_with_no_spare_capacity(
    tmp_path: Path, tiny_model: TinyModelFactory
) -> None:
    single = make_deployed(tmp_path, tiny_model, {"TURNOUT_MAX_REPLICAS": "1"})
    try:
        assert deploy(single, single.endpoint, "v1")["response"]["rollout_status"] == "complete"
        records = single.server.data_dir / "run" / "replicas"
        (before,) = [json.loads(p.read_text())["pid"] for p in records.glob("*.json")]
        with Load(single, single.endpoint, threads=2) as load:
            time.sleep(1)
            done = deploy(single, single.endpoint, "v2", {"strategy": "in_place"})
            time.sleep(2)
        assert done["response"]["rollout_status"] == "complete", done
        assert not [a.error for a in load.answers if a.error]
        (after,) = [json.loads(p.read_text())["pid"] for p in records.glob("*.json")]
        assert after == before  # the same engine process, reloaded
        last = [a for a in load.answers if a.version is not None][-5:]
        assert {a.version for a in last} == {single.version_id("v2")}
    finally:
        single.server.stop()


@pytest.mark.timeout(300)
def test_moving_a_followed_alias_deploys_and_moving_it_back_rolls_back(env: Deployed) -> None:
    with env.api() as api:
        v1, v2 = env.versions["v1"]["name"], env.versions["v2"]["name"]
        api.patch(f"/management/v1/{v2}", json={"version_aliases": []})
        api.patch(f"/management/v1/{v1}", json={"version_aliases": ["production"]})
        followed = api.patch(f"/management/v1/endpoints/{env.endpoint}",
                             json={"follow_alias": "production"})  # fmt: skip
        assert followed.status_code == 200, followed.text

        def newest() -> dict[str, Any]:
            listed: dict[str, Any] = api.get(
                f"/management/v1/endpoints/{env.endpoint}/deployments"
            ).json()["deployments"][0]
            return listed

        # The worker notices the followed alias within a pass or so: until then the newest
        # deployment is an earlier test's.
        serving_v1 = wait_until(
            newest,
            lambda d: d["response"]["version_id"] == env.version_id("v1") and d["done"],
            timeout=120,
        )
        assert serving_v1["response"]["rollout_status"] == "complete"
        api.patch(f"/management/v1/{v1}", json={"version_aliases": []})
        api.patch(f"/management/v1/{v2}", json={"version_aliases": ["production"]})
        moved = wait_until(
            newest,
            lambda d: d["response"]["version_id"] == env.version_id("v2") and d["done"],
            timeout=120,
        )
        assert moved["response"]["rollout_status"] == "complete"
        assert moved["response"]["version_alias"] == "production"
        api.patch(f"/management/v1/{v2}", json={"version_aliases": []})
        api.patch(f"/management/v1/{v1}", json={"version_aliases": ["production"]})
        back = wait_until(
            newest,
            lambda d: d["response"]["version_id"] == env.version_id("v1") and d["done"],
            timeout=120,
        )
        assert back["response"]["rollout_status"] == "complete"
        api.patch(f"/management/v1/endpoints/{env.endpoint}", json={"follow_alias": None})
