"""The engine's service layer: admission, request validation, prompt building and generation.

Routes first :meth:`EngineService.admit` a request (it may wait while the weights are swapped;
see :mod:`turnout.engine.gate`), then call :meth:`EngineService.prepare_chat` /
:meth:`prepare_completion` with the admitted model (they raise the :mod:`turnout.errors` tree for
bad requests) and iterate :meth:`EngineService.run`, which yields text pieces as they become
safe to send and ends with one :class:`Outcome`. A request uses one :class:`LoadedModel` from
admission to its last byte: its tokenizer, its weights, its fingerprint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from turnout.engine.detokenizer import Detokenizer
from turnout.engine.gate import AdmissionGate
from turnout.engine.model import LoadedModel
from turnout.engine.sampling import SamplingParams
from turnout.engine.scheduler import BatchScheduler, Finished, Timing
from turnout.engine.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    TimeInfo,
)
from turnout.errors import (
    BadRequest,
    ContextLengthExceeded,
    EndpointNotReady,
    TurnoutError,
    UnsupportedParameter,
)

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


class Admission:
    """One admitted request: the model it uses, and the release that lets a swap proceed."""

    def __init__(self, loaded: LoadedModel, gate: AdmissionGate) -> None:
        self.loaded = loaded
        self._gate: AdmissionGate | None = gate

    def release(self) -> None:
        """Idempotent: every path that ends a request may call it."""
        if self._gate is not None:
            self._gate.leave()
            self._gate = None


@dataclass(frozen=True, slots=True)
class Prepared:
    #: The model this request was tokenized for and runs on.
    loaded: LoadedModel
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
    def __init__(
        self,
        loaded: LoadedModel,
        scheduler: BatchScheduler,
        served_name: str,
        *,
        hold_timeout: float = 60.0,
    ) -> None:
        #: The model new requests are admitted to; replaced by a weight swap.
        self.loaded = loaded
        self.scheduler = scheduler
        self.served_name = served_name
        self.gate = AdmissionGate()
        self.hold_timeout = hold_timeout
        #: Why this engine can no longer serve (a swap that broke part-way), else None.
        self.failure: str | None = None

    @property
    def fingerprint(self) -> str:
        return self.loaded.fingerprint

    async def admit(self) -> Admission:
        """Let a request in (waiting while weights are swapped); release it when it ends."""
        if self.failure is not None:
            raise EndpointNotReady(f"The engine cannot serve: {self.failure}.")
        await self.gate.enter(self.hold_timeout)
        return Admission(self.loaded, self.gate)

    def fail(self, reason: str) -> None:
        self.failure = reason

    # --- preparing requests --------------------------------------------------------------------

    def prepare_chat(self, req: ChatCompletionRequest, loaded: LoadedModel) -> Prepared:
        created, started = time.time(), time.perf_counter()
        _refuse_unsupported(req, _CHAT_UNSUPPORTED)
        _check_texts(req)
        if not req.messages:
            raise BadRequest("'messages' must hold at least one message.", param="messages")
        tok = loaded.tokenizer
        if tok.chat_template is None:
            raise BadRequest(
                "This model has no chat template; use /v1/completions.", param="messages"
            )
        messages = [{"role": m.role, "content": _text_of(m, i)} for i, m in enumerate(req.messages)]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        wanted = req.max_completion_tokens or req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        return _prepared(loaded, req, ids, (wanted, param), "messages", (created, started))

    def prepare_completion(self, req: CompletionRequest, loaded: LoadedModel) -> Prepared:
        created, started = time.time(), time.perf_counter()
        _refuse_unsupported(req, _COMPLETION_UNSUPPORTED)
        _check_texts(req)
        ids = _prompt_ids(loaded.tokenizer, req.prompt)
        wanted = (req.max_tokens, "max_tokens")
        return _prepared(loaded, req, ids, wanted, "prompt", (created, started))

    # --- generating ----------------------------------------------------------------------------

    async def run(self, prepared: Prepared) -> AsyncIterator[str | Outcome]:
        """Yield text pieces, then one Outcome. Closing the iterator early frees the slot."""
        stream = self.scheduler.submit(prepared.prompt_ids, prepared.params)
        detok = Detokenizer(prepared.loaded.tokenizer, prepared.stop)
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


def _check_text(param: str, value: object) -> None:
    """Every string the engine reads must be valid Unicode: JSON can carry a lone surrogate
    (``"\\ud800"``), which the tokenizer (and any UTF-8 encoder) cannot take."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                f"'{param}' holds an invalid character (a lone UTF-16 surrogate); send valid "
                "Unicode text.",
                param=param,
                code="validation_error",
            ) from None
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(f"{param}.{i}", item)


def _check_texts(req: ChatCompletionRequest | CompletionRequest) -> None:
    _check_text("stop", req.stop)
    _check_text("user", req.user)
    if isinstance(req, CompletionRequest):
        _check_text("prompt", req.prompt)
        return
    for i, message in enumerate(req.messages):
        _check_text(f"messages.{i}.name", message.name)
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                _check_text(f"messages.{i}.content.{j}.text", part.text)
        else:
            _check_text(f"messages.{i}.content", message.content)


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


Prompt = str | list[str] | list[int] | list[list[int]]


def _prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    one: str | list[int] | list[str] | list[list[int]] = prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise UnsupportedParameter(
                "Batched prompts are not supported; send one prompt per request.",
                param="prompt",
            )
        one = prompt[0]  # a one-element batch
    if isinstance(one, str):
        ids = list(tokenizer(one)["input_ids"])
    else:
        ids = [int(t) for t in one if isinstance(t, int)]
    vocab = len(tokenizer)
    if not ids:
        raise BadRequest("'prompt' must not be empty.", param="prompt")
    if any(t < 0 or t >= vocab for t in ids):
        raise BadRequest(f"'prompt' token ids must be in [0, {vocab}).", param="prompt")
    return ids


def _prepared(
    loaded: LoadedModel,
    req: ChatCompletionRequest | CompletionRequest,
    ids: list[int],
    wanted: tuple[int | None, str],
    prompt_param: str,
    clocks: tuple[float, float],
) -> Prepared:
    """Check the request fits the context and build its sampling parameters.

    ``wanted`` is the completion length asked for and the field that asked; ``clocks`` is
    (``time.time()``, ``time.perf_counter()``) when the request arrived.
    """
    limit = loaded.max_model_len
    room = limit - len(ids)
    tokens, max_param = wanted
    if room <= 0 or (tokens is not None and tokens > room):
        asked = f"{len(ids)} tokens in the {prompt_param}"
        if tokens is not None:
            asked = f"{len(ids) + tokens} tokens ({asked} and {tokens} for the completion)"
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens, but you requested "
            f"{asked}. Shorten the {prompt_param} or lower {max_param}.",
            param=prompt_param if room <= 0 else max_param,
        )
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if any(not s for s in stop):
        raise BadRequest("'stop' strings must not be empty.", param="stop")
    params = SamplingParams(
        max_new_tokens=tokens or room,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=req.seed,
        stop_token_ids=loaded.eos_token_ids,
    )
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return Prepared(loaded, ids, params, stop, include_usage, *clocks)
