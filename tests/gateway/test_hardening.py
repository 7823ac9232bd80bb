"""Issue 13 on the gateway: broken streams end in an error event, every error is flat,
bad bodies are 400/413, 503 says when to retry, /v1/models tells the endpoint's age."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from conftest import KEY_A, FakeReplica, GatewayServer, route, table
from turnout.routing.table import EndpointRoute

Replicas = Callable[[str], FakeReplica]
Gateway = Callable[..., GatewayServer]

CHAT = "/v1/chat/completions"
HEADERS = {"Authorization": f"Bearer {KEY_A}"}
FLAT = {"message", "type", "param", "code"}


def data_lines(text: str) -> list[str]:
    return [ln[len("data: ") :] for ln in text.split("\n") if ln.startswith("data: ")]


@pytest.fixture
def gw(replicas: Replicas, gateway: Gateway) -> GatewayServer:
    return gateway(table(route("ep-1", "org-a", [replicas("a")])), max_body_bytes=4096)


@pytest.mark.parametrize(
    ("fault", "code", "status"),
    [({"die_after": 2}, "stream_interrupted", 502), ({"no_done": True}, "stream_incomplete", 502)],
)
def test_a_stream_the_replica_breaks_off_ends_with_an_error_event(
    gw: GatewayServer, fault: dict[str, Any], code: str, status: int
) -> None:
    body = {"model": "ep-1", "messages": [], "stream": True, **fault}
    r = httpx.post(gw.url + CHAT, json=body, headers=HEADERS, timeout=30)
    assert r.status_code == 200  # the headers had gone out already
    lines = data_lines(r.text)
    assert lines[-1] == "[DONE]"
    error = json.loads(lines[-2])
    assert error["status_code"] == status and set(error["error"]) == FLAT
    assert error["error"]["code"] == code
    # Whatever arrived before the break is intact.
    assert all("choices" in json.loads(x) for x in lines[:-2])

    # And an SDK raises instead of returning a short answer as if it were whole.
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="ep-1", messages=[], stream=True, extra_body=fault
        )
        with pytest.raises(openai.APIError, match="before it was complete"):
            list(stream)
    metrics = httpx.get(gw.url + "/metrics").text
    assert f'requests_total{{endpoint="ep-1",status="{status}",version="1"}} 2.0' in metrics


def test_endpoint_not_ready_says_when_to_retry(gateway: Gateway) -> None:
    gw = gateway(
        table(
            route("ep-new", "org-a", [], version=None, deployment=None, fingerprint=None),
            route("ep-starting", "org-a", []),
        )
    )
    for endpoint, wait in (("ep-new", "10"), ("ep-starting", "2")):
        r = httpx.post(gw.url + CHAT, json={"model": endpoint}, headers=HEADERS)
        assert r.status_code == 503 and r.json()["code"] == "endpoint_not_ready"
        assert r.headers["retry-after"] == wait


def test_models_report_the_endpoints_creation_time(replicas: Replicas, gateway: Gateway) -> None:
    a = replicas("a")
    made = EndpointRoute("ep-1", "org-a", "dep-1", 1, "fp_0123456789", (), created=1736600000)
    gw = gateway(table(made, route("ep-2", "org-a", [a])))
    listed = httpx.get(gw.url + "/v1/models", headers=HEADERS).json()["data"]
    assert {m["id"]: m["created"] for m in listed}["ep-1"] == 1736600000
    one = httpx.get(gw.url + "/v1/models/ep-1", headers=HEADERS).json()
    assert one["created"] == 1736600000


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000 + b"]" * 100_000,  # a RecursionError for the stdlib's parser
        b'{"model": "ep-1", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"model": "ep-1", "temperature": NaN}',
        b'{"model": "ep-1", "content": "\\ud800"}',
        b"\xff\xfe",
    ],
)
def test_unparsable_json_is_400(replicas: Replicas, gateway: Gateway, content: bytes) -> None:
    a = replicas("a")
    gw = gateway(table(route("ep-1", "org-a", [a])))
    r = httpx.post(gw.url + CHAT, content=content, headers=HEADERS)
    assert r.status_code == 400
    assert set(r.json()) == FLAT and r.json()["code"] == "invalid_json"
    assert a.seen == []


def test_body_over_the_limit_is_413_also_when_chunked(gw: GatewayServer) -> None:
    big = json.dumps({"model": "ep-1", "messages": [{"content": "x" * 10_000}]}).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    for content in (big, chunks()):
        r = httpx.post(gw.url + CHAT, content=content, headers=HEADERS)
        assert r.status_code == 413
        assert r.json()["code"] == "payload_too_large"
    # One chunk over the limit on its own is refused too.
    r = httpx.post(gw.url + CHAT, content=iter([big]), headers=HEADERS)
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/v1/chat/completions", 405),
        ("POST", "/v1/models", 405),
        ("DELETE", "/v1/models/ep-1", 405),
    ],
)
def test_unknown_routes_and_methods_are_flat(
    gw: GatewayServer, method: str, path: str, status: int
) -> None:
    r = httpx.request(method, gw.url + path, headers=HEADERS)
    assert r.status_code == status
    assert set(r.json()) == FLAT
