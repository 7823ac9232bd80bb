"""Wire types for model versions (reference §1.2–§1.6)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from turnout.api.schemas.base import ManagementModel, OperationError
from turnout.ids import ALIAS_PATTERN, FINGERPRINT_SUFFIX_PATTERN

SyncStatusName = Literal["queued", "in_progress", "done", "failed"]

# Schema patterns are checked by pydantic-core's regex engine, where ``$`` ends the text (a
# trailing newline does not match): a violation is a 422 naming the field path.
Alias = Annotated[str, Field(pattern=ALIAS_PATTERN.pattern, examples=["production"])]
FingerprintSuffix = Annotated[str, Field(pattern=FINGERPRINT_SUFFIX_PATTERN.pattern)]


class UploadModel(ManagementModel):
    # reference §1.3 (`model` object of the upload request)
    weight_uri: str = Field(
        min_length=1,
        max_length=4096,
        description="s3://bucket/prefix, file:///dir (or an absolute path), https://… or hf://org/repo",
        examples=["s3://my-bucket/model-weights"],
    )
    version_aliases: list[Alias] = Field(default_factory=list, max_length=64)
    system_fingerprint_suffix: FingerprintSuffix | None = Field(
        default=None, examples=["my-custom-suffix"]
    )


class UploadRequest(ManagementModel):
    # reference §1.3
    model_arch_id: str = Field(min_length=1, max_length=128, examples=["tiny-llama"])
    model: UploadModel


class SyncProgress(ManagementModel):
    bytes_done: int
    bytes_total: int


class ModelVersionStatus(ManagementModel):
    # reference §1.4 `response`
    customer_s3_uri: str
    version_aliases: list[str]
    sync_status: SyncStatusName
    system_fingerprint_suffix: str | None = None
    # Turnout extensions (not in the published API)
    sync_progress: SyncProgress | None = None
    digest: str | None = None
    created: int | None = None
    updated: int | None = None


class ModelVersion(ManagementModel):
    # reference §1.4
    name: str = Field(examples=["orgs/my-org/models/tiny-llama/versions/1"])
    done: bool
    response: ModelVersionStatus
    # Turnout extension (AIP-151): present when sync_status is failed
    error: OperationError | None = None


class ModelVersionList(ManagementModel):
    # reference §1.2
    model_versions: list[ModelVersion]


class AliasUpdate(ManagementModel):
    # reference §1.5
    version_aliases: list[Alias] = Field(max_length=64, examples=[["production", "v1-stable"]])


class AliasUpdateResponse(ManagementModel):
    # reference §1.5
    name: str
    version_aliases: list[str]


class VersionDeleted(ManagementModel):
    # reference §1.6 (the example's shape; DESIGN §4)
    name: str
    deleted: bool
