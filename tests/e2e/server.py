"""The test harness's server: Turnout's own :class:`ServerProcess` (the demo starts its server
the same way), plus raw HTTP for the tests that assert the wire itself."""

from __future__ import annotations

import httpx

from turnout.demo.server import ServerProcess, free_port

__all__ = ["TurnoutServer", "free_port"]


class TurnoutServer(ServerProcess):
    def http(self, key: str | None) -> httpx.Client:
        """Raw HTTP with ``key`` (None: no Authorization header), for status/body assertions."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False)
