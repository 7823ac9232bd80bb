"""The management API's wire base: unknown fields are a 422 naming the field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ManagementModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OperationError(ManagementModel):
    """Beside ``response`` when an operation failed (Google AIP-151)."""

    code: str
    message: str


class ErrorBody(ManagementModel):
    """Every error response (DESIGN §4): the inference API's flat shape, on every surface."""

    message: str = Field(examples=["endpoint 'x' does not exist or your org does not manage it"])
    type: str = Field(examples=["not_found_error"])
    param: str | None = Field(examples=["endpoint_id"])
    code: str | None = Field(examples=["endpoint_not_found"])
