"""The management API's wire base: unknown fields are a 422 naming the field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ManagementModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OperationError(ManagementModel):
    """Beside ``response`` when an operation failed (Google AIP-151)."""

    code: str
    message: str
