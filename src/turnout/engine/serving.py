"""The engine's service layer: request validation, prompt building and generation.

Routes call :meth:`EngineService.prepare_chat` / :meth:`prepare_completion` (which raise the
:mod:`turnout.errors` tree for bad requests) and then iterate :meth:`EngineService.run`, which
yields text pieces as they become safe to send and ends with one :class:`Outcome`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from turnout.engine.detokenizer import Detokenizer
from turnout.engine.model import LoadedModel
from turnout.engine.scheduler import BatchScheduler, Finished, SamplingParams, Timing
from turnout.engine.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    TimeInfo,
)
from turnout.errors import BadRequest, ContextLengthExceeded, TurnoutError, UnsupportedParameter

logger = logging.getLogger(__name__)

Check = Callable[[Any], bool]

#: Parameters of the published API that this engine does not implement, with the test that
#: says a request really asked for them (a neutral value such as ``n=1`` is accepted).
_SHARED_UNSUPPORTED: tuple[tuple[str, Check], ...] = (
    ("n", lambda v: v not in (None, 1)),
    ("logit_bias", bool),
    ("frequency_penalty", bool),
    ("presence_penalty", bool),
    ("min_tokens", bool),
)
_CHAT_UNSUPPORTED: tuple[tuple[str, Check], ...] = (
    *_SHARED_UNSUPPORTED,
    ("tools", bool),
    ("tool_choice", lambda v: v not in (None, "none")),
    ("logprobs", bool),
    ("top_logprobs", bool),
    ("response_format", lambda v: v is not None and v.type != "text"),
    ("prediction", lambda v: v is not None),
    ("min_completion_tokens", bool),
)
_COMPLETION_UNSUPPORTED: tuple[tuple[str, Check], ...] = (
    *_SHARED_UNSUPPORTED,
    ("best_of", lambda v: v not in (None, 1)),
    ("echo", bool),
    ("logprobs", bool),
    ("suffix", lambda v: v is not None),
    ("grammar_root", lambda v: v is not None),
    ("return_raw_tokens", bool),
)


@dataclass(frozen=True, slots=True)
class Prepared:
    prompt_ids: list[int]
    params: SamplingParams
    stop: tuple[str, ...]
    include_usage: bool
    #: time.time() when the request arrived; ``created`` in responses.
    created: float
    started: float


@dataclass(frozen=True, slots=True)
class Outcome:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    time_info: TimeInfo


class EngineService:
    def __init__(self, loaded: LoadedModel, scheduler: BatchScheduler, served_name: str) -> None:
        self.loaded = loaded
        self.scheduler = scheduler
        self.served_name = served_name

    @property
    def fingerprint(self) -> str:
        return self.loaded.fingerprint

    # --- preparing requests --------------------------------------------------------------------

    def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        created, started = time.time(), time.perf_counter()
        _refuse_unsupported(req, _CHAT_UNSUPPORTED)
        if not req.messages:
            raise BadRequest("'messages' must hold at least one message.", param="messages")
        tok = self.loaded.tokenizer
        if tok.chat_template is None:
            raise BadRequest(
                "This model has no chat template; use /v1/completions.", param="messages"
            )
        messages = [{"role": m.role, "content": _text_of(m, i)} for i, m in enumerate(req.messages)]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        wanted = req.max_completion_tokens or req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        return self._prepared(req, ids, wanted, param, "messages", created, started)

    def prepare_completion(self, req: CompletionRequest) -> Prepared:
        created, started = time.time(), time.perf_counter()
        _refuse_unsupported(req, _COMPLETION_UNSUPPORTED)
        ids = self._prompt_ids(req.prompt)
        return self._prepared(req, ids, req.max_tokens, "max_tokens", "prompt", created, started)

    def _prompt_ids(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[int]:
        one: str | list[int] | list[str] | list[list[int]] = prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise UnsupportedParameter(
                    "Batched prompts are not supported; send one prompt per request.",
                    param="prompt",
                )
            one = prompt[0]  # a one-element batch
        if isinstance(one, str):
            ids = list(self.loaded.tokenizer(one)["input_ids"])
        else:
            ids = [int(t) for t in one if isinstance(t, int)]
        vocab = len(self.loaded.tokenizer)
        if not ids:
            raise BadRequest("'prompt' must not be empty.", param="prompt")
        if any(t < 0 or t >= vocab for t in ids):
            raise BadRequest(f"'prompt' token ids must be in [0, {vocab}).", param="prompt")
        return ids

    def _prepared(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        ids: list[int],
        wanted: int | None,
        max_param: str,
        prompt_param: str,
        created: float,
        started: float,
    ) -> Prepared:
        limit = self.loaded.max_model_len
        room = limit - len(ids)
        if room <= 0 or (wanted is not None and wanted > room):
            asked = f"{len(ids)} tokens in the {prompt_param}"
            if wanted is not None:
                asked = f"{len(ids) + wanted} tokens ({asked} and {wanted} for the completion)"
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, but you requested "
                f"{asked}. Shorten the {prompt_param} or lower {max_param}.",
                param=prompt_param if room <= 0 else max_param,
            )
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        if any(not s for s in stop):
            raise BadRequest("'stop' strings must not be empty.", param="stop")
        params = SamplingParams(
            max_new_tokens=wanted or room,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
        )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Prepared(ids, params, stop, include_usage, created, started)

    # --- generating ----------------------------------------------------------------------------

    async def run(self, prepared: Prepared) -> AsyncIterator[str | Outcome]:
        """Yield text pieces, then one Outcome. Closing the iterator early frees the slot."""
        stream = self.scheduler.submit(prepared.prompt_ids, prepared.params)
        detok = Detokenizer(self.loaded.tokenizer, prepared.stop)
        produced = 0
        finished: Finished | None = None
        try:
            async for event in stream:
                if isinstance(event, Finished):
                    finished = event
                    break
                produced += 1
                piece = detok.push(event)
                if piece:
                    yield piece
                if detok.stopped:
                    break
        finally:
            if finished is None:
                stream.cancel()
        if finished is not None and finished.reason not in ("stop", "length"):
            raise TurnoutError(
                f"Generation was {finished.reason}; retry the request.", code="generation_failed"
            )
        tail = detok.flush()
        if tail:
            yield tail
        reason: Literal["stop", "length"] = "stop"
        if finished is not None and not detok.stopped:
            reason = "stop" if finished.reason == "stop" else "length"
        yield Outcome(
            text=detok.text,
            finish_reason=reason,
            prompt_tokens=len(prepared.prompt_ids),
            completion_tokens=produced,
            time_info=_time_info(prepared, stream.timing),
        )

    async def collect(self, prepared: Prepared) -> Outcome:
        async for item in self.run(prepared):
            if isinstance(item, Outcome):
                return item
        raise TurnoutError("generation ended without a result", code="generation_failed")


def _refuse_unsupported(req: BaseModel, table: tuple[tuple[str, Check], ...]) -> None:
    for name, asked_for in table:
        if asked_for(getattr(req, name, None)):
            raise UnsupportedParameter(
                f"The built-in engine does not support '{name}'; remove it from the request.",
                param=name,
            )
    if req.model_extra:
        logger.info("ignoring unknown request fields: %s", sorted(req.model_extra))


def _text_of(message: ChatMessage, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise UnsupportedParameter(
                f"Content parts of type '{part.type}' are not supported; send text only.",
                param=f"messages.{index}.content",
            )
        parts.append(part.text)
    return "".join(parts)


def _time_info(prepared: Prepared, timing: Timing) -> TimeInfo:
    now = time.perf_counter()
    # A stop string ends the request before the scheduler marks the sequence finished.
    end = timing.finished or now
    return TimeInfo(
        queue_time=max(0.0, timing.admitted - timing.submitted),
        prompt_time=max(0.0, timing.prefilled - timing.admitted),
        completion_time=max(0.0, end - timing.prefilled),
        total_time=max(0.0, now - prepared.started),
        created=prepared.created,
    )
