"""The gateway: ``/v1`` inference requests routed to the ready replicas of each endpoint.

Modules: ``keys`` (key hashing, importable without aiohttp), ``routing`` (least-outstanding
replica choice over the table of :mod:`turnout.routing.table`), ``rewrite`` (response
``model``/``system_fingerprint`` rewriting), ``metrics``, ``proxy`` (the raw-ASGI hot path),
``upstream`` (the pooled aiohttp session to replicas), ``streaming`` (per-request facts,
disconnect watch), ``app`` (``create_gateway_app``).
Nothing is imported here so ``turnout.gateway.keys`` stays light.
"""
