"""The router that picks a replica for each request from the current routing table.

The gateway never asks the store on the request path: the worker builds a complete
:class:`RoutingTable` and hands it to :meth:`Router.swap`, which replaces the table in one
reference assignment (DESIGN §3 step 3, "switch"). A request keeps the replica it was given,
so requests running on old replicas finish there while new ones go to the new table.

The router also counts in-flight proxied requests per replica (streams included). It picks
the replica with the fewest (ties go round robin) and lets the controller wait for old replicas
to drain (DESIGN §3 step 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Collection

from turnout.routing.stats import VersionStats
from turnout.routing.table import EndpointRoute, ReplicaRoute, RoutingTable


class Router:
    """Owns the current routing table and the per-replica outstanding-request counters.

    Not thread-safe: every method runs on the gateway's event loop (the rollout worker of the
    same process calls ``swap`` there; a worker in another process notifies a task that does).
    """

    def __init__(self, table: RoutingTable | None = None) -> None:
        self._table = table or RoutingTable()
        # Only replicas with at least one request in flight have an entry, so replicas that
        # left the table do not accumulate.
        self._outstanding: dict[str, int] = {}
        self._next = 0
        self._drain_waiters: set[asyncio.Event] = set()
        #: What the proxy counted per deployment (canary gates read it through the feed).
        self._stats: dict[str, VersionStats] = {}
        #: Set (and replaced) on every swap: held requests wait on it.
        self._changed = asyncio.Event()

    def swap(self, table: RoutingTable) -> None:
        self._table = table
        # Requests held for an endpoint whose replicas swap weights look again.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_replicas(self, endpoint_id: str, timeout: float) -> None:
        """Return once the table gives ``endpoint_id`` a ready replica, or after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            route = self._table.endpoints.get(endpoint_id)
            left = deadline - loop.time()
            if route is None or route.replicas or left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def split(
        self, route: EndpointRoute, serving: tuple[ReplicaRoute, ...], key: bytes | None
    ) -> tuple[ReplicaRoute, ...]:
        """A canary's share of requests to its new version: by the session's bucket (one of
        10,000; below the weight goes new), or at random without a session key."""
        canary = route.canary
        assert canary is not None
        if not canary.replicas:
            return serving
        if key is None:
            new = random.random() * 100 < canary.percent
        else:
            bucket = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big") % 10_000
            new = bucket < canary.percent * 100
        return canary.replicas if new else serving

    def current(self) -> RoutingTable:
        return self._table

    def stats_for(self, deployment_id: str) -> VersionStats:
        """The live counters of one deployment, for the proxy to add to."""
        found = self._stats.get(deployment_id)
        if found is None:
            found = self._stats[deployment_id] = VersionStats()
        return found

    def stats_snapshot(self) -> dict[str, VersionStats]:
        return {d: s.copy() for d, s in self._stats.items()}

    def outstanding(self, replica_id: str) -> int:
        return self._outstanding.get(replica_id, 0)

    def acquire(
        self, replicas: tuple[ReplicaRoute, ...], exclude: ReplicaRoute | None = None
    ) -> ReplicaRoute:
        """Pick the replica with the fewest requests in flight and count one more on it.

        ``exclude`` is the replica that just failed to connect; it is skipped unless it is
        the only one. The caller must :meth:`release` the returned replica exactly once.
        """
        count = len(replicas)
        if count == 0:
            raise ValueError("acquire() needs at least one replica")
        counts = self._outstanding
        start = self._next
        self._next = start + 1
        best: ReplicaRoute | None = None
        best_load = -1
        # Start the scan at a rotating offset so ties are broken round robin.
        for i in range(count):
            replica = replicas[(start + i) % count]
            if replica is exclude and count > 1:
                continue
            load = counts.get(replica.replica_id, 0)
            if best is None or load < best_load:
                best, best_load = replica, load
                if load == 0:
                    break
        assert best is not None  # at least one replica was considered
        counts[best.replica_id] = best_load + 1
        return best

    def release(self, replica: ReplicaRoute) -> None:
        rid = replica.replica_id
        left = self._outstanding.get(rid, 0) - 1
        if left > 0:
            self._outstanding[rid] = left
            return
        self._outstanding.pop(rid, None)
        for event in self._drain_waiters:
            event.set()

    async def wait_drained(self, replica_ids: Collection[str], timeout: float) -> bool:
        """Wait until none of ``replica_ids`` has a request in flight; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        self._drain_waiters.add(event)
        try:
            # Woken each time some replica reaches zero; re-check the ones we care about.
            while any(rid in self._outstanding for rid in replica_ids):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                event.clear()
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    return not any(rid in self._outstanding for rid in replica_ids)
            return True
        finally:
            self._drain_waiters.discard(event)
