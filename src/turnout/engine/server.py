"""The built-in engine's HTTP app: thin routes over :class:`EngineService`.

The app binds first and loads the model in the background, so ``/health`` answers while the
weights load; ``/ready`` turns 200 only after a warm-up generation produced tokens. A load
failure is reported through ``on_fatal`` (the CLI stops the server and exits non-zero).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from turnout.engine.responses import chat_response, completion_response, sse_stream
from turnout.engine.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EngineStats,
    ModelCard,
    ModelList,
)
from turnout.engine.serving import EngineService, Prepared
from turnout.errors import EndpointNotReady, TurnoutError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model_dir: Path
    served_name: str
    device: str = "cpu"
    max_model_len: int | None = None
    max_batch_size: int = 16
    #: torch intra-op threads for the forward passes; None keeps torch's default.
    threads: int | None = None


class EngineState:
    """What the routes see: the service once loaded and warm, else None."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.service: EngineService | None = None
        self.created = 0


async def _load(state: EngineState) -> EngineService:
    # Heavy imports here: the process must bind (and answer /health) before paying for them.
    import time

    from turnout.engine.model import load_model
    from turnout.engine.scheduler import BatchScheduler

    cfg = state.config
    state.created = int(time.time())
    loaded = await asyncio.to_thread(
        load_model, cfg.model_dir, device=cfg.device, max_model_len=cfg.max_model_len
    )
    scheduler = BatchScheduler(
        loaded.model,
        eos_token_ids=loaded.eos_token_ids,
        max_batch_size=cfg.max_batch_size,
        device=cfg.device,
        threads=cfg.threads,
    )
    scheduler.start()
    service = EngineService(loaded, scheduler, cfg.served_name)
    # Warm-up: one real generation through the scheduler, so "ready" means "serves tokens".
    warm = await service.collect(
        service.prepare_completion(CompletionRequest(prompt="Hello", max_tokens=2, temperature=0))
    )
    if warm.completion_tokens < 1:
        raise RuntimeError("warm-up generation produced no tokens")
    logger.info("model %s loaded and warm (%s)", cfg.model_dir, loaded.fingerprint)
    return service


def create_engine_app(
    config: EngineConfig, *, on_fatal: Callable[[BaseException], None] | None = None
) -> FastAPI:
    state = EngineState(config)

    async def load_in_background() -> None:
        try:
            state.service = await _load(state)
        except Exception as exc:  # any load failure ends the process; the CLI reports it
            logger.exception("failed to load model from %s", config.model_dir)
            if on_fatal is not None:
                on_fatal(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(load_in_background())
        try:
            yield
        finally:
            loader.cancel()
            if state.service is not None:
                stats = state.service.scheduler.stats()
                logger.info("stopping scheduler (%d active, %d queued)", stats.active, stats.queued)
                await asyncio.to_thread(state.service.scheduler.stop)

    app = FastAPI(title="Turnout engine", lifespan=lifespan)
    app.state.engine = state
    _add_error_handlers(app)
    _add_routes(app)
    return app


def _state(request: Request) -> EngineState:
    state: EngineState = request.app.state.engine
    return state


def _service(state: Annotated[EngineState, Depends(_state)]) -> EngineService:
    if state.service is None:
        raise EndpointNotReady("The engine is still loading its model; retry shortly.")
    return state.service


StateDep = Annotated[EngineState, Depends(_state)]
ServiceDep = Annotated[EngineService, Depends(_service)]


def _add_routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health(state: StateDep) -> EngineStats:
        return _stats(state)

    @app.get("/ready")
    async def ready(service: ServiceDep) -> dict[str, str]:
        return {"status": "ready", "system_fingerprint": service.fingerprint}

    @app.get("/v1/engine/stats")
    async def stats(state: StateDep) -> EngineStats:
        return _stats(state)

    @app.get("/v1/models")
    async def models(state: StateDep, service: ServiceDep) -> ModelList:
        card = ModelCard(
            id=service.served_name,
            created=state.created,
            max_model_len=service.loaded.max_model_len,
        )
        return ModelList(data=[card])

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(
        body: ChatCompletionRequest, request: Request, service: ServiceDep
    ) -> ChatCompletionResponse | Response:
        prepared = service.prepare_chat(body)
        if body.stream:
            return _event_stream(sse_stream("chat", service, prepared))
        outcome = await _unless_disconnected(request, service.collect(prepared))
        return chat_response(service, prepared, outcome)

    @app.post("/v1/completions", response_model=None)
    async def completions(
        body: CompletionRequest, request: Request, service: ServiceDep
    ) -> CompletionResponse | Response:
        prepared: Prepared = service.prepare_completion(body)
        if body.stream:
            return _event_stream(sse_stream("completion", service, prepared))
        outcome = await _unless_disconnected(request, service.collect(prepared))
        return completion_response(service, prepared, outcome)


def _stats(state: EngineState) -> EngineStats:
    service = state.service
    counts = service.scheduler.stats() if service is not None else None
    return EngineStats(
        ready=service is not None,
        active=counts.active if counts else 0,
        queued=counts.queued if counts else 0,
        cancelled=counts.cancelled if counts else 0,
        max_batch_size=state.config.max_batch_size,
    )


def _event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    # Starlette cancels the iterator when the client disconnects, which frees the slot.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``, cancelling it (and so its generation) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        logger.info("client disconnected; generation cancelled")
    return await task


async def _disconnected(request: Request) -> None:
    # The body is already read, so the next ASGI message is the disconnect (if it comes).
    while (await request.receive())["type"] != "http.disconnect":
        continue


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TurnoutError)
    async def turnout_error(request: Request, exc: TurnoutError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    # The inference surface answers a bad field value with 400, as OpenAI and Cerebras clients
    # expect (BadRequestError); the management API's 422 (DESIGN §4) is for its own schemas.
    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}"
        body = {"message": message, "type": "invalid_request_error"}
        return JSONResponse(
            {**body, "param": ".".join(loc) or None, "code": "validation_error"}, status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"message": str(exc.detail), "type": "invalid_request_error"}
        return JSONResponse(
            {**body, "param": None, "code": f"http_{exc.status_code}"}, status_code=exc.status_code
        )
