"""The built-in engine's HTTP app: thin inference routes over :class:`EngineService`.

The app binds first and loads the model in the background, so ``/health`` answers while the
weights load; ``/ready`` turns 200 only after a warm-up generation produced tokens. A load
failure is reported through ``on_fatal`` (the CLI stops the server and exits non-zero). The
control routes (health, readiness, stats, weight swaps) are in :mod:`turnout.engine.control`.

Every generation request is admitted first (:meth:`EngineService.admit`) and released when its
response is sent, cut or failed, so a weight swap knows when nobody uses the old weights.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from turnout.engine import control
from turnout.engine.reload import WeightReloader
from turnout.engine.responses import Kind, chat_response, completion_response, sse_stream
from turnout.engine.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from turnout.engine.serving import Admission, EngineService
from turnout.engine.state import EngineConfig, EngineState, ServiceDep, StateDep
from turnout.errors import TurnoutError

__all__ = ["EngineConfig", "create_engine_app"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
    scheduler = BatchScheduler(loaded.model, max_batch_size=cfg.max_batch_size, threads=cfg.threads)
    scheduler.start()
    service = EngineService(loaded, scheduler, cfg.served_name, hold_timeout=cfg.hold_timeout)
    # Warm-up: one real generation through the scheduler, so "ready" means "serves tokens".
    warm_up = CompletionRequest(prompt="Hello", max_tokens=2, temperature=0)
    warm = await service.collect(service.prepare_completion(warm_up, loaded))
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
            service = await _load(state)
            state.reloader = WeightReloader(service, drain_timeout=config.reload_drain_timeout)
            state.service = service
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
    app.include_router(control.router)
    return app


def _add_routes(app: FastAPI) -> None:
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
    ) -> ChatCompletionResponse | CompletionResponse | Response:
        return await _generate(body, request, service)

    @app.post("/v1/completions", response_model=None)
    async def completions(
        body: CompletionRequest, request: Request, service: ServiceDep
    ) -> ChatCompletionResponse | CompletionResponse | Response:
        return await _generate(body, request, service)


async def _generate(
    body: ChatCompletionRequest | CompletionRequest, request: Request, service: EngineService
) -> ChatCompletionResponse | CompletionResponse | Response:
    admission = await service.admit()
    handed_off = False
    try:
        kind: Kind = "chat" if isinstance(body, ChatCompletionRequest) else "completion"
        if isinstance(body, ChatCompletionRequest):
            prepared = service.prepare_chat(body, admission.loaded)
        else:
            prepared = service.prepare_completion(body, admission.loaded)
        if body.stream:
            handed_off = True  # the stream releases it once sent, cut or failed
            return _AdmittedStream(sse_stream(kind, service, prepared), admission)
        outcome = await _unless_disconnected(request, service.collect(prepared))
        if kind == "chat":
            return chat_response(service, prepared, outcome)
        return completion_response(service, prepared, outcome)
    finally:
        if not handed_off:
            admission.release()


class _AdmittedStream(StreamingResponse):
    """An SSE response that releases its request's admission however the stream ends.

    Starlette skips ``background`` tasks when sending fails, and a generator that never
    started runs no ``finally``; wrapping ``__call__`` covers both.
    """

    def __init__(self, events: AsyncIterator[str], admission: Admission) -> None:
        # Starlette cancels the iterator when the client disconnects, which frees the slot.
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._admission.release()


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
