"""Issue 14 item 3: the Metrics API in Cerebras' format, through a real gateway: gauges over
the last complete minute, labelled endpoint, organization_id and version, org-scoped."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import KEY_A, KEY_B, FakeReplica, GatewayServer, route, table
from turnout.gateway.keys import KeyEntry, StaticInferenceKeys, hash_key
from turnout.gateway.traffic import Traffic
from turnout.routing.table import EndpointRoute, ReplicaRoute

Replicas = Callable[[str], FakeReplica]
Gateway = Callable[..., GatewayServer]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gw: GatewayServer, org: str, key: str = KEY_A) -> httpx.Response:
    return httpx.get(
        f"{gw.url}/api/v1/metrics/organizations/{org}",
        headers={"Authorization": f"Bearer {key}"},
    )


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge"
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def labels(endpoint: str, version: str, **more: str) -> frozenset[tuple[str, str]]:
    return frozenset(
        {"endpoint": endpoint, "organization_id": "org-a", "version": version, **more}.items()
    )


@pytest.fixture
def keys_with_limit() -> StaticInferenceKeys:
    return StaticInferenceKeys(
        {
            hash_key(KEY_A): "org-a",
            hash_key(KEY_B): "org-b",
            hash_key("sk-limited"): KeyEntry("org-a", "k-limited", rpm=1),
        }
    )


def test_last_complete_minute_per_endpoint_and_version(
    replicas: Replicas, gateway: Gateway, keys_with_limit: StaticInferenceKeys
) -> None:
    old, new = replicas("old"), replicas("new")
    rolling = EndpointRoute(
        "ep-1",
        "org-a",
        "dep-1",
        1,
        "fp_1111111111",
        (ReplicaRoute("old", old.address), ReplicaRoute("new", new.address, "dep-2", 2, "fp_2")),
    )
    traffic = Traffic(clocked=False)
    gw = gateway(
        table(rolling, route("ep-down", "org-a", []), route("ep-b", "org-b", [old])),
        keys_with_limit,
        traffic=traffic,
    )
    url = gw.url + "/v1/chat/completions"
    a = {"Authorization": f"Bearer {KEY_A}"}
    for stream in (False, False, True, True):  # two per version (ties alternate)
        assert httpx.post(url, json={"model": "ep-1", "stream": stream}, headers=a).is_success
    assert httpx.post(url, json={"model": "ep-1", "force_status": 400}, headers=a).status_code
    limited = {"Authorization": "Bearer sk-limited"}
    assert httpx.post(url, json={"model": "ep-1"}, headers=limited).status_code == 200
    assert httpx.post(url, json={"model": "ep-1"}, headers=limited).status_code == 429
    httpx.post(url, json={"model": "ep-b"}, headers={"Authorization": f"Bearer {KEY_B}"})

    # Nothing is reported for the minute still running.
    before = samples(scrape(gw, "org-a").text)
    assert before[("requests_count_total", labels("ep-1", "1"))] == 0.0
    gw.call(traffic.roll)
    r = scrape(gw, "org-a")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)

    assert got[("inference_endpoint_status", labels("ep-1", "1"))] == 1.0
    assert got[("inference_endpoint_status", labels("ep-down", "1"))] == 0.0
    v1, v2 = labels("ep-1", "1"), labels("ep-1", "2")
    # Five answers, the replica's 400 and the gateway's 429, over both versions.
    total = got[("requests_count_total", v1)] + got[("requests_count_total", v2)]
    assert total == 7
    assert got[("requests_success_total", v1)] + got[("requests_success_total", v2)] == 5
    failures = {
        dict(key[1]).get("code"): value
        for key, value in got.items()
        if key[0] == "requests_failure_total" and value
    }
    assert failures == {"400": 1.0, "429": 1.0}
    assert got[("input_tokens_total", v1)] + got[("input_tokens_total", v2)] == 25
    assert got[("output_tokens_total", v1)] + got[("output_tokens_total", v2)] == 15
    for version in ("1", "2"):
        for p in ("avg", "p50", "p90", "p95", "p99"):
            assert got[("queue_time_seconds", labels("ep-1", version, percentile=p))] >= 0
            assert got[("e2e_latency_seconds", labels("ep-1", version, percentile=p))] > 0
    # Org-scoped: org-b's endpoint is not in org-a's answer, and org-a cannot read org-b's.
    assert not any(dict(k[1])["endpoint"] == "ep-b" for k in got)
    denied = scrape(gw, "org-b")
    assert denied.status_code == 403 and denied.json()["code"] == "permission_denied"
    assert (
        samples(scrape(gw, "org-b", KEY_B).text)[
            (
                "requests_count_total",
                frozenset({"endpoint": "ep-b", "organization_id": "org-b", "version": "1"}.items()),
            )
        ]
        == 1.0
    )


def test_six_scrapes_a_minute(replicas: Replicas, gateway: Gateway) -> None:
    gw = gateway(table(route("ep-1", "org-a", [replicas("a")])), traffic=Traffic(clocked=False))
    assert [scrape(gw, "org-a").status_code for _ in range(6)] == [200] * 6
    refused = scrape(gw, "org-a")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert scrape(gw, "org-b", KEY_B).status_code == 200  # per organization


def test_needs_an_inference_key(gateway: Gateway) -> None:
    gw = gateway(table())
    r = httpx.get(gw.url + "/api/v1/metrics/organizations/org-a")
    assert r.status_code == 401 and set(r.json()) == {"message", "type", "param", "code"}
