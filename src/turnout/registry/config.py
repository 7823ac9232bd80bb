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
    #: S3 ``bucket/prefix/`` every org may sync from (TURNOUT_ALLOWED_S3_PREFIXES); an org's
    #: own grants add to it (:mod:`turnout.registry.scope`).
    allowed_s3_prefixes: tuple[str, ...] = ()
    #: Hugging Face ``namespace/`` or ``namespace/repo`` every org may sync from, without a
    #: token (TURNOUT_ALLOWED_HF_REPOS).
    allowed_hf_repos: tuple[str, ...] = ()
    #: The AWS profile one org's S3 sync uses (from its grant); None: the standard chain.
    s3_profile: str | None = None
    #: The Hugging Face token one org's sync uses (from its grant); None: no token at all,
    #: never the server's own HF_TOKEN.
    hf_token: str | None = None
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
