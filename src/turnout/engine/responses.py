"""Turning generation results into wire responses: JSON bodies and data-only SSE streams."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import BaseModel

from turnout.engine.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChunkDelta,
    CompletionChoice,
    CompletionResponse,
    Usage,
)
from turnout.engine.serving import EngineService, Outcome, Prepared
from turnout.errors import TurnoutError

logger = logging.getLogger(__name__)

Kind = Literal["chat", "completion"]


def new_id() -> str:
    # The reference's recorded traffic uses chatcmpl- ids for completions too.
    return f"chatcmpl-{uuid.uuid4()}"


def _usage(outcome: Outcome) -> Usage:
    return Usage(
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
    )


def chat_response(
    service: EngineService, prepared: Prepared, outcome: Outcome
) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id=new_id(),
        choices=[
            ChatChoice(
                message=AssistantMessage(content=outcome.text),
                finish_reason=outcome.finish_reason,
            )
        ],
        created=int(prepared.created),
        model=service.served_name,
        system_fingerprint=prepared.loaded.fingerprint,
        usage=_usage(outcome),
        time_info=outcome.time_info,
    )


def completion_response(
    service: EngineService, prepared: Prepared, outcome: Outcome
) -> CompletionResponse:
    return CompletionResponse(
        id=new_id(),
        choices=[CompletionChoice(text=outcome.text, finish_reason=outcome.finish_reason)],
        created=int(prepared.created),
        model=service.served_name,
        system_fingerprint=prepared.loaded.fingerprint,
        usage=_usage(outcome),
        time_info=outcome.time_info,
    )


def _sse(body: BaseModel | str) -> str:
    data = body.model_dump_json(exclude_none=True) if isinstance(body, BaseModel) else body
    return f"data: {data}\n\n"


class _ChunkMaker:
    """Builds the chunks of one stream; id, created, model and fingerprint repeat on each."""

    def __init__(self, kind: Kind, service: EngineService, prepared: Prepared) -> None:
        self.kind = kind
        self.common = {
            "id": new_id(),
            "created": int(prepared.created),
            "model": service.served_name,
            "system_fingerprint": prepared.loaded.fingerprint,
        }

    def first(self) -> BaseModel | None:
        if self.kind != "chat":
            return None
        return ChatCompletionChunk(
            choices=[ChatChunkChoice(delta=ChunkDelta(role="assistant"))], **self.common
        )

    def text(self, piece: str) -> BaseModel:
        if self.kind == "chat":
            return ChatCompletionChunk(
                choices=[ChatChunkChoice(delta=ChunkDelta(content=piece))], **self.common
            )
        return CompletionResponse(choices=[CompletionChoice(text=piece)], **self.common)

    def last(self, outcome: Outcome) -> BaseModel:
        reason = outcome.finish_reason
        if self.kind == "chat":
            choice = ChatChunkChoice(delta=ChunkDelta(), finish_reason=reason)
            return ChatCompletionChunk(choices=[choice], **self.common)
        return CompletionResponse(
            choices=[CompletionChoice(text="", finish_reason=reason)], **self.common
        )

    def usage(self, outcome: Outcome) -> BaseModel:
        # OpenAI's include_usage shape: one more chunk, with no choices, carrying the totals.
        model = ChatCompletionChunk if self.kind == "chat" else CompletionResponse
        return model(choices=[], usage=_usage(outcome), time_info=outcome.time_info, **self.common)


async def sse_stream(kind: Kind, service: EngineService, prepared: Prepared) -> AsyncIterator[str]:
    """The full event stream of one request. Closing it (client gone) frees the slot."""
    chunks = _ChunkMaker(kind, service, prepared)
    first = chunks.first()
    if first is not None:
        yield _sse(first)
    try:
        async for item in service.run(prepared):
            if isinstance(item, Outcome):
                yield _sse(chunks.last(item))
                if prepared.include_usage:
                    yield _sse(chunks.usage(item))
            else:
                yield _sse(chunks.text(item))
    except TurnoutError as exc:
        # Headers are gone already: the error travels as an event, as OpenAI servers do.
        logger.warning("stream failed: %s", exc.message)
        yield _sse(json.dumps({"error": exc.body()}))
    yield "data: [DONE]\n\n"
