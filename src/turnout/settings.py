"""Turnout's settings, read from ``TURNOUT_*`` environment variables.

Built only by the CLI (never at import) and passed down as one object.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from turnout.errors import ConfigError

#: The shortest admin or metrics token a server accepts: a guessable token guards nothing.
MIN_TOKEN_LENGTH = 32


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.replace(",", ":").split(":") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TURNOUT_", extra="ignore")

    data_dir: Path = Path(".turnout")
    #: SQLAlchemy URL; empty means SQLite at ``data_dir/turnout.db``.
    database_url: str = ""
    #: Bearer token for ``/admin/v1``; empty disables the admin HTTP API. At least
    #: :data:`MIN_TOKEN_LENGTH` characters: a server refuses to start with a shorter one.
    admin_token: str = ""
    #: Bearer token for the gateway's Prometheus ``/metrics`` (its series name every endpoint
    #: and version); empty: ``/metrics`` is refused.
    metrics_token: str = ""
    #: Seconds per window of the gateway's traffic counts (the Metrics API and the console
    #: report the last complete one). Cerebras' Metrics API reports the last complete minute:
    #: keep 60 unless a shorter view is worth leaving that contract (tests use a few seconds).
    metrics_window: float = Field(default=60.0, ge=1, le=3600)
    #: Directories ``file://`` weight URIs may come from (``:`` or ``,`` separated).
    allowed_local_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    #: S3 ``s3://bucket/prefix`` every org may sync from (``,`` separated); an org's own
    #: grants (`turnout admin org s3-allow`) add to them. Empty: only granted ones.
    allowed_s3_prefixes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Hugging Face ``hf://namespace[/repo]`` every org may sync from, without a token
    #: (``,`` separated); an org's grants (`turnout admin org hf-allow`) add to them.
    allowed_hf_repos: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: https hosts allowed although they resolve to loopback/private addresses.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: str | None = None
    #: Bytes per ranged S3 GET; a sync resumes at part granularity.
    s3_part_size: int = Field(default=16 * 2**20, ge=64 * 2**10)
    #: Largest request body the management API accepts.
    max_body_bytes: int = 1 << 20
    max_weight_bytes: int = 200 * 2**30
    #: Seconds a new replica may take to load and answer its readiness check.
    ready_timeout: float = 600.0
    #: Seconds old replicas get to finish in-flight requests (streams too) after a switch.
    drain_timeout: float = 60.0
    #: Device for built-in engine replicas: cpu or cuda.
    device: str = "cpu"
    #: Replicas this machine can run at once (e.g. its GPUs); 0 = no limit. A rollout that
    #: cannot surge under it replaces replicas one at a time (rolling).
    max_replicas: int = 0
    #: JSON file of extra engine command templates (see docs/engines.md).
    engine_templates: Path | None = None
    #: While an endpoint's only replicas swap weights in place, gateways hold new requests
    #: this long for them instead of answering 503.
    hold_seconds: float = 30.0
    #: Seconds between liveness checks of a ready replica's health path, and each check's
    #: bound; a replica that fails two in a row is killed and restarted.
    health_interval: float = 5.0
    health_timeout: float = 5.0
    #: Where replicas run: ``local`` (subprocesses of the worker) or ``ray`` (a Ray cluster).
    placement: Literal["local", "ray"] = "local"
    #: The Ray cluster to place replicas on (``ray`` placement), e.g. ``10.0.0.1:6379``.
    ray_address: str | None = None
    #: This machine's GPU ids for local placement, e.g. ``0,1,2,3``; unset: ask NVML.
    gpus: str | None = None
    #: The control plane's URL as fleet nodes reach it (they fetch weights from it); default:
    #: the address ``turnout serve`` listens on.
    advertise_url: str | None = None
    #: Bearer token of ``/internal/v1`` (weights for fleet nodes), at least 32 characters;
    #: unset: a random one kept in ``data_dir/internal-token``, shared by every process on
    #: that data dir.
    internal_token: str = ""
    #: How Ray nodes get weights: ``auto`` reads the weight store's path when the node has it
    #: (a shared filesystem) and fetches otherwise; ``fetch`` always fetches.
    node_weights: Literal["auto", "fetch"] = "auto"

    @field_validator("allowed_local_roots", "allowed_hosts", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("allowed_s3_prefixes", "allowed_hf_repos", mode="before")
    @classmethod
    def _split_uris(cls, value: object) -> object:
        # URIs hold ':' themselves: these lists are ',' separated only.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'turnout.db').resolve()}"

    @property
    def weights_dir(self) -> Path:
        return self.data_dir / "weights"

    def resolved_internal_token(self) -> str:
        """The configured token, else the data dir's own (created once, readable by us only)."""
        if self.internal_token:
            return self.internal_token
        path = self.data_dir / "internal-token"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        self.data_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        return token


def check_secrets(settings: Settings) -> None:
    """Refuse to start with a token too short to guard anything (raises ConfigError)."""
    for name, value in (("admin_token", settings.admin_token),
                        ("metrics_token", settings.metrics_token),
                        ("internal_token", settings.internal_token)):  # fmt: skip
        if value and len(value) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"TURNOUT_{name.upper()} is {len(value)} characters; use at least "
                f"{MIN_TOKEN_LENGTH} random ones (e.g. `openssl rand -hex 32`)"
            )
