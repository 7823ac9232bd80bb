from __future__ import annotations

import asyncio

import pytest

from turnout.gateway.keys import StaticInferenceKeys, hash_key
from turnout.gateway.routing import Router
from turnout.routing.table import EndpointRoute, ReplicaRoute, RoutingTable

A, B, C = (ReplicaRoute(n, f"http://127.0.0.1:{p}") for n, p in (("a", 1), ("b", 2), ("c", 3)))


def test_least_outstanding_then_round_robin() -> None:
    router = Router()
    replicas = (A, B, C)
    picked = [router.acquire(replicas) for _ in range(3)]
    assert sorted(r.replica_id for r in picked) == ["a", "b", "c"]
    router.release(B)
    assert router.acquire(replicas) is B
    assert [router.outstanding(r) for r in "abc"] == [1, 1, 1]
    for r in (A, B, C, B):
        router.release(r)
    assert [router.outstanding(r) for r in "abc"] == [0, 0, 0]


def test_exclude_skips_the_failed_replica_unless_alone() -> None:
    router = Router()
    assert all(router.acquire((A, B), exclude=A) is B for _ in range(4))
    assert router.acquire((A,), exclude=A) is A
    with pytest.raises(ValueError):
        router.acquire(())


def test_swap_replaces_the_table() -> None:
    route = EndpointRoute("ep", "org", "d", 1, "fp_1", (A,))
    router = Router()
    table = RoutingTable({"ep": route}, generation=2)
    router.swap(table)
    assert router.current() is table


def test_wait_drained() -> None:
    async def scenario() -> None:
        router = Router()
        router.acquire((A,))
        router.acquire((B,))
        assert await router.wait_drained(["a"], 0.01) is False
        waiter = asyncio.create_task(router.wait_drained(["a", "b"], 10))
        router.release(A)
        await asyncio.sleep(0)
        assert not waiter.done()
        router.release(B)
        assert await waiter is True
        assert await router.wait_drained(["a", "never-used"], 0) is True

    asyncio.run(scenario())


def test_static_keys() -> None:
    keys = StaticInferenceKeys({hash_key("k1"): "org-a"})
    assert keys.org_for_key("k1") == "org-a"
    assert keys.org_for_key("k2") is None
    keys.replace({hash_key("k2"): "org-b"})
    assert keys.org_for_key("k1") is None and keys.org_for_key("k2") == "org-b"
    assert len(hash_key("x")) == 64


def test_keys_module_does_not_import_the_web_stack() -> None:
    import subprocess
    import sys

    code = "import sys, turnout.gateway.keys; assert 'aiohttp' not in sys.modules, 'aiohttp'"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": "src"})
