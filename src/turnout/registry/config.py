"""What a sync may read and write: the weight store, allowed sources and transfer limits.

A leaf of ``registry``: every source and the sync engine import it, and it imports none of
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SyncConfig:
    weights_dir: Path
    #: file:// confinement; an empty tuple allows no local source at all.
    allowed_local_roots: tuple[Path, ...]
    #: https hosts allowed although they resolve to loopback/private addresses (and which may
    #: be reached over plain http).
    allowed_hosts: tuple[str, ...] = ()
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: str | None = None  # "path" | "virtual" | "auto"
    max_total_bytes: int = 200 * 2**30
    max_files: int = 10_000
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_retries: int = 3
    part_size: int = 16 * 2**20
    max_concurrency: int = 16
