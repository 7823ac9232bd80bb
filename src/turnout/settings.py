"""Turnout's settings, read from ``TURNOUT_*`` environment variables.

Built only by the CLI (never at import) and passed down as one object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.replace(",", ":").split(":") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TURNOUT_", extra="ignore")

    data_dir: Path = Path(".turnout")
    #: SQLAlchemy URL; empty means SQLite at ``data_dir/turnout.db``.
    database_url: str = ""
    #: Bearer token for ``/admin/v1``; empty disables the admin HTTP API.
    admin_token: str = ""
    #: Directories ``file://`` weight URIs may come from (``:`` or ``,`` separated).
    allowed_local_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    #: https hosts allowed although they resolve to loopback/private addresses.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: str | None = None
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

    @field_validator("allowed_local_roots", "allowed_hosts", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_list(value)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'turnout.db').resolve()}"

    @property
    def weights_dir(self) -> Path:
        return self.data_dir / "weights"
