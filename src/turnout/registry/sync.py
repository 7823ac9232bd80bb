"""The sync engine: fetch a model version's weights, verify them, publish them by digest.

One sync runs these steps, each in a thread where it blocks:

1. stage   — the job's staging dir is created (or reopened, to resume) and locked;
2. fetch   — the source copies the model files into staging (:mod:`.sources`);
3. verify  — config.json and the safetensors headers must meet the architecture
             (:mod:`.validate`);
4. digest  — sha256 of every file, then of the sorted manifest (:mod:`.weightstore`);
5. publish — fsync, then one rename onto ``sha256/<hex>``; identical content is kept once.

A sync that fails (:class:`SyncFailed`, or any other error) removes its staging, so the store
holds only complete, verified directories. A sync that is *cancelled* keeps its staging: the
worker may be shutting down, and the next sync with the same ``job_id`` resumes from it (S3
downloads skip the parts already fetched). :func:`discard_staging` drops it for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from turnout.registry.architectures import Architecture
from turnout.registry.config import SyncConfig
from turnout.registry.scope import Grant, scoped_config
from turnout.registry.sources import open_source
from turnout.registry.sources.base import (
    FetchContext,
    ProgressCallback,
    ProgressMeter,
    SyncFailed,
)
from turnout.registry.validate import find_problems
from turnout.registry.weightstore import StagingBusy, WeightStore, hash_model_dir

__all__ = [
    "ProgressCallback",
    "SyncFailed",
    "SyncRequest",
    "SyncResult",
    "check_org_source",
    "check_source_uri",
    "discard_staging",
    "sync_weights",
]

log = logging.getLogger(__name__)

#: How many validation problems one message lists (the rest are counted).
_SHOW_PROBLEMS = 5


@dataclass(frozen=True, slots=True)
class SyncRequest:
    #: Stable per model version (e.g. "my-org/tiny-llama/3"); staging is keyed by it.
    job_id: str
    #: s3://bucket/prefix, file:///abs/dir or /abs/dir, https://..., hf://org/repo[@rev]
    source_uri: str
    architecture: Architecture


@dataclass(frozen=True, slots=True)
class SyncResult:
    #: "sha256:<hex>" over the sorted manifest of (relative path, size, file sha256).
    digest: str
    #: The published, read-only directory in the weight store.
    path: Path
    total_bytes: int
    file_count: int


def check_source_uri(uri: str, config: SyncConfig) -> None:
    """Cheap upload-time check; raises SourceNotAllowed or BadRequest naming the problem."""
    open_source(uri, config)


def check_org_source(uri: str, config: SyncConfig, org: str, grants: Iterable[Grant]) -> None:
    """The upload-time check for one org: its rules (:mod:`.scope`), then the URI itself."""
    open_source(uri, scoped_config(uri, config, org, grants))


def discard_staging(job_id: str, config: SyncConfig) -> None:
    """Drop an abandoned sync's staging (partial downloads and resume state)."""
    WeightStore(config.weights_dir).discard(job_id)


async def sync_weights(
    request: SyncRequest, config: SyncConfig, progress: ProgressCallback | None = None
) -> SyncResult:
    """Fetch, verify, digest and publish one model version's weights."""
    try:
        source = open_source(request.source_uri, config)
    except SyncFailed:
        raise
    except Exception as exc:  # SourceNotAllowed/BadRequest: at sync time they fail the sync
        raise SyncFailed(str(exc)) from exc
    store = WeightStore(config.weights_dir)
    try:
        with store.staging(request.job_id) as staging:
            try:
                ctx = FetchContext(staging, config, ProgressMeter(progress))
                await source.fetch(ctx)
                await ctx.meter.report(force=True)
                await asyncio.to_thread(_verify, staging.model, request, source.uri)
                manifest = await asyncio.to_thread(hash_model_dir, staging.model)
                path = await asyncio.to_thread(store.publish, staging, manifest)
            except Exception as exc:
                # Cancellation (a BaseException) skips this and keeps staging for a resume.
                store.discard(request.job_id)
                if isinstance(exc, SyncFailed):
                    raise
                if isinstance(exc, OSError):
                    # The tenant sees the version's error: no server paths in it.
                    log.warning("sync of %s: weight store I/O failed: %s", request.job_id, exc)
                    raise SyncFailed(
                        f"the server's weight store failed ({exc.strerror or 'I/O error'}); "
                        "retry later, or ask the operator"
                    ) from exc
                raise
    except StagingBusy as exc:
        raise SyncFailed(
            f"another sync of {request.job_id} is running; wait for it to finish"
        ) from exc
    except OSError as exc:
        log.warning("sync of %s: cannot create staging in %s: %s", request.job_id,
                    config.weights_dir, exc)  # fmt: skip
        raise SyncFailed(
            f"the server's weight store failed ({exc.strerror or 'I/O error'}); retry later, or "
            "ask the operator"
        ) from exc
    return SyncResult(
        digest=f"sha256:{manifest.hexdigest}",
        path=path,
        total_bytes=manifest.total_bytes,
        file_count=len(manifest.files),
    )


def _verify(model_dir: Path, request: SyncRequest, uri: str) -> None:
    problems = find_problems(model_dir, request.architecture)
    if not problems:
        return
    shown = "; ".join(problems[:_SHOW_PROBLEMS])
    more = len(problems) - _SHOW_PROBLEMS
    suffix = f"; and {more} more problems" if more > 0 else ""
    raise SyncFailed(
        f"weights at {uri} do not match architecture {request.architecture.arch_id}: "
        f"{shown}{suffix}"
    )
