"""Gateway-side followers of the store: inference keys, and (for ``--role gateway``) the
routing generation. Each is a controller with a ``reconcile()`` pass for the control loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Protocol

from turnout.routing.feed import TableHolder, build_routes, next_table
from turnout.routing.table import KeyEntry
from turnout.store import routing, tenants
from turnout.store.db import Database

log = logging.getLogger(__name__)


class KeyTable(Protocol):
    """The gateway's in-memory inference keys (``hash -> entry``)."""

    def replace(self, mapping: Mapping[str, KeyEntry]) -> None: ...


class KeyRefresher:
    """Reload the active inference keys with their limits, so a new key works, a revoked one
    stops working and a changed limit applies without a restart. One indexed read per pass;
    the gateway never reads the store itself."""

    def __init__(self, db: Database, keys: KeyTable) -> None:
        self.db = db
        self.keys = keys
        self.wakeup = asyncio.Event()

    async def reconcile(self) -> None:
        async with self.db.session() as s:
            grants = await tenants.active_inference_keys(s)
        self.keys.replace(
            {
                g.key_hash: KeyEntry(g.org_name, g.key_id, g.rpm, g.tpm, g.org_max_concurrent)
                for g in grants
            }
        )


class StoreFollower:
    """A gateway in its own process: rebuild the routing table from the store when the
    generation moves and acknowledge it at once; refresh keys and the heartbeat once a second.

    It polls every 250 ms so a switch reaches it quickly, but only a generation change costs a
    rebuild and a write; otherwise a pass is one indexed read.
    """

    #: Seconds between key-cache refreshes, heartbeats and stats reports (well inside the
    #: worker's 5 s liveness window for gateways).
    REFRESH = 1.0

    def __init__(
        self,
        db: Database,
        gateway: TableHolder,
        keys: KeyTable,
        gateway_id: str,
        hold_seconds: float = 30.0,
    ):
        self.db = db
        self.gateway = gateway
        self.keys = KeyRefresher(db, keys)
        self.gateway_id = gateway_id
        self.hold_seconds = hold_seconds
        self.wakeup = asyncio.Event()
        self._seen = -1
        self._refreshed = float("-inf")

    async def reconcile(self) -> None:
        now = time.monotonic()
        due = now - self._refreshed >= self.REFRESH
        if due:
            await self.keys.reconcile()
            self._refreshed = now
        async with self.db.session() as s:
            generation = await routing.routing_generation(s)
            moved = generation != self._seen
            if moved:
                table = next_table(self.gateway.current(), await build_routes(s, self.hold_seconds))
                if table is not None:
                    self.gateway.swap(table)
                    log.info(
                        "gateway %s follows generation %d: %s", self.gateway_id, generation, table
                    )
                self._seen = generation
            if moved or due:
                await routing.record_gateway(s, self.gateway_id, generation)
            if due:  # what this gateway counted, for canary gates judged by the worker
                counted = self.gateway.stats_snapshot()
                await routing.record_gateway_stats(
                    s, self.gateway_id, {d: v.to_dict() for d, v in counted.items()}
                )
