"""In-place weight swaps: ``POST /update_weights_from_disk`` (SGLang's route and body).

One swap at a time, in named steps:

1. stage: load the new directory into CPU memory and check it against the loaded model
   (:func:`turnout.engine.weights.load_candidate`) while the old weights keep serving; a bad
   directory ends the swap here with nothing changed;
2. close: new requests wait at the admission gate (bounded); requests inside run to the end
   (streams included), bounded by the drain timeout, after which the swap is abandoned and the
   gate reopens with the old weights serving;
3. swap: on the scheduler thread, with no sequence in the batch, copy the new weights into the
   model; then the service serves the new tokenizer, fingerprint and model path;
4. open: the waiting requests go on, on the new weights.

No request ever sees two sets of weights: it is admitted before step 2 (and finishes before
step 3) or after step 3.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from turnout.engine.gate import DrainTimeout
from turnout.engine.serving import EngineService
from turnout.engine.weights import Candidate, WeightsRejected, copy_weights, load_candidate

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    success: bool
    message: str
    #: Requests that waited at the gate while the weights were swapped.
    num_paused_requests: int = 0


class WeightReloader:
    def __init__(self, service: EngineService, *, drain_timeout: float) -> None:
        self._service = service
        self._drain_timeout = drain_timeout
        self._lock = asyncio.Lock()
        #: Set while a swap runs (for stats).
        self.swapping = False
        #: The ``weight_version`` label of the loaded weights (SGLang's default: "default").
        self.weight_version = "default"

    async def reload(
        self, model_dir: Path, *, weight_version: str | None = None, drain_timeout: float | None
    ) -> ReloadOutcome:
        # A second swap waits for the first, as SGLang's writer lock makes it.
        async with self._lock:
            self.swapping = True
            try:
                outcome = await self._reload(model_dir, drain_timeout or self._drain_timeout)
            finally:
                self.swapping = False
        if outcome.success and weight_version is not None:
            self.weight_version = weight_version
            outcome = ReloadOutcome(
                True,
                f"{outcome.message} Weight version updated to {weight_version}.",
                outcome.num_paused_requests,
            )
        return outcome

    async def _reload(self, model_dir: Path, drain_timeout: float) -> ReloadOutcome:
        service = self._service
        old = service.loaded
        logger.info("weight swap: staging %s", model_dir)
        try:  # 1. stage
            candidate = await asyncio.to_thread(load_candidate, model_dir, old)
        except WeightsRejected as exc:
            logger.warning("weight swap refused: %s", exc)
            return ReloadOutcome(False, str(exc))
        try:  # 2. close
            async with service.gate.closed_for_swap(drain_timeout) as closure:
                await self._swap(candidate)  # 3. swap
        except DrainTimeout as exc:  # 4. open (also on failure)
            message = f"{exc}; weights not swapped, {old.model_dir} still serving"
            logger.warning("weight swap abandoned: %s", message)
            return ReloadOutcome(False, message)
        except Exception as exc:  # the copy failed: reported, and /health turns 503
            logger.exception("weight swap failed while copying %s", model_dir)
            return ReloadOutcome(False, f"copying the weights of {model_dir} failed: {exc}")
        logger.info(
            "weight swap: %s -> %s (%s), %d request(s) held",
            old.fingerprint,
            candidate.loaded.fingerprint,
            model_dir,
            closure.held,
        )
        return ReloadOutcome(
            True, f"Succeeded to update model weights from {model_dir}.", closure.held
        )

    async def _swap(self, candidate: Candidate) -> None:
        model = self._service.loaded.model
        done = self._service.scheduler.call_when_idle(lambda: copy_weights(model, candidate.source))
        try:
            await asyncio.wrap_future(done)
        except BaseException:
            if done.cancel():
                raise  # withdrawn before it started: the old weights are intact
            # The copy broke part-way (or is still running while the server stops): the model
            # no longer holds one known set of weights. /health says so, so it gets replaced.
            self._service.fail("a weight swap failed part-way; restart the engine")
            raise
        self._service.loaded = candidate.loaded
