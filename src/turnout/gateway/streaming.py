"""One proxied request's facts, and the client-disconnect watch around its relay.

uvicorn's ``send`` silently drops messages once the client is gone, so a relay that only
sends would keep a replica generating for nobody. :class:`DisconnectWatch` waits for
``http.disconnect`` and cancels the request's task when it comes (as starlette's
``StreamingResponse`` does with a task group); the exchange's ``finally`` then closes the
upstream connection and releases the replica exactly once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from starlette.types import Receive

from turnout.gateway.limits import Admission
from turnout.gateway.metrics import EndpointSeries
from turnout.gateway.rewrite import Usage
from turnout.routing.table import EndpointRoute, ReplicaRoute

#: The watcher task starts only once a request has run this long. Most answers of a fast
#: replica are complete sooner, and a task per request was a measurable share of the proxy's
#: CPU; a client that leaves is noticed at most this much later.
WATCH_AFTER = 0.02


@dataclass(slots=True)
class Exchange:
    route: EndpointRoute
    path: str
    body: bytes
    stream: bool
    request_id: str
    started: float  #: time.perf_counter() when the request arrived
    received: float  #: time.time() when the request arrived
    #: the client asked for a stream's usage event (``stream_options.include_usage``)
    wants_usage: bool = False
    admission: Admission | None = None
    #: the replica taken, until it is given back
    replica: ReplicaRoute | None = None
    #: set when a replica is taken: with a rolling rollout, the replica decides the version
    served: Served | None = None
    series: EndpointSeries | None = None
    #: perf_counter() marks: request handed to the replica, its first byte, our first byte out
    sent: float = 0.0
    first_byte: float = 0.0
    first_out: float = 0.0
    usage: Usage | None = None
    #: the engine's own ``time_info.queue_time`` (whole answers), when it reports one
    engine_queue: float | None = None

    def time_info(self) -> bytes:
        """The ``"time_info":{...}`` member, from the gateway's clock (engines like vLLM send
        none): queue = here until sent to the replica; prompt = until its first byte (streams
        only: a whole answer's first byte comes with its last); completion = the rest.

        Written by hand: a float's repr is valid JSON, and json.dumps cost four times more.
        """
        now = time.perf_counter()
        sent = self.sent or now
        if self.stream and self.first_byte:
            middle = (
                f'"prompt_time":{self.first_byte - sent!r},'
                f'"completion_time":{now - self.first_byte!r}'
            )
        else:
            middle = f'"completion_time":{now - sent!r}'
        return (
            f'"time_info":{{"queue_time":{sent - self.started!r},{middle},'
            f'"total_time":{now - self.started!r},"created":{self.received!r}}}'
        ).encode()

    def queue_time(self) -> float | None:
        """For the Metrics API: receipt to the replica's first byte (streams), or to the
        request sent plus the engine's own queue time (whole answers)."""
        if self.stream:
            return self.first_byte - self.started if self.first_byte else None
        if not self.sent:
            return None
        return self.sent - self.started + (self.engine_queue or 0.0)


@dataclass(frozen=True, slots=True)
class Served:
    """The version that answers: the replica's own labels, else its endpoint's."""

    deployment_id: str | None
    version_id: int | None
    fingerprint: str | None

    @classmethod
    def by(cls, route: EndpointRoute, replica: ReplicaRoute) -> Served:
        return cls(
            route.deployment_id if replica.deployment_id is None else replica.deployment_id,
            route.version_id if replica.version_id is None else replica.version_id,
            route.fingerprint if replica.fingerprint is None else replica.fingerprint,
        )

    def headers(self, content_type: str, request_id: str) -> list[tuple[bytes, bytes]]:
        """Headers of every proxied response (DESIGN §4 "Inference")."""
        return [
            (b"content-type", content_type.encode("latin-1")),
            (b"x-request-id", request_id.encode("latin-1")),
            (b"x-turnout-deployment", (self.deployment_id or "").encode("latin-1")),
            (b"x-turnout-version", str(self.version_id).encode("latin-1")),
        ]


class DisconnectWatch:
    """Cancels the current task if the client disconnects; ``client_left`` then says why.

    The request body has been read, so the next ASGI message is ``http.disconnect``: sent by
    uvicorn when the client leaves, or once the response is complete (by then the request
    has called :meth:`stop`, with no ``await`` in between, so the watcher never acts on it).
    """

    __slots__ = ("_receive", "_task", "_timer", "_watcher", "client_left")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None  # made in a request handler
        self._receive = receive
        self._task = task
        self._watcher: asyncio.Task[None] | None = None
        self.client_left = False
        # A timer handle is far cheaper than a task, and is all a quick request ever costs.
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            continue
        self.client_left = True
        self._task.cancel()

    def stop(self) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()

    def absorb(self) -> None:
        """Undo the watcher's cancellation, after the request ended because of it."""
        self._task.uncancel()
