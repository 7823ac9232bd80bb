"""The sync worker: takes queued model versions from the store, syncs their weights into the
weight store, and records the outcome. A crash mid-sync is healed on start: versions left
``in_progress`` are queued again and resume from their staging directory."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from turnout.errors import TurnoutError
from turnout.registry.architectures import get_architecture
from turnout.registry.config import SyncConfig
from turnout.registry.scope import Grant, scoped_config
from turnout.registry.sync import SyncFailed, SyncRequest, sync_weights
from turnout.store import sources, versions
from turnout.store.db import Database
from turnout.store.records import ModelVersion, SyncStatus

log = logging.getLogger(__name__)


def job_id(version: ModelVersion) -> str:
    return f"{version.org_name}/{version.arch_id}/{version.version_number}"


class SyncWorker:
    def __init__(self, db: Database, config: SyncConfig, *, concurrency: int = 2) -> None:
        self.db = db
        self.config = config
        self.wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: dict[int, asyncio.Task[None]] = {}

    def notify(self) -> None:
        self.wakeup.set()

    async def recover(self) -> None:
        """Queue again what a previous process left in progress (its staging is reused)."""
        async with self.db.session() as s:
            for v in await versions.versions_with_status(s, SyncStatus.IN_PROGRESS):
                log.info("resuming interrupted sync of %s", v.name)
                await versions.update_sync(s, v.id, status=SyncStatus.QUEUED)

    async def reconcile(self) -> None:
        """One pass: start a sync task for every queued version not already running."""
        async with self.db.session() as s:
            queued = await versions.versions_with_status(s, SyncStatus.QUEUED)
        for version in queued:
            if version.id not in self._running:
                task = asyncio.create_task(self._run(version), name=f"sync {version.name}")
                self._running[version.id] = task
                task.add_done_callback(partial(self._forget, version.id))

    def _forget(self, version_id: int, _task: asyncio.Task[None]) -> None:
        self._running.pop(version_id, None)

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def _run(self, version: ModelVersion) -> None:
        async with self._slots:
            await self._sync(version)

    async def _sync(self, version: ModelVersion) -> None:
        arch = get_architecture(version.arch_id)
        async with self.db.session() as s:
            await versions.update_sync(s, version.id, status=SyncStatus.IN_PROGRESS)
        if arch is None:
            await self._fail(version, f"architecture {version.arch_id!r} is not in the catalog")
            return
        last_write = 0.0

        async def progress(done: int, total: int) -> None:
            nonlocal last_write
            if time.monotonic() - last_write < 0.5 and done < total:
                return
            last_write = time.monotonic()
            async with self.db.session() as s:
                await versions.update_sync(
                    s, version.id, status=SyncStatus.IN_PROGRESS, bytes_done=done, bytes_total=total
                )

        request = SyncRequest(
            job_id=job_id(version), source_uri=version.weight_uri, architecture=arch
        )
        try:
            # Judged again at sync time: the operator may have withdrawn the grant since.
            async with self.db.session() as s:
                own = [
                    Grant(g.scheme, g.prefix, g.credentials)
                    for g in await sources.grants(s, version.org_id)
                ]
            config = scoped_config(version.weight_uri, self.config, version.org_name, own)
        except TurnoutError as exc:
            await self._fail(version, exc.message)
            return
        try:
            result = await sync_weights(request, config, progress)
        except SyncFailed as exc:
            await self._fail(version, exc.message)
            return
        except Exception as exc:  # the one guarded boundary: a bug must not leave it in_progress
            log.exception("sync of %s crashed", version.name)
            await self._fail(version, f"internal error during sync: {exc}")
            return
        async with self.db.session() as s:
            await versions.update_sync(
                s,
                version.id,
                status=SyncStatus.DONE,
                bytes_done=result.total_bytes,
                bytes_total=result.total_bytes,
                digest=result.digest,
                weight_path=str(result.path),
            )
        log.info("synced %s: %s (%d bytes)", version.name, result.digest, result.total_bytes)

    async def _fail(self, version: ModelVersion, message: str) -> None:
        log.warning("sync of %s failed: %s", version.name, message)
        async with self.db.session() as s:
            await versions.update_sync(s, version.id, status=SyncStatus.FAILED, error=message)
