"""Real servers on 127.0.0.1 for the gateway tests: replica doubles and a gateway in threads.

Each server runs its own event loop in a thread. Tests synchronise with them through
``threading.Event``s and ``asyncio.Event``s set across threads, never through sleeps.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import uvicorn
from aiohttp import web

from turnout.gateway.app import create_gateway_app
from turnout.gateway.keys import StaticInferenceKeys, hash_key
from turnout.gateway.routing import Router
from turnout.routing.table import EndpointRoute, ReplicaRoute, RoutingTable

T = TypeVar("T")

KEY_A = "sk-org-a-key"
KEY_B = "sk-org-b-key"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def closed_port_address() -> str:
    """An address nothing listens on (bound, then closed)."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Seen:
    """What a replica double observed for one request."""

    path: str
    body: dict[str, Any]
    request_id: str | None


@dataclass
class FakeReplica:
    """A replica double speaking enough of the OpenAI API, with gates the test controls.

    A request with ``"hold": true`` sends its first stream chunk (or, not streaming, nothing)
    and then waits for :meth:`release`.
    """

    name: str
    runner_loop: LoopThread = field(init=False)
    address: str = field(init=False)
    seen: list[Seen] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)
    #: set, with ``holding``, when any replica of the test starts holding a request
    any_holding: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.runner_loop = LoopThread(f"replica-{self.name}")
        self._gate = self.runner_loop.run(self._make_gate())
        sock = free_socket()
        self.address = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._runner = self.runner_loop.run(self._start(sock))

    async def _make_gate(self) -> asyncio.Event:
        return asyncio.Event()

    async def _start(self, sock: socket.socket) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        return runner

    def _hold(self) -> None:
        self.holding.set()
        self.any_holding.set()

    def release(self) -> None:
        self.runner_loop.loop.call_soon_threadsafe(self._gate.set)

    def close(self) -> None:
        self.release()
        self.runner_loop.run(self._runner.cleanup())
        self.runner_loop.stop()

    def _payload(self, path: str, chunk: bool, text: str, final: bool) -> dict[str, Any]:
        chat = path.endswith("chat/completions")
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if final else None}
        if chat and chunk:
            choice["delta"] = {"content": text}
        elif chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        kind = "chat.completion" if chat else "text_completion"
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{self.name}",
            "object": kind + (".chunk" if chunk and chat else ""),
            "created": 1723733419,
            "model": "upstream-model-name",
            "system_fingerprint": "fp_upstream000",
            "choices": [choice],
        }
        if final:
            payload["usage"] = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        return payload

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(Seen(request.path, body, request.headers.get("X-Request-Id")))
        if "force_status" in body:
            error = {"message": "forced", "type": "x", "param": None, "code": "forced"}
            return web.json_response(error, status=body["force_status"])
        if "vllm_error" in body:  # vLLM's nested shape, also for a stream request
            return web.json_response(VLLM_400, status=400)
        if "plain_error" in body:
            return web.Response(text="Internal Server Error", status=body["plain_error"])
        try:
            if body.get("stream"):
                return await self._stream(request, body)
            if body.get("hold"):
                self._hold()
                await self._gate.wait()
            if body.get("shape") == "vllm":
                return web.json_response(vllm_whole(self.name))
            payload = self._payload(request.path, False, self.name, True)
            payload["usage"]["completion_tokens"] = body.get("completion_tokens", 3)
            return web.json_response(payload)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.set()
            raise

    def _events(self, path: str, body: dict[str, Any]) -> list[bytes]:
        parts = [self.name, " says", " hi"]
        if body.get("shape") == "vllm":
            include_usage = (body.get("stream_options") or {}).get("include_usage") is True
            return vllm_stream(parts, include_usage)
        # The built-in engine's shape: usage in one more chunk without choices, when asked.
        events = []
        for i, text in enumerate(parts):
            payload = self._payload(path, True, text, i == len(parts) - 1)
            usage = payload.pop("usage", None)
            events.append(f"data: {json.dumps(payload)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage") is True:
            usage["completion_tokens"] = body.get("completion_tokens", 3)
            payload = {**payload, "choices": [], "usage": usage}
            events.append(f"data: {json.dumps(payload)}\n\n".encode())
        return events

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, event in enumerate(self._events(request.path, body)):
            if i == body.get("die_after"):
                # The replica's process dies: its connection drops mid-stream.
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(event)
            if i == 0 and body.get("hold"):
                self._hold()
                await self._gate.wait()
        if body.get("vllm_error_mid"):
            await response.write(VLLM_ERROR_EVENT)
        if not body.get("no_done"):
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


