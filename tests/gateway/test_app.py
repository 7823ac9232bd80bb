"""The FastAPI side of the gateway: ``/v1/models`` and ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from conftest import KEY_A, KEY_B, FakeReplica, GatewayServer, route, table

Replicas = Callable[[str], FakeReplica]
Gateway = Callable[..., GatewayServer]


def test_models_lists_only_the_orgs_endpoints(replicas: Replicas, gateway: Gateway) -> None:
    a = replicas("a")
    gw = gateway(
        table(
            route("ep-a1", "org-a", [a]),
            route("ep-a2", "org-a", [], version=None, deployment=None),
            route("ep-b", "org-b", [a]),
        )
    )
    r = httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {KEY_A}"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == ["ep-a1", "ep-a2"]
    assert {m["owned_by"] for m in body["data"]} == {"org-a"}
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])

    one = httpx.get(gw.url + "/v1/models/ep-b", headers={"Authorization": f"Bearer {KEY_B}"})
    assert one.json()["id"] == "ep-b"
    hidden = httpx.get(gw.url + "/v1/models/ep-b", headers={"Authorization": f"Bearer {KEY_A}"})
    assert hidden.status_code == 404
    assert hidden.json()["code"] == "model_not_found"

    anonymous = httpx.get(gw.url + "/v1/models")
    assert anonymous.status_code == 401
    assert set(anonymous.json()) == {"message", "type", "param", "code"}


def test_metrics_expose_the_series(replicas: Replicas, gateway: Gateway) -> None:
    gw = gateway(table(route("ep-1", "org-a", [replicas("a")], version=3)))
    headers = {"Authorization": f"Bearer {KEY_A}"}
    url = gw.url + "/v1/chat/completions"
    assert httpx.post(url, json={"model": "ep-1"}, headers=headers).status_code == 200
    assert httpx.post(url, json={"model": "ep-1", "stream": True}, headers=headers).is_success
    assert httpx.post(url, json={"model": "nope"}, headers=headers).status_code == 404

    text = httpx.get(gw.url + "/metrics").text

    # The exposition format sorts labels by name.
    labels = 'endpoint="ep-1",version="3"'
    assert 'requests_total{endpoint="ep-1",status="200",version="3"} 2.0' in text
    assert 'turnout_gateway_errors_total{code="model_not_found",endpoint=""} 1.0' in text
    assert f"turnout_gateway_request_seconds_count{{{labels}}} 2.0" in text
    assert f"turnout_gateway_ttft_seconds_count{{{labels}}} 1.0" in text
    assert 'tokens_total{endpoint="ep-1",kind="prompt",version="3"} 10.0' in text
    assert 'tokens_total{endpoint="ep-1",kind="completion",version="3"} 6.0' in text
    assert f"turnout_gateway_in_flight{{{labels}}} 0.0" in text
