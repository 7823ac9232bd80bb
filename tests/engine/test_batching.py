"""Batching changes nothing a request can see: through a real engine process, concurrently.

Greedy outputs of requests run together (joining and leaving a running batch at different
steps, with prompts of different lengths) equal the same requests run one at a time; a seeded
sampled request gives the same text alone and inside a busy batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx

from tests.engine.harness import EngineProcess

PROMPTS = [
    "The quick brown fox",
    "A",
    "Signals protect each junction; a dispatcher sets the route, the interlocking locks it",
    "Hello! How are you?",
    "Weather today: cloudy in the morning, sunny afternoon",
    "Numbers and dates help too: 0 1 2 3 4 5 6 7 8 9 10 42 100",
]
CHATS = [
    [{"role": "user", "content": "Write a short poem about autumn leaves."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
]


def _text(engine: EngineProcess, path: str, body: dict[str, Any]) -> str:
    with httpx.Client(base_url=engine.url, timeout=120) as client:
        resp = client.post(path, json=body)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    return str(choice["text"] if "text" in choice else choice["message"]["content"])


def _requests(max_tokens: int) -> list[tuple[str, dict[str, Any]]]:
    greedy = {"max_tokens": max_tokens, "temperature": 0}
    completions = [("/v1/completions", {"prompt": p, **greedy}) for p in PROMPTS]
    chats = [("/v1/chat/completions", {"messages": m, **greedy}) for m in CHATS]
    return completions + chats


def _active(engine: EngineProcess) -> int:
    return int(httpx.get(engine.url + "/v1/engine/stats", timeout=30).json()["active"])


def _wait_active(engine: EngineProcess, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while _active(engine) < at_least:
        assert time.monotonic() < deadline, "the batch never filled"
        time.sleep(0.01)


@contextmanager
def _background(engine: EngineProcess, bodies: list[dict[str, Any]]) -> Iterator[list[Future[str]]]:
    """Long completions that keep the batch busy while the test sends its requests."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(_text, engine, "/v1/completions", b) for b in bodies]
        _wait_active(engine, len(bodies))
        yield futures


def test_greedy_outputs_batched_equal_one_at_a_time(engine: EngineProcess) -> None:
    requests = _requests(max_tokens=24)
    alone = [_text(engine, path, body) for path, body in requests]
    # All at once, while a long request already runs: every request joins a running batch,
    # and they leave it at different steps (different prompt lengths, EOS).
    runner = [{"prompt": "A railway turnout is", "max_tokens": 200, "temperature": 0}]
    with _background(engine, runner) as busy, ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: _text(engine, *r), requests))
        busy[0].result()
    assert together == alone
    assert len(set(alone)) > 1  # the prompts really lead to different outputs


def test_seed_gives_the_same_text_alone_and_in_a_busy_batch(engine: EngineProcess) -> None:
    seeded = {"prompt": "The quick brown fox", "max_tokens": 32, "temperature": 1.0, "seed": 7}
    seeded |= {"top_p": 0.9}
    alone = _text(engine, "/v1/completions", seeded)
    others = [
        {"prompt": p, "max_tokens": 120, "temperature": 1.2, "seed": i}
        for i, p in enumerate(PROMPTS[2:5])
    ]
    with _background(engine, others):
        in_batch = _text(engine, "/v1/completions", seeded)
    # And the other way round: the seeded request runs first, the others join it mid-way.
    longer = {**seeded, "max_tokens": 120}
    longer_alone = _text(engine, "/v1/completions", longer)
    with ThreadPoolExecutor(1 + len(others)) as pool:
        first = pool.submit(_text, engine, "/v1/completions", longer)
        _wait_active(engine, 1)
        joined = [pool.submit(_text, engine, "/v1/completions", b) for b in others]
        for future in joined:
            future.result()
        joined_text = first.result()
    assert in_batch == alone
    assert joined_text == longer_alone
    assert _text(engine, "/v1/completions", {**seeded, "seed": 8}) != alone
