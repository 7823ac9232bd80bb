"""Wire types the gateway itself writes on ``/v1`` (DESIGN §4; reference/cerebras-api.md §4).

Chat and completion bodies are not modelled here: the gateway forwards the client's bytes and
rewrites only ``model`` and ``system_fingerprint`` in the replica's answer (see ``rewrite``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class InferenceModel(BaseModel):
    # OpenAI clients send and expect fields we do not know; keep them (STYLE 3).
    model_config = ConfigDict(extra="allow")


# reference/cerebras-api.md §4.3 `GET /v1/models`
class ModelCard(InferenceModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(InferenceModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# DESIGN §4 "Errors": the flat error body every surface renders.
class ErrorBody(InferenceModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
