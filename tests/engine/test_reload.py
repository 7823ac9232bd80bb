"""In-place weight swaps: in-process (deterministic ordering) and through the engine process."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engine.harness import EngineProcess
from turnout.engine.model import load_model
from turnout.engine.reload import WeightReloader
from turnout.engine.scheduler import BatchScheduler
from turnout.engine.schemas import CompletionRequest
from turnout.engine.serving import EngineService, Outcome

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello, how are you?"}]
GREEDY = {"messages": HELLO, "max_tokens": 16, "temperature": 0}


# --- in-process: the swap waits for the request inside, and holds the one that comes later ----


async def _serve(service: EngineService, req: CompletionRequest) -> tuple[str, str]:
    """The route's path: admit, prepare with the admitted model, generate, release."""
    admission = await service.admit()
    try:
        prepared = service.prepare_completion(req, admission.loaded)
        return (await service.collect(prepared)).text, prepared.loaded.fingerprint
    finally:
        admission.release()


async def _start_service(model_dir: Path) -> EngineService:
    loaded = await asyncio.to_thread(load_model, model_dir)
    scheduler = BatchScheduler(loaded.model)
    scheduler.start()
    return EngineService(loaded, scheduler, "tiny")


@pytest.mark.anyio
async def test_swap_waits_for_the_request_inside_then_serves_new_weights(
    tiny_model: Callable[..., Path],
) -> None:
    req = CompletionRequest(prompt="The quick brown fox", max_tokens=24, temperature=0)
    fresh = await _start_service(tiny_model(seed=1))
    service = await _start_service(tiny_model(seed=0))
    try:
        new_text, new_fp = await _serve(fresh, req)
        old_text, old_fp = await _serve(service, req)
        assert old_text != new_text
        reloader = WeightReloader(service, drain_timeout=60.0)
        admission = await service.admit()  # a request inside, mid-generation
        pieces = service.run(service.prepare_completion(req, admission.loaded))
        streamed = [await anext(pieces)]
        swap = asyncio.create_task(reloader.reload(tiny_model(seed=1), drain_timeout=None))
        deadline = time.monotonic() + 60
        while not service.gate.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # staging the new weights runs in a thread
        late = asyncio.create_task(_serve(service, req))
        while service.gate.waiting < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert service.gate.closed and not swap.done() and not late.done()
        streamed += [p async for p in pieces if not isinstance(p, Outcome)]
        assert "".join(p for p in streamed if isinstance(p, str)) == old_text
        assert not swap.done()  # the request is still inside until its response is sent
        admission.release()
        outcome = await swap
        assert outcome.success and outcome.num_paused_requests == 1
        assert await late == (new_text, new_fp)
        assert await _serve(service, req) == (new_text, new_fp)
        assert service.loaded.model_dir == tiny_model(seed=1) and old_fp != new_fp
    finally:
        for s in (fresh, service):
            await asyncio.to_thread(s.scheduler.stop)


# --- through the engine process ----------------------------------------------------------------


def _chat(client: httpx.Client, body: dict[str, Any]) -> tuple[str, str]:
    resp = client.post(CHAT, json=body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["model"] == "tiny"
    return str(data["choices"][0]["message"]["content"]), str(data["system_fingerprint"])


def _stream_rest(lines: Iterator[str]) -> list[dict[str, Any]]:
    chunks = []
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(json.loads(line[len("data: ") :]))
    return chunks


@pytest.fixture(scope="module")
def engines(tiny_model: Callable[..., Path]) -> Iterator[tuple[EngineProcess, EngineProcess]]:
    """An engine on v1 (to be swapped) and a fresh one on v2 (what the swap must equal)."""
    swapped, fresh = EngineProcess(tiny_model(seed=0)), EngineProcess(tiny_model(seed=1))
    try:
        swapped.wait_ready()
        fresh.wait_ready()
        yield swapped, fresh
    finally:
        swapped.close()
        fresh.close()


def test_bad_directories_leave_the_old_weights_serving(
    engines: tuple[EngineProcess, EngineProcess],
    tiny_model: Callable[..., Path],
    tmp_path: Path,
) -> None:
    engine, _ = engines
    other_shape = shutil.copytree(tiny_model(seed=1), tmp_path / "other-shape")
    config = json.loads((other_shape / "config.json").read_text())
    (other_shape / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    corrupt = shutil.copytree(tiny_model(seed=1), tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"not a checkpoint")
    with httpx.Client(base_url=engine.url, timeout=120) as client:
        before = _chat(client, GREEDY)
        loaded = client.get("/get_model_info").json()
        for path, says in (
            (tmp_path / "missing", "not a directory"),
            (other_shape, "hidden_size: 128 != 64"),
            (corrupt, "could not be loaded"),
        ):
            resp = client.post("/update_weights_from_disk", json={"model_path": str(path)})
            assert resp.status_code == 400
            assert resp.json()["success"] is False and says in resp.json()["message"]
            assert _chat(client, GREEDY) == before
        assert client.get("/get_model_info").json() == loaded
    assert engine.proc.poll() is None


def test_swap_under_a_running_stream(
    engines: tuple[EngineProcess, EngineProcess], tiny_model: Callable[..., Path]
) -> None:
    engine, fresh = engines
    pid = engine.proc.pid
    long_body = {"messages": HELLO, "max_tokens": 300, "temperature": 0}
    with httpx.Client(base_url=fresh.url, timeout=120) as client:
        expected_new = _chat(client, GREEDY)
    with httpx.Client(base_url=engine.url, timeout=120) as client:
        old = _chat(client, GREEDY)
        assert old[0] != expected_new[0] and old[1] != expected_new[1]
        long_old = _chat(client, long_body)
        with (
            client.stream("POST", CHAT, json={**long_body, "stream": True}) as resp,
            ThreadPoolExecutor(2) as pool,
        ):
            lines = resp.iter_lines()
            head = next(line for line in lines if line.startswith("data: "))
            body = {"model_path": str(tiny_model(seed=1)), "weight_version": "step-2"}
            swap = pool.submit(client.post, "/update_weights_from_disk", json=body)
            while not swap.done() and not client.get("/v1/engine/stats").json()["swapping"]:
                time.sleep(0.01)
            during = pool.submit(_chat, client, GREEDY)
            chunks = [json.loads(head[len("data: ") :]), *_stream_rest(lines)]
            answer = swap.result()
            assert answer.status_code == 200, answer.text
            assert answer.json()["success"] is True
            # Sent while the swap ran: old or new weights, never a mix.
            assert during.result() in (old, expected_new)
        # The stream that was running finished on the old weights.
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == long_old[0]
        assert {c["system_fingerprint"] for c in chunks} == {old[1]}
        assert _chat(client, GREEDY) == expected_new
        info = client.get("/get_model_info").json()
        assert info["model_path"] == str(tiny_model(seed=1))
        assert info["weight_version"] == "step-2"
        assert info["system_fingerprint"] == expected_new[1]
        assert client.get("/ready").json()["system_fingerprint"] == expected_new[1]
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny"]
    assert engine.proc.pid == pid and engine.proc.poll() is None
