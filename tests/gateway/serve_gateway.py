"""Run a gateway alone in this process (for the SIGTERM test): ``serve_gateway.py FD ADDRESS``.

FD is an inherited listening socket; ADDRESS the one replica of endpoint ``ep-1`` (org-a).
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from turnout.gateway.app import create_gateway_app
from turnout.gateway.keys import StaticInferenceKeys, hash_key
from turnout.gateway.routing import Router
from turnout.routing.table import EndpointRoute, ReplicaRoute, RoutingTable


def main() -> None:
    fd, address = int(sys.argv[1]), sys.argv[2]
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    route = EndpointRoute(
        "ep-1", "org-a", "dep-1", 1, "fp_0123456789", (ReplicaRoute("a", address),)
    )
    router = Router(RoutingTable({"ep-1": route}, 1))
    keys = StaticInferenceKeys({hash_key("sk-org-a-key"): "org-a"})
    app = create_gateway_app(router, keys, drain_timeout=60)
    uvicorn.Server(uvicorn.Config(app, fd=fd, log_level="info", ws="none")).run()


if __name__ == "__main__":
    main()
