"""One proxied request's facts, and the client-disconnect watch around its relay.

uvicorn's ``send`` silently drops messages once the client is gone, so a relay that only
sends would keep a replica generating for nobody. :func:`relay` runs the exchange with a
watcher task that waits for ``http.disconnect`` and cancels the exchange when it comes (as
starlette's ``StreamingResponse`` does with a task group); the exchange's ``finally`` then
closes the upstream connection and releases the replica exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive

from turnout.gateway.routing import EndpointRoute


@dataclass(frozen=True, slots=True)
class Exchange:
    route: EndpointRoute
    path: str
    body: bytes
    stream: bool
    request_id: str
    started: float  #: time.perf_counter() when the request arrived

    def headers(self, content_type: str) -> list[tuple[bytes, bytes]]:
        """Headers of every proxied response (DESIGN §4 "Inference")."""
        route = self.route
        return [
            (b"content-type", content_type.encode("latin-1")),
            (b"x-request-id", self.request_id.encode("latin-1")),
            (b"x-turnout-deployment", (route.deployment_id or "").encode("latin-1")),
            (b"x-turnout-version", str(route.version_id).encode("latin-1")),
        ]


async def relay(work: Coroutine[Any, Any, int], receive: Receive) -> int:
    """Run ``work`` (returns the HTTP status sent) unless the client leaves first: then 499.

    ``work`` runs in the calling task and only the watcher is a new task: one task per
    request instead of two keeps the watch cheap enough for every request, not just streams.
    """
    current = asyncio.current_task()
    assert current is not None  # called from a request handler
    gone = False

    async def watch() -> None:
        nonlocal gone
        # The body has been read, so the next message is http.disconnect: sent by uvicorn
        # when the client leaves, or once the response is complete (then `work` has
        # returned and this task was cancelled before it could run).
        while (await receive())["type"] != "http.disconnect":
            continue
        gone = True
        current.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # a real cancellation (server shutdown), not the client leaving
        current.uncancel()
        return 499
    finally:
        watcher.cancel()
