"""Wire types for architectures (reference §1.1)."""

from __future__ import annotations

from pydantic import Field

from turnout.api.schemas.base import ManagementModel


class ArchitectureList(ManagementModel):
    # reference §1.1
    model_architectures: list[str] = Field(examples=[["tiny-llama", "smollm2-135m"]])