# vLLM 0.32's wire format, as docs/engines.md records it.
VLLM_FINGERPRINT = "vllm-0.32.0-83558d41"
VLLM_400 = {
    "error": {
        "message": "max_tokens=5000 cannot be greater than max_model_len=2048. Please request "
        "fewer output tokens. (parameter=max_tokens, value=5000)",
        "type": "BadRequestError",
        "param": "max_tokens",
        "code": 400,
    }
}
VLLM_ERROR_EVENT = (
    b'data: {"error": {"message": "EngineCore encountered an issue. See stack trace (above) '
    b'for the root cause.", "type": "InternalServerError", "param": null, "code": 500}}\n\n'
)


def _compact(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def vllm_whole(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-8910fde85f12af19",
        "object": "chat.completion",
        "created": 1796178712,
        "model": "facts-endpoint",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": VLLM_FINGERPRINT,
        "usage": {"prompt_tokens": 40, "total_tokens": 48, "completion_tokens": 8},
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


def vllm_stream(parts: list[str], include_usage: bool) -> list[bytes]:
    """vLLM's chunks: a role chunk, content chunks with no fingerprint, the fingerprint only
    on the last JSON chunk, a ``"choices": []`` usage chunk when asked for."""
    head = {"id": "chatcmpl-85", "object": "chat.completion.chunk", "created": 1796178715}
    head["model"] = "facts-endpoint"
    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    out = [b"data: " + _compact({**head, "choices": [role]}) + b"\n\n"]
    for i, text in enumerate(parts):
        last = i == len(parts) - 1
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None}
        choice["finish_reason"] = "length" if last else None
        chunk: dict[str, Any] = {**head, "choices": [choice]}
        if last and not include_usage:
            chunk["system_fingerprint"] = VLLM_FINGERPRINT
        out.append(b"data: " + _compact(chunk) + b"\n\n")
    if include_usage:
        usage = {"prompt_tokens": 40, "total_tokens": 43, "completion_tokens": 3}
        final = {**head, "choices": [], "usage": usage, "system_fingerprint": VLLM_FINGERPRINT}
        out.append(b"data: " + _compact(final) + b"\n\n")
    return out


class GatewayServer:
    """``create_gateway_app`` served by uvicorn in a thread, on a free port."""

    def __init__(self, router: Router, keys: StaticInferenceKeys, **options: Any) -> None:
        self.router = router
        self.app = create_gateway_app(router, keys, **options)
        sock = free_socket()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", ws="none", lifespan="on")
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        started = threading.Event()

        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            started.set()
            await self.server.serve(sockets=[sock])

        self.thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        self.thread.start()
        started.wait(10)
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)  # startup poll only; no test asserts on timing
        assert self.server.started, "gateway did not start"

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the gateway's event loop (where the proxy's state lives)."""

        async def run() -> T:
            return fn()

        return self.submit(run()).result(10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def route(
    endpoint: str,
    org: str,
    replicas: list[FakeReplica | str],
    *,
    version: int | None = 1,
    deployment: str | None = "dep-1",
    fingerprint: str | None = "fp_0123456789",
) -> EndpointRoute:
    routes = tuple(
        ReplicaRoute(r.name, r.address)
        if isinstance(r, FakeReplica)
        else ReplicaRoute(f"dead-{i}", r)
        for i, r in enumerate(replicas)
    )
    return EndpointRoute(endpoint, org, deployment, version, fingerprint, routes)


def table(*routes: EndpointRoute, generation: int = 1) -> RoutingTable:
    return RoutingTable({r.endpoint_id: r for r in routes}, generation)


@pytest.fixture
def keys() -> StaticInferenceKeys:
    return StaticInferenceKeys({hash_key(KEY_A): "org-a", hash_key(KEY_B): "org-b"})


@pytest.fixture
def replicas() -> Iterator[Callable[[str], FakeReplica]]:
    made: list[FakeReplica] = []
    any_holding = threading.Event()

    def make(name: str) -> FakeReplica:
        replica = FakeReplica(name, any_holding=any_holding)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        replica.close()


@pytest.fixture
def gateway(keys: StaticInferenceKeys) -> Iterator[Callable[..., GatewayServer]]:
    made: list[GatewayServer] = []

    def make(
        routing: RoutingTable, table: StaticInferenceKeys | None = None, **options: Any
    ) -> GatewayServer:
        server = GatewayServer(Router(routing), table or keys, **options)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()
