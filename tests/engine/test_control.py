"""The control routes in-process, over a scheduler whose model double can stall.

The app runs without its lifespan (so without loading a model); the test puts a service with a
model double in its state. The same routes over a real engine process: test_server.py and
test_reload.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.engine.doubles import BlockingModel
from turnout.engine.model import LoadedModel
from turnout.engine.reload import WeightReloader
from turnout.engine.sampling import SamplingParams
from turnout.engine.scheduler import BatchScheduler, Finished
from turnout.engine.server import EngineConfig, create_engine_app
from turnout.engine.serving import EngineService

pytestmark = pytest.mark.anyio


@pytest.fixture
def model() -> BlockingModel:
    return BlockingModel()


@pytest.fixture
async def service(model: BlockingModel) -> AsyncIterator[EngineService]:
    scheduler = BatchScheduler(model)
    scheduler.start()
    loaded = LoadedModel(
        model=model,
        tokenizer=None,
        fingerprint="fp_0123456789",
        max_model_len=64,
        eos_token_ids=frozenset(),
        model_dir=Path("/models/v1"),
        config={},
    )
    try:
        yield EngineService(loaded, scheduler, "tiny")
    finally:
        model.release.set()
        await asyncio.to_thread(scheduler.stop)


@pytest.fixture
async def client(service: EngineService) -> AsyncIterator[httpx.AsyncClient]:
    config = EngineConfig(model_dir=Path("/models/v1"), served_name="tiny", stall_timeout=0.0)
    app = create_engine_app(config)
    app.state.engine.service = service
    app.state.engine.reloader = WeightReloader(service, drain_timeout=1.0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://engine") as c:
        yield c


async def test_health_turns_503_while_the_scheduler_is_stuck(
    client: httpx.AsyncClient, service: EngineService, model: BlockingModel
) -> None:
    idle = await client.get("/health")
    assert idle.status_code == 200 and idle.json()["seconds_since_progress"] == 0.0
    stream = service.scheduler.submit([1, 2], SamplingParams(max_new_tokens=1, temperature=0))
    await asyncio.to_thread(model.entered.wait, 60)
    stuck = await client.get("/health")
    assert stuck.status_code == 503
    body = stuck.json()
    assert set(body) == {"message", "type", "param", "code"}
    assert body["code"] == "engine_stalled" and body["type"] == "service_unavailable_error"
    assert "without finishing a step" in body["message"]
    # Readiness is another question: the model is loaded.
    assert (await client.get("/ready")).status_code == 200
    model.release.set()
    async for event in stream:
        if isinstance(event, Finished):
            break
    assert (await client.get("/health")).status_code == 200


async def test_health_turns_503_when_the_scheduler_thread_is_gone(
    client: httpx.AsyncClient, service: EngineService
) -> None:
    await asyncio.to_thread(service.scheduler.stop)
    resp = await client.get("/health")
    assert resp.status_code == 503
    assert "scheduler thread is not running" in resp.json()["message"]


async def test_health_turns_503_after_a_broken_swap(
    client: httpx.AsyncClient, service: EngineService
) -> None:
    service.fail("a weight swap failed part-way; restart the engine")
    resp = await client.get("/health")
    assert resp.status_code == 503 and "weight swap failed" in resp.json()["message"]
    chat = await client.post("/v1/completions", json={"prompt": [1], "max_tokens": 1})
    assert chat.status_code == 503


async def test_model_info_names_the_loaded_weights(client: httpx.AsyncClient) -> None:
    info = (await client.get("/get_model_info")).json()
    assert info == {
        "model_path": "/models/v1",
        "tokenizer_path": "/models/v1",
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": "default",
        "served_model_name": "tiny",
        "system_fingerprint": "fp_0123456789",
        "max_model_len": 64,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model_path": "/models/v2", "abort_all_requests": True}, "abort_all_requests"),
        ({"model_path": "/models/v2", "load_format": "gguf"}, "load_format"),
        ({"model_path": "/nowhere/at/all"}, "not a directory"),
    ],
)
async def test_refused_updates_answer_like_sglang(
    client: httpx.AsyncClient, body: dict[str, object], message: str
) -> None:
    resp = await client.post("/update_weights_from_disk", json=body)
    assert resp.status_code == 400
    data = resp.json()
    assert data["success"] is False and message in data["message"]
    assert data["num_paused_requests"] == 0
    assert (await client.get("/get_model_info")).json()["model_path"] == "/models/v1"


async def test_update_without_model_path_is_a_validation_error(client: httpx.AsyncClient) -> None:
    resp = await client.post("/update_weights_from_disk", json={})
    assert resp.status_code == 400
    assert resp.json()["param"] == "model_path"
