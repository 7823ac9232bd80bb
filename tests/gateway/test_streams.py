"""Streams: forwarded chunk by chunk, kept on their replica across a swap, cancelled upstream
when the client leaves, and counted until they end (``Router.wait_drained``)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator

import httpx

from conftest import KEY_A, FakeReplica, GatewayServer, route, table

Replicas = Callable[[str], FakeReplica]
Gateway = Callable[..., GatewayServer]

HEADERS = {"Authorization": f"Bearer {KEY_A}"}
HELD_STREAM = {"model": "ep-1", "messages": [], "stream": True, "hold": True}


def data_lines(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: ") :]


def test_first_chunk_arrives_before_the_replica_sends_the_rest(
    replicas: Replicas, gateway: Gateway
) -> None:
    a = replicas("a")
    gw = gateway(table(route("ep-1", "org-a", [a])))
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json=HELD_STREAM, headers=HEADERS
    ) as r:
        lines = data_lines(r)
        first = json.loads(next(lines))
        # The replica is still blocked on the gate this test controls: the chunk above can
        # only have come through unbuffered.
        assert a.holding.is_set()
        assert first["choices"][0]["delta"]["content"] == "a"
        assert first["model"] == "ep-1"
        a.release()
        assert list(lines)[-1] == "[DONE]"


def test_swap_keeps_running_stream_on_old_replica(replicas: Replicas, gateway: Gateway) -> None:
    old, new = replicas("old"), replicas("new")
    gw = gateway(table(route("ep-1", "org-a", [old], version=1, deployment="dep-1")))
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json=HELD_STREAM, headers=HEADERS
    ) as r:
        lines = data_lines(r)
        next(lines)
        assert gw.router.outstanding("old") == 1

        gw.router.swap(
            table(route("ep-1", "org-a", [new], version=2, deployment="dep-2"), generation=2)
        )
        after = httpx.post(gw.url + "/v1/chat/completions", json={"model": "ep-1"}, headers=HEADERS)
        assert after.json()["choices"][0]["message"]["content"] == "new"
        assert after.headers["x-turnout-version"] == "2"
        assert gw.submit(gw.router.wait_drained(["old"], 0.05)).result(10) is False

        drained = gw.submit(gw.router.wait_drained(["old"], 30))
        assert not drained.done()
        old.release()
        rest = [json.loads(x) for x in lines if x != "[DONE]"]
        assert "".join(c["choices"][0]["delta"]["content"] for c in rest) == " says hi"
        assert r.headers["x-turnout-version"] == "1"
        assert r.headers["x-turnout-deployment"] == "dep-1"
        assert drained.result(10) is True
    assert gw.router.outstanding("old") == 0
    assert len(new.seen) == 1 and len(old.seen) == 1


def test_client_disconnect_cancels_upstream_and_releases_replica(
    replicas: Replicas, gateway: Gateway
) -> None:
    a = replicas("a")
    gw = gateway(table(route("ep-1", "org-a", [a])))
    with httpx.Client() as client:
        with client.stream(
            "POST", gw.url + "/v1/chat/completions", json=HELD_STREAM, headers=HEADERS
        ) as r:
            lines = data_lines(r)  # kept: a collected generator would close the response
            next(lines)
            assert gw.router.outstanding("a") == 1
        # Leaving the block closes a half-read response's connection.
    assert a.cancelled.wait(10), "the replica never saw the request cancelled"
    assert gw.submit(gw.router.wait_drained(["a"], 10)).result(15) is True
    assert gw.router.outstanding("a") == 0


def test_held_non_stream_request_is_also_cancelled_on_disconnect(
    replicas: Replicas, gateway: Gateway
) -> None:
    a = replicas("a")
    gw = gateway(table(route("ep-1", "org-a", [a])))
    body = json.dumps({"model": "ep-1", "hold": True}).encode()
    host, port = gw.url.removeprefix("http://").split(":")
    # A raw socket: any HTTP client would block until the response headers arrive.
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {KEY_A}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert a.holding.wait(10)
    assert a.cancelled.wait(10)
    assert gw.submit(gw.router.wait_drained(["a"], 10)).result(15) is True
