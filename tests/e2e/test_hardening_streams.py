"""Zero failures across a rollout whose drain long streams span (issue 13): built-in engine
replicas stream hundreds of tokens while the version switches; every stream ends in
``data: [DONE]``, every request succeeds, and a request that hangs fails the test."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import Deployed, make_deployed, wait_until

pytestmark = pytest.mark.slow

#: Seconds without a byte before a request counts as hung (and fails the test).
HUNG = 30.0


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModelFactory
) -> Iterator[Deployed]:
    deployed = make_deployed(tmp_path_factory.mktemp("streams"), tiny_model)
    try:
        assert deployed.wait_done(deployed.deploy("v1"))["response"]["rollout_status"] == "complete"
        yield deployed
    finally:
        deployed.server.stop()


@dataclass
class Stream:
    started: float
    finished: float
    version: int | None
    chunks: int
    done: bool
    finish_reason: str | None
    error: str | None


def _stream(client: httpx.Client, endpoint: str) -> Stream:
    body = {"model": endpoint, "stream": True, "max_tokens": 400, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}  # fmt: skip
    started = time.time()
    chunks, lines, version, reason, error = 0, [], None, None, None
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                raise AssertionError(f"HTTP {resp.status_code}: {resp.read()!r}")
            version = int(resp.headers["x-turnout-version"])
            for line in resp.iter_lines():
                if not line:
                    continue
                lines.append(line)
                if line.startswith("data: {"):
                    choice = json.loads(line[6:])["choices"][0]
                    chunks += bool(choice["delta"].get("content"))
                    reason = choice.get("finish_reason") or reason
    except (httpx.HTTPError, AssertionError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    done = lines[-1:] == ["data: [DONE]"]
    return Stream(started, time.time(), version, chunks, done, reason, error)


def test_long_streams_span_the_drain_without_a_failure(env: Deployed) -> None:
    streams: list[Stream] = []
    stopping = threading.Event()

    def client_loop() -> None:
        timeout = httpx.Timeout(HUNG, connect=10)
        auth = {"Authorization": f"Bearer {env.inference_key}"}
        with httpx.Client(base_url=env.server.url, headers=auth, timeout=timeout) as client:
            while not stopping.is_set():
                streams.append(_stream(client, env.endpoint))

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    done = env.wait_done(env.deploy("v2"), timeout=300)
    ended = max(e["at"] for e in done["response"]["events"])
    # Streams are long: wait for one that began after the rollout ended to finish too.
    wait_until(lambda: [s for s in streams if s.started > ended], bool, timeout=HUNG * 2)
    stopping.set()
    for thread in threads:
        thread.join(timeout=HUNG + 30)
    assert not any(t.is_alive() for t in threads), "a stream hung"
    assert done["response"]["rollout_status"] == "complete", done
    events = done["response"]["events"]
    switched = min(e["at"] for e in events if e["step"] == "switched")
    draining = [e["at"] for e in events if e["step"] == "draining"]
    assert draining, events
    failures = [s.error for s in streams if s.error]
    assert not failures, failures[:5]
    assert all(s.done and s.finish_reason in ("stop", "length") for s in streams), [
        s for s in streams if not s.done
    ][:3]
    # Streams that ran on the old version across the switch and into the drain, long ones.
    spanning = [s for s in streams if s.started < switched and s.finished > draining[0]]
    assert spanning and all(s.version == env.version_id("v1") for s in spanning)
    assert max(s.chunks for s in spanning) >= 100, [s.chunks for s in spanning]
    after = [s for s in streams if s.started > max(e["at"] for e in events)]
    assert after and {s.version for s in after} == {env.version_id("v2")}
