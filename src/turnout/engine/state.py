"""What the engine's routes see: its configuration, its service once loaded, and typed deps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from turnout.engine.reload import WeightReloader
from turnout.engine.serving import EngineService
from turnout.errors import EndpointNotReady


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model_dir: Path
    served_name: str
    device: str = "cpu"
    max_model_len: int | None = None
    max_batch_size: int = 16
    #: torch intra-op threads for the forward passes; None keeps torch's default.
    threads: int | None = None
    #: /health turns 503 once the scheduler has had work this long without finishing a step.
    stall_timeout: float = 30.0
    #: A weight swap waits this long for in-flight requests before giving up.
    reload_drain_timeout: float = 30.0
    #: Requests arriving during a weight swap wait this long for it before a 503.
    hold_timeout: float = 60.0


class EngineState:
    """The service and reloader once the model is loaded and warm, else None."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.service: EngineService | None = None
        self.reloader: WeightReloader | None = None
        self.created = 0


def _state(request: Request) -> EngineState:
    state: EngineState = request.app.state.engine
    return state


def _service(state: Annotated[EngineState, Depends(_state)]) -> EngineService:
    if state.service is None:
        raise EndpointNotReady("The engine is still loading its model; retry shortly.")
    return state.service


def _reloader(state: Annotated[EngineState, Depends(_state)]) -> WeightReloader:
    if state.reloader is None:
        raise EndpointNotReady("The engine is still loading its model; retry shortly.")
    return state.reloader


StateDep = Annotated[EngineState, Depends(_state)]
ServiceDep = Annotated[EngineService, Depends(_service)]
ReloaderDep = Annotated[WeightReloader, Depends(_reloader)]
