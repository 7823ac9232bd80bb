"""Wire types of the built-in engine: the OpenAI/Cerebras inference surface it serves.

Fields follow ``reference/cerebras-api.md`` ("Chat completions", "Completions") in order. Every
model inherits :class:`InferenceModel`, which accepts unknown fields (OpenAI clients send fields
we do not know; the service logs them). Fields we know but do not implement (tools, logprobs,
``n`` > 1, ...) are declared here so that the service can refuse them by name; the checks
themselves live in :mod:`turnout.engine.serving`, never here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The seeds a torch generator takes (``Generator.manual_seed``); others are a 400, not a crash
#: of the scheduler thread.
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1


class InferenceModel(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- requests --------------------------------------------------------------------------------


class ContentPart(InferenceModel):
    type: str
    text: str | None = None


class ChatMessage(InferenceModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(InferenceModel):
    include_usage: bool = False


class ResponseFormat(InferenceModel):
    type: Literal["text", "json_object", "json_schema"]


Stop = str | list[str] | None


class ChatCompletionRequest(InferenceModel):
    # reference/cerebras-api.md, "Chat completions": request parameters.
    model: str | None = None
    messages: list[ChatMessage]
    clear_thinking: bool | None = None
    disable_reasoning: bool | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    min_completion_tokens: int | None = None
    min_tokens: int | None = None
    n: int | None = Field(default=None, ge=1)
    parallel_tool_calls: bool | None = None
    prediction: dict[str, Any] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    reasoning_format: Literal["none", "parsed", "text_parsed", "raw", "hidden"] | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    stop: Stop = Field(default=None, max_length=4)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    top_p: float | None = Field(default=None, gt=0, le=1)
    user: str | None = None


class CompletionRequest(InferenceModel):
    # reference/cerebras-api.md, "Completions": request parameters.
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(default=None, ge=1)
    echo: bool | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    grammar_root: str | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int | None = None
    n: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    reasoning_format: str | None = None
    return_raw_tokens: bool | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stop: Stop = Field(default=None, max_length=4)
    stream: bool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    user: str | None = None


# --- responses -------------------------------------------------------------------------------


class Usage(InferenceModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TimeInfo(InferenceModel):
    queue_time: float
    prompt_time: float
    completion_time: float
    total_time: float
    created: float


class AssistantMessage(InferenceModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(InferenceModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(InferenceModel):
    id: str
    choices: list[ChatChoice]
    created: int
    model: str
    system_fingerprint: str
    object: Literal["chat.completion"] = "chat.completion"
    usage: Usage
    time_info: TimeInfo


class ChunkDelta(InferenceModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(InferenceModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(InferenceModel):
    # Rendered with exclude_none: keys are absent, not null, in non-final chunks (as on the wire).
    id: str
    choices: list[ChatChunkChoice]
    created: int
    model: str
    system_fingerprint: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Usage | None = None
    time_info: TimeInfo | None = None


class CompletionChoice(InferenceModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(InferenceModel):
    # Streamed chunks use this same shape (object "text_completion"), without usage until the end.
    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    system_fingerprint: str
    object: Literal["text_completion"] = "text_completion"
    usage: Usage | None = None
    time_info: TimeInfo | None = None


class ModelCard(InferenceModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "turnout"
    max_model_len: int | None = None


class ModelList(InferenceModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# Turnout extensions (not in the published API)


class EngineStats(InferenceModel):
    ready: bool
    active: int
    queued: int
    cancelled: int
    max_batch_size: int
    #: Seconds the scheduler has had work without finishing a step (0 when idle).
    seconds_since_progress: float = 0.0
    #: A weight swap is running; ``held`` requests wait for it at the admission gate.
    swapping: bool = False
    held: int = 0


# SGLang's weight-update wire format (sglang/srt/managers/io_struct.py,
# UpdateWeightFromDiskReqInput / UpdateWeightFromDiskReqOutput; http_server.py routes), so one
# rollout mechanism drives both engines.


class UpdateWeightsFromDiskRequest(InferenceModel):
    model_path: str = Field(min_length=1)
    #: Only the default format (HF safetensors) is read; anything else is refused.
    load_format: str | None = None
    #: Refused when true: in-flight requests always finish on the weights they started with.
    abort_all_requests: bool = False
    weight_version: str | None = None
    # Turnout extensions (not in SGLang's API)
    #: Seconds to wait for in-flight requests before giving up (default: the engine's).
    drain_timeout: float | None = Field(default=None, gt=0)


class UpdateWeightsFromDiskResponse(InferenceModel):
    success: bool
    message: str
    num_paused_requests: int = 0


class ModelInfo(InferenceModel):
    # SGLang's GET /get_model_info fields.
    model_path: str
    tokenizer_path: str
    is_generation: bool = True
    preferred_sampling_params: str | None = None
    weight_version: str
    # Turnout extensions (not in SGLang's API)
    served_model_name: str
    system_fingerprint: str
    max_model_len: int
