"""Issue 13: per-key requests and tokens per minute and per-org requests in flight, enforced
by a real gateway with 429 and the headers OpenAI and Cerebras clients read."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from conftest import FakeReplica, GatewayServer, route, table
from turnout.gateway.keys import KeyEntry, StaticInferenceKeys, hash_key
from turnout.gateway.limits import go_duration

Replicas = Callable[[str], FakeReplica]
Gateway = Callable[..., GatewayServer]

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]  # estimated at 5 prompt tokens
GO_DURATION = re.compile(r"^(\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$")


def keys(**entries: KeyEntry) -> StaticInferenceKeys:
    return StaticInferenceKeys({hash_key(token): entry for token, entry in entries.items()})


def post(gw: GatewayServer, key: str, **body: Any) -> httpx.Response:
    payload = {"model": "ep-a", "messages": HI, **body}
    return httpx.post(
        gw.url + CHAT, json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_go_durations() -> None:
    assert [go_duration(s) for s in (0, 0.012, 1, 1.5, 360, 3725.5)] == [
        "0s", "12ms", "1s", "1.5s", "6m0s", "1h2m5.5s",
    ]  # fmt: skip


def test_requests_per_minute(replicas: Replicas, gateway: Gateway) -> None:
    table_ = keys(limited=KeyEntry("org-a", "k1", rpm=2), free=KeyEntry("org-a", "k2"))
    gw = gateway(table(route("ep-a", "org-a", [replicas("a")])), table_)

    first, second, third = (post(gw, "limited") for _ in range(3))
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert GO_DURATION.match(second.headers["x-ratelimit-reset-requests"])

    assert third.status_code == 429
    assert third.json() == {
        "message": "Requests per minute limit exceeded - too many requests sent.",
        "type": "too_many_requests_error",
        "param": "quota",
        "code": "request_quota_exceeded",
    }
    assert 1 <= int(third.headers["retry-after"]) <= 30
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    # A key without limits is not held back, and carries no limit headers.
    free = post(gw, "free")
    assert free.status_code == 200 and "x-ratelimit-limit-requests" not in free.headers

    with openai.OpenAI(base_url=gw.url + "/v1", api_key="limited", max_retries=0) as client:
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="ep-a", messages=HI)  # type: ignore[arg-type]
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'requests_total{endpoint="ep-a",status="429",version="1"} 2.0' in metrics


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_per_minute_count_prompt_and_completion(
    replicas: Replicas, gateway: Gateway, stream: bool
) -> None:
    # 60 tokens a minute (one a second): the first answer uses 5 + 50, the second is let in
    # on what is left (5 estimated), the third waits for the bucket to refill.
    gw = gateway(
        table(route("ep-a", "org-a", [replicas("a")])),
        keys(limited=KeyEntry("org-a", "k1", tpm=60)),
    )
    first = post(gw, "limited", completion_tokens=50, stream=stream)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "60"
    assert first.headers["x-ratelimit-remaining-tokens"] == "55"  # after the estimate
    assert GO_DURATION.match(first.headers["x-ratelimit-reset-tokens"])
    # Cerebras' own names for tokens per minute, reset in seconds.
    assert first.headers["x-ratelimit-limit-tokens-minute"] == "60"
    assert first.headers["x-ratelimit-remaining-tokens-minute"] == "55"
    assert float(first.headers["x-ratelimit-reset-tokens-minute"]) > 0
    second = post(gw, "limited", completion_tokens=50, stream=stream)
    assert second.status_code == 200
    third = post(gw, "limited", stream=stream)
    assert third.status_code == 429
    assert third.json()["code"] == "token_quota_exceeded"
    assert (
        third.json()["message"] == "Tokens per minute limit exceeded - too many tokens processed."
    )
    assert int(third.headers["retry-after"]) > 30  # the key is 50 tokens in debt
    if stream:
        assert "usage" not in first.text  # counted, though the client did not ask for it


def test_a_prompt_bigger_than_the_limit_says_so(replicas: Replicas, gateway: Gateway) -> None:
    gw = gateway(
        table(route("ep-a", "org-a", [replicas("a")])),
        keys(limited=KeyEntry("org-a", "k1", tpm=100)),
    )
    r = post(gw, "limited", messages=[{"role": "user", "content": "x" * 2000}])
    assert r.status_code == 429
    assert "more than this key's limit of 100 tokens per minute" in r.json()["message"]
    assert "retry-after" not in r.headers  # waiting would not help


def test_failed_answers_give_their_tokens_back(replicas: Replicas, gateway: Gateway) -> None:
    gw = gateway(
        table(route("ep-a", "org-a", [replicas("a")])),
        keys(limited=KeyEntry("org-a", "k1", tpm=12)),
    )
    for _ in range(5):  # 5 x 5 estimated tokens > 12, but each is given back
        assert post(gw, "limited", force_status=400).status_code == 400
    assert post(gw, "limited").status_code == 200


def test_one_org_flooding_cannot_starve_another(replicas: Replicas, gateway: Gateway) -> None:
    a, b = replicas("a"), replicas("b")
    gw = gateway(
        table(route("ep-a", "org-a", [a]), route("ep-b", "org-b", [b])),
        keys(
            flood=KeyEntry("org-a", "k1", org_max_concurrent=3),
            calm=KeyEntry("org-b", "k2", org_max_concurrent=3),
        ),
    )
    held: list[httpx.Response] = []
    refused: list[httpx.Response] = []

    def flood() -> None:
        r = post(gw, "flood", hold=True)
        (held if r.status_code == 200 else refused).append(r)

    threads = [threading.Thread(target=flood) for _ in range(12)]
    for thread in threads:
        thread.start()
    # Org A's limit lets three through to its replica; they wait there, the rest get 429.
    deadline_ok = _wait(lambda: len(a.seen) == 3 and len(refused) == 9)
    assert deadline_ok, (len(a.seen), len(refused))
    assert {r.json()["code"] for r in refused} == {"concurrency_limit_exceeded"}
    assert all(r.headers["retry-after"] == "1" for r in refused)
    # Org B's endpoint answers while org A's three are still in flight.
    for _ in range(5):
        assert post(gw, "calm", model="ep-b").status_code == 200
    assert gw.call(lambda: gw.app.proxy.limits.in_flight("org-a")) == 3
    a.release()
    for thread in threads:
        thread.join(10)
    assert len(held) == 3
    assert gw.call(lambda: gw.app.proxy.limits.in_flight("org-a")) == 0
    assert post(gw, "flood").status_code == 200


def _wait(done: Callable[[], bool]) -> bool:
    """Poll a condition the threads above reach (synchronisation, not a timing assertion)."""
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.01)
    return done()


def test_leaving_a_stream_early_still_costs_its_tokens(
    replicas: Replicas, gateway: Gateway
) -> None:
    a = replicas("a")
    gw = gateway(table(route("ep-a", "org-a", [a])), keys(k=KeyEntry("org-a", "k1", tpm=12)))
    body = {"model": "ep-a", "messages": HI, "stream": True, "hold": True}
    for _ in range(2):  # each estimated at 5 tokens; the client leaves after the first chunk
        a.cancelled.clear()
        with httpx.Client() as client:
            with client.stream(
                "POST", gw.url + CHAT, json=body, headers={"Authorization": "Bearer k"}
            ) as r:
                assert r.status_code == 200
                next(r.iter_lines())
        assert a.cancelled.wait(10)
        assert _wait(lambda: gw.call(lambda: gw.router.outstanding("a")) == 0)
    r = post(gw, "k")
    assert r.status_code == 429 and r.json()["code"] == "token_quota_exceeded"
