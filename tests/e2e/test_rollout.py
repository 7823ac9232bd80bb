"""Zero-downtime rollouts through real processes: `turnout serve`, built-in engine replicas of
two tiny-model versions, and clients using the official `openai` and Cerebras packages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import Deployed, make_deployed
from turnout.demo.load import ClientLoop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModelFactory
) -> Iterator[Deployed]:
    env = make_deployed(tmp_path_factory.mktemp("rollout"), tiny_model)
    try:
        first = env.deploy("v1")
        assert env.wait_done(first)["response"]["rollout_status"] == "complete"
        yield env
    finally:
        env.server.stop()


@dataclass
class Outcome:
    started: float
    finished: float
    version: int | None
    fingerprint: str | None
    error: str | None
    streamed: bool


class Load(ClientLoop):
    """Clients calling the endpoint without pause, some streaming, until stopped."""

    def __init__(self, env: Deployed, streaming: int = 1, plain: int = 2) -> None:
        super().__init__(threads=streaming + plain, join_timeout=60)
        self.env = env
        self.streaming = streaming
        self.outcomes: list[Outcome] = []

    def run(self, index: int) -> None:
        stream = index < self.streaming
        client = openai.OpenAI(
            base_url=self.env.server.url + "/v1", api_key=self.env.inference_key, max_retries=0
        )
        while not self.stopping.is_set():
            started = time.time()
            try:
                version, fingerprint = self._call(client, stream)
                error = None
            except Exception as exc:  # every failure is an outcome the test asserts on
                version, fingerprint, error = None, None, f"{type(exc).__name__}: {exc}"
            self.outcomes.append(Outcome(started, time.time(), version, fingerprint, error, stream))

    def _call(self, client: openai.OpenAI, stream: bool) -> tuple[int, str]:
        messages = [{"role": "user", "content": "Tell me about trains."}]
        raw = client.chat.completions.with_raw_response.create(
            model=self.env.endpoint,
            messages=messages,
            max_tokens=12,
            stream=stream,  # type: ignore[arg-type]
        )
        version = int(raw.headers["x-turnout-version"])
        if not stream:
            completion = raw.parse()
            assert completion.model == self.env.endpoint
            assert completion.choices[0].finish_reason in ("stop", "length")
            return version, str(completion.system_fingerprint)
        finish, fingerprint = None, None
        for chunk in raw.parse():
            assert chunk.model == self.env.endpoint
            fingerprint = chunk.system_fingerprint
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        if finish is None:
            raise AssertionError("stream ended without a finish_reason: truncated")
        return version, str(fingerprint)


def test_zero_failed_requests_across_repeated_switches(deployed: Deployed) -> None:
    switches: list[tuple[str, float, float]] = []  # (label, submitted, complete)
    with Load(deployed) as load:
        time.sleep(2)
        for label in ("v2", "v1", "v2"):
            submitted = time.time()
            deployment_id = deployed.deploy(label)
            done = deployed.wait_done(deployment_id)
            assert done["response"]["rollout_status"] == "complete", done
            complete_at = max(e["at"] for e in done["response"]["events"])
            switches.append((label, submitted, complete_at))
            time.sleep(3)
    outcomes = load.outcomes
    assert outcomes and all(o.error is None for o in outcomes), [
        o.error for o in outcomes if o.error
    ][:5]
    assert any(o.streamed for o in outcomes)
    labels = ["v1"] + [label for label, _, _ in switches]
    for i, (label, submitted, complete_at) in enumerate(switches):
        previous = labels[i]
        window_end = switches[i + 1][1] if i + 1 < len(switches) else float("inf")
        after = [o for o in outcomes if complete_at < o.started < window_end]
        before = [
            o
            for o in outcomes
            if o.finished < submitted and (i == 0 or o.started > switches[i - 1][2])
        ]
        assert after, f"no request ran after switch {i} completed"
        assert {o.version for o in after} == {deployed.version_id(label)}
        assert {o.fingerprint for o in after} == {deployed.fingerprint(label)}
        assert before and {o.version for o in before} == {deployed.version_id(previous)}


def test_cerebras_sdk_calls_the_endpoint(deployed: Deployed) -> None:
    from cerebras.cloud.sdk import Cerebras

    client = Cerebras(
        base_url=deployed.server.url, api_key=deployed.inference_key, warm_tcp_connection=False
    )
    messages = [{"role": "user", "content": "Hello!"}]
    reply = client.chat.completions.create(model=deployed.endpoint, messages=messages, max_tokens=8)
    assert reply.model == deployed.endpoint and reply.usage.completion_tokens >= 1  # type: ignore[union-attr]
    assert reply.system_fingerprint.startswith("fp_")  # type: ignore[union-attr]
    chunks = list(
        client.chat.completions.create(
            model=deployed.endpoint, messages=messages, max_tokens=8, stream=True
        )
    )
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")  # type: ignore[union-attr]


def test_gateway_errors(deployed: Deployed) -> None:
    client = openai.OpenAI(
        base_url=deployed.server.url + "/v1", api_key=deployed.inference_key, max_retries=0
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-endpoint", messages=[{"role": "user", "content": "x"}]
        )
    bad = openai.OpenAI(base_url=deployed.server.url + "/v1", api_key="tik_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(
            model=deployed.endpoint, messages=[{"role": "user", "content": "x"}]
        )
    assert [m.id for m in client.models.list()] == [deployed.endpoint]
