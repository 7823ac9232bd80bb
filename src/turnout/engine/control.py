"""The engine's control surface: liveness, readiness, stats, model info and weight swaps.

- ``GET /health`` — liveness. 200 while loading and while the scheduler makes progress (or has
  nothing to do); 503 with the flat error body (``code: engine_stalled``) when the scheduler
  thread has had work for longer than the stall bound without finishing a step, when that
  thread has died, or when a weight swap broke part-way. A supervisor restarts a replica
  whose ``/health`` stays 503; its process may well be alive.
- ``GET /ready`` — 200 once the model is loaded and a warm-up generation produced tokens.
- ``GET /v1/engine/stats`` — counts, always 200.
- ``GET /get_model_info`` and ``POST /update_weights_from_disk`` — SGLang's routes and bodies,
  so one in-place rollout drives both engines (see :mod:`turnout.engine.reload`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from turnout.engine.schemas import (
    EngineStats,
    ModelInfo,
    UpdateWeightsFromDiskRequest,
    UpdateWeightsFromDiskResponse,
)
from turnout.engine.state import EngineState, ReloaderDep, ServiceDep, StateDep
from turnout.errors import EndpointNotReady

router = APIRouter()


@router.get("/health")
async def health(state: StateDep) -> EngineStats:
    problem = health_problem(state)
    if problem is not None:
        raise EndpointNotReady(problem, code="engine_stalled")
    return engine_stats(state)


@router.get("/ready")
async def ready(service: ServiceDep) -> dict[str, str]:
    return {"status": "ready", "system_fingerprint": service.fingerprint}


@router.get("/v1/engine/stats")
async def stats(state: StateDep) -> EngineStats:
    return engine_stats(state)


@router.get("/get_model_info")
async def model_info(service: ServiceDep, reloader: ReloaderDep) -> ModelInfo:
    loaded = service.loaded
    return ModelInfo(
        model_path=str(loaded.model_dir),
        tokenizer_path=str(loaded.model_dir),
        weight_version=reloader.weight_version,
        served_model_name=service.served_name,
        system_fingerprint=loaded.fingerprint,
        max_model_len=loaded.max_model_len,
    )


@router.post("/update_weights_from_disk")
async def update_weights_from_disk(
    body: UpdateWeightsFromDiskRequest, reloader: ReloaderDep
) -> JSONResponse:
    refusal = _unsupported(body)
    if refusal is not None:
        outcome = UpdateWeightsFromDiskResponse(success=False, message=refusal)
    else:
        result = await reloader.reload(
            Path(body.model_path),
            weight_version=body.weight_version,
            drain_timeout=body.drain_timeout,
        )
        outcome = UpdateWeightsFromDiskResponse(
            success=result.success,
            message=result.message,
            num_paused_requests=result.num_paused_requests,
        )
    # SGLang answers every failed update 400 with success=false, whatever the cause.
    return JSONResponse(outcome.model_dump(), status_code=200 if outcome.success else 400)


def _unsupported(body: UpdateWeightsFromDiskRequest) -> str | None:
    if body.load_format not in (None, "auto", "safetensors"):
        return f"load_format {body.load_format!r} is not supported; omit it (safetensors)"
    if body.abort_all_requests:
        return (
            "abort_all_requests is not supported: in-flight requests always finish on the "
            "weights they started with; omit it"
        )
    return None


def health_problem(state: EngineState) -> str | None:
    """Why the engine is not live, or None. Loading counts as live (``/ready`` says loading)."""
    service = state.service
    if service is None:
        return None
    if service.failure is not None:
        return f"The engine cannot serve: {service.failure}."
    live = service.scheduler.liveness()
    if not live.running:
        return "The engine's scheduler thread is not running; restart the engine."
    bound = state.config.stall_timeout
    if live.stalled(bound):
        return (
            f"The engine's scheduler has had work for {live.seconds_since_progress:.1f} s "
            f"without finishing a step (bound {bound:g} s); restart the engine."
        )
    return None


def engine_stats(state: EngineState) -> EngineStats:
    service = state.service
    counts = service.scheduler.stats() if service is not None else None
    live = service.scheduler.liveness() if service is not None else None
    return EngineStats(
        ready=service is not None,
        active=counts.active if counts else 0,
        queued=counts.queued if counts else 0,
        cancelled=counts.cancelled if counts else 0,
        max_batch_size=state.config.max_batch_size,
        seconds_since_progress=live.seconds_since_progress if live else 0.0,
        swapping=state.reloader is not None and state.reloader.swapping,
        held=service.gate.waiting if service is not None else 0,
    )
