"""Prometheus series of the control plane, read from the store: deployments by state, rollout
step durations, bytes synced into the weight store, replicas by state and their restarts.

Everything here is already stored, so nothing in the workers is instrumented: a loop refreshes
one snapshot every few seconds (a handful of queries) and the collector renders it at scrape
time. Gateways export their own series (``turnout_gateway_*``).
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from turnout.store import deployments, endpoints, replicas, versions
from turnout.store.db import Database
from turnout.store.records import SyncStatus

#: Upper bounds (seconds) of the rollout-step-duration histogram: a warm-up of a tiny model to
#: the weight load of a 70B model.
STEP_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, float("inf"))
#: How many of the newest deployments' step durations the histogram covers.
RECENT = 500


@dataclass(slots=True)
class Snapshot:
    deployments: Tally[str] = field(default_factory=Tally)
    #: step -> durations (seconds) of that step in recent deployments.
    steps: dict[str, list[float]] = field(default_factory=dict)
    synced_bytes: int = 0
    versions: Tally[str] = field(default_factory=Tally)
    #: (endpoint, state) -> count
    replicas: Tally[tuple[str, str]] = field(default_factory=Tally)
    #: (endpoint, replica) -> restarts
    restarts: dict[tuple[str, str], int] = field(default_factory=dict)


class ControlPlaneTelemetry(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db
        self.snapshot = Snapshot()
        self.wakeup = asyncio.Event()

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    async def reconcile(self) -> None:
        """Refresh the snapshot from the store (the control loop calls it every few seconds)."""
        snap = Snapshot()
        async with self.db.session() as s:
            recent = await deployments.list_deployments(s)
            for d in recent:
                snap.deployments[d.state.value] += 1
            history = await deployments.events_of(s, [d.id for d in recent[:RECENT]])
            for events in history.values():
                for before, after in zip(events, events[1:], strict=False):
                    snap.steps.setdefault(before.step, []).append(after.at - before.at)
            for version in await versions.versions_with_status(s, *SyncStatus):
                snap.versions[version.sync_status.value] += 1
                snap.synced_bytes += version.bytes_done
            known = {e.endpoint_id for e in await endpoints.list_endpoints(s)}
            for row in await replicas.list_replicas(s):
                if row.endpoint_id in known:
                    snap.replicas[(row.endpoint_id, row.state.value)] += 1
                    snap.restarts[(row.endpoint_id, row.id)] = row.restarts
        self.snapshot = snap

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        snap = self.snapshot
        by_state = GaugeMetricFamily(
            "turnout_deployments", "Deployments by rollout status.", labels=["state"]
        )
        for state, count in sorted(snap.deployments.items()):
            by_state.add_metric([state], count)
        yield by_state
        steps = HistogramMetricFamily(
            "turnout_rollout_step_seconds",
            f"Time spent in each rollout step (the newest {RECENT} deployments).",
            labels=["step"],
        )
        for step, durations in sorted(snap.steps.items()):
            buckets = [(_bound(b), sum(d <= b for d in durations)) for b in STEP_BUCKETS]
            steps.add_metric([step], buckets, sum(durations))
        yield steps
        synced = GaugeMetricFamily(
            "turnout_sync_bytes", "Bytes synced into the weight store (all versions, so far)."
        )
        synced.add_metric([], snap.synced_bytes)
        yield synced
        by_sync = GaugeMetricFamily(
            "turnout_model_versions", "Model versions by sync status.", labels=["sync_status"]
        )
        for status, count in sorted(snap.versions.items()):
            by_sync.add_metric([status], count)
        yield by_sync
        live = GaugeMetricFamily(
            "turnout_replicas", "Replicas by endpoint and state.", labels=["endpoint", "state"]
        )
        for (endpoint, state), count in sorted(snap.replicas.items()):
            live.add_metric([endpoint, state], count)
        yield live
        restarts = GaugeMetricFamily(
            "turnout_replica_restarts",
            "Times each replica's engine was restarted (crash or failed health checks).",
            labels=["endpoint", "replica"],
        )
        for (endpoint, replica), count in sorted(snap.restarts.items()):
            restarts.add_metric([endpoint, replica], count)
        yield restarts


def _bound(upper: float) -> str:
    return "+Inf" if upper == float("inf") else f"{upper:g}"
