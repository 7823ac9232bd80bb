"""The gateway through the clients people use: ``openai`` and the Cerebras SDK."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from cerebras.cloud.sdk import Cerebras

from conftest import KEY_A, FakeReplica, GatewayServer, route, table

Replicas = Callable[[str], FakeReplica]
Gateway = Callable[..., GatewayServer]


@pytest.fixture
def gw(replicas: Replicas, gateway: Gateway) -> GatewayServer:
    return gateway(table(route("ep-1", "org-a", [replicas("a")], fingerprint="fp_0123456789_v")))


def test_openai_chat_completions_and_models(gw: GatewayServer) -> None:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0) as client:
        done = client.chat.completions.create(
            model="ep-1", messages=[{"role": "user", "content": "hi"}]
        )
        assert done.model == "ep-1"
        assert done.system_fingerprint == "fp_0123456789_v"
        assert done.choices[0].message.content == "a"

        chunks = list(
            client.chat.completions.create(
                model="ep-1", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        assert {c.model for c in chunks} == {"ep-1"}
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a says hi"

        text = client.completions.create(model="ep-1", prompt="hi")
        assert text.model == "ep-1" and text.choices[0].text == "a"

        assert [m.id for m in client.models.list()] == ["ep-1"]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[])


def test_openai_bad_key(gw: GatewayServer) -> None:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="bad", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="ep-1", messages=[])


def test_cerebras_sdk_stream_and_not(gw: GatewayServer) -> None:
    client = Cerebras(base_url=gw.url, api_key=KEY_A, warm_tcp_connection=False, max_retries=0)
    try:
        done = client.chat.completions.create(
            model="ep-1", messages=[{"role": "user", "content": "hi"}]
        )
        assert done.model == "ep-1"  # type: ignore[union-attr]
        assert done.system_fingerprint == "fp_0123456789_v"  # type: ignore[union-attr]

        stream = client.chat.completions.create(
            model="ep-1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = list(stream)  # type: ignore[call-overload]
        assert {c.model for c in chunks} == {"ep-1"}
        assert {c.system_fingerprint for c in chunks} == {"fp_0123456789_v"}
    finally:
        client.close()
