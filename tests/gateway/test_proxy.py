"""The proxied paths against real servers: rewriting, errors, replica choice, retry, streams."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx

from conftest import KEY_A, KEY_B, FakeReplica, GatewayServer, closed_port_address, route, table
from turnout.routing.table import EndpointRoute, ReplicaRoute

Replicas = Callable[[str], FakeReplica]
Gateway = Callable[..., GatewayServer]

CHAT = "/v1/chat/completions"


def post(
    gw: GatewayServer, body: dict[str, Any], key: str | None = KEY_A, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kw.pop("headers", {}))
    return httpx.post(gw.url + kw.pop("path", CHAT), json=body, headers=headers, timeout=30)


def events(text: str) -> list[dict[str, Any]]:
    lines = [ln[len("data: ") :] for ln in text.split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_response_carries_endpoint_id_fingerprint_and_version_headers(
    replicas: Replicas, gateway: Gateway
) -> None:
    a = replicas("a")
    gw = gateway(table(route("ep-1", "org-a", [a], version=7, deployment="dep-7")))

    r = post(gw, {"model": "ep-1", "messages": [], "extra": 1}, headers={"x-request-id": "rq-1"})

    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "ep-1"
    assert body["system_fingerprint"] == "fp_0123456789"
    assert body["usage"]["total_tokens"] == 8
    assert r.headers["x-turnout-deployment"] == "dep-7"
    assert r.headers["x-turnout-version"] == "7"
    assert r.headers["x-request-id"] == "rq-1"
    # The client's bytes reach the replica as sent, unknown fields included.
    assert a.seen[0].body == {"model": "ep-1", "messages": [], "extra": 1}
    assert a.seen[0].request_id == "rq-1"


def test_request_id_is_generated_when_absent(replicas: Replicas, gateway: Gateway) -> None:
    gw = gateway(table(route("ep-1", "org-a", [replicas("a")])))
    r = post(gw, {"model": "ep-1", "prompt": "x"}, path="/v1/completions")
    assert r.status_code == 200
    assert len(r.headers["x-request-id"]) == 32
    assert r.json()["object"] == "text_completion"


def test_stream_is_rewritten_per_event(replicas: Replicas, gateway: Gateway) -> None:
    gw = gateway(table(route("ep-1", "org-a", [replicas("a")], fingerprint="fp_abcdef0123_x")))

    r = post(gw, {"model": "ep-1", "messages": [], "stream": True})

    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["cache-control"] == "no-cache"
    chunks = events(r.text)
    assert [c["model"] for c in chunks] == ["ep-1"] * 3
    assert {c["system_fingerprint"] for c in chunks} == {"fp_abcdef0123_x"}
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "a says hi"


def test_missing_or_unknown_key_is_401(replicas: Replicas, gateway: Gateway) -> None:
    gw = gateway(table(route("ep-1", "org-a", [replicas("a")])))
    for key in (None, "sk-wrong"):
        r = post(gw, {"model": "ep-1"}, key=key)
        assert r.status_code == 401
        assert r.json()["type"] == "authentication_error"
        assert set(r.json()) == {"message", "type", "param", "code"}


def test_other_orgs_endpoint_is_indistinguishable_from_unknown(
    replicas: Replicas, gateway: Gateway
) -> None:
    a = replicas("a")
    gw = gateway(table(route("ep-b", "org-b", [a])))

    foreign = post(gw, {"model": "ep-b"}, key=KEY_A)
    unknown = post(gw, {"model": "ep-zz"}, key=KEY_A)

    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == {
        "message": "Model ep-b does not exist or you do not have access to it.",
        "type": "not_found_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert unknown.json()["message"].replace("ep-zz", "ep-b") == foreign.json()["message"]
    assert a.seen == []
    assert post(gw, {"model": "ep-b"}, key=KEY_B).status_code == 200


def test_endpoint_without_ready_replica_is_503(gateway: Gateway) -> None:
    gw = gateway(
        table(
            route("ep-new", "org-a", [], version=None, deployment=None, fingerprint=None),
            route("ep-starting", "org-a", []),
        )
    )
    for endpoint in ("ep-new", "ep-starting"):
        r = post(gw, {"model": endpoint})
        assert r.status_code == 503
        body = r.json()
        assert body["code"] == "endpoint_not_ready"
        assert f"GET /management/v1/endpoints/{endpoint}" in body["message"]


def test_bad_bodies_are_rejected_before_any_replica(replicas: Replicas, gateway: Gateway) -> None:
    a = replicas("a")
    gw = gateway(table(route("ep-1", "org-a", [a])))
    headers = {"Authorization": f"Bearer {KEY_A}"}
    r = httpx.post(gw.url + CHAT, content=b"{not json", headers=headers)
    assert r.status_code == 400
    missing = post(gw, {"messages": []})
    assert missing.status_code == 400 and missing.json()["param"] == "model"
    assert a.seen == []


def test_replica_errors_pass_through(replicas: Replicas, gateway: Gateway) -> None:
    gw = gateway(table(route("ep-1", "org-a", [replicas("a")])))
    r = post(gw, {"model": "ep-1", "force_status": 400})
    assert r.status_code == 400
    assert r.json()["code"] == "forced"
    assert r.headers["x-turnout-version"] == "1"


def test_ties_alternate_and_least_outstanding_wins(replicas: Replicas, gateway: Gateway) -> None:
    a, b = replicas("a"), replicas("b")
    gw = gateway(table(route("ep-1", "org-a", [a, b])))

    # Idle replicas: ties are broken round robin.
    for _ in range(4):
        assert post(gw, {"model": "ep-1"}).status_code == 200
    assert (len(a.seen), len(b.seen)) == (2, 2)

    # Hold one request on whichever replica gets it; every next one goes to the other.
    held: dict[str, httpx.Response] = {}
    holder = threading.Thread(
        target=lambda: held.setdefault("r", post(gw, {"model": "ep-1", "hold": True}))
    )
    holder.start()
    assert a.any_holding.wait(10)
    busy = a if a.holding.is_set() else b
    idle = b if busy is a else a
    before = len(idle.seen)
    for _ in range(6):
        assert post(gw, {"model": "ep-1"}).json()["choices"][0]["message"]["content"] == idle.name
    assert len(idle.seen) == before + 6
    assert gw.router.outstanding(busy.name) == 1
    busy.release()
    holder.join(10)
    assert held["r"].status_code == 200
    assert gw.router.outstanding(busy.name) == 0


def test_dead_replica_is_retried_on_another(replicas: Replicas, gateway: Gateway) -> None:
    a = replicas("a")
    gw = gateway(table(route("ep-1", "org-a", [closed_port_address(), a])))
    statuses = [post(gw, {"model": "ep-1"}).status_code for _ in range(6)]
    statuses += [post(gw, {"model": "ep-1", "stream": True}).status_code for _ in range(4)]
    assert statuses == [200] * 10
    assert len(a.seen) == 10
    assert gw.router.outstanding("dead-0") == 0


def test_all_replicas_dead_is_503(gateway: Gateway) -> None:
    gw = gateway(table(route("ep-1", "org-a", [closed_port_address(), closed_port_address()])))
    r = post(gw, {"model": "ep-1"})
    assert r.status_code == 503
    assert r.json()["code"] == "replica_unreachable"


def test_replicas_of_two_versions_answer_with_their_own_labels(
    replicas: Replicas, gateway: Gateway
) -> None:
    """A rolling rollout: one endpoint, one replica per version, each labelled by its own."""
    old, new = replicas("old"), replicas("new")
    endpoint = EndpointRoute(
        "ep-1",
        "org-a",
        "dep-1",
        1,
        "fp_1111111111",
        (
            ReplicaRoute(old.name, old.address),  # the endpoint's own version
            ReplicaRoute(new.name, new.address, "dep-2", 2, "fp_2222222222_x"),
        ),
    )
    gw = gateway(table(endpoint))
    expected = {"old": ("dep-1", "1", "fp_1111111111"), "new": ("dep-2", "2", "fp_2222222222_x")}

    served: list[str] = []
    for stream in (False, False, True, True):
        r = post(gw, {"model": "ep-1", "messages": [], "stream": stream})
        assert r.status_code == 200
        if stream:
            chunks = events(r.text)
            name = chunks[0]["choices"][0]["delta"]["content"]
            fingerprints = {c["system_fingerprint"] for c in chunks}
        else:
            name = r.json()["choices"][0]["message"]["content"]
            fingerprints = {r.json()["system_fingerprint"]}
        deployment, version, fingerprint = expected[name]
        assert r.headers["x-turnout-deployment"] == deployment
        assert r.headers["x-turnout-version"] == version
        assert fingerprints == {fingerprint}
        served.append(name)
    assert sorted(served) == ["new", "new", "old", "old"]  # ties alternate

    text = httpx.get(gw.url + "/metrics").text
    for version in ("1", "2"):
        labels = f'endpoint="ep-1",status="200",version="{version}"'
        assert f"turnout_gateway_requests_total{{{labels}}} 2.0" in text
        assert f'tokens_total{{endpoint="ep-1",kind="prompt",version="{version}"}} 10.0' in text
