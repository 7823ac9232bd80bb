"""The deploy files stay true to the code: every query of the Grafana dashboard names a series
Turnout exports (gateway and control plane), and the systemd units run real roles."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.registry import Collector

from turnout.gateway.metrics import GatewayMetrics
from turnout.server import Role
from turnout.telemetry import ControlPlaneTelemetry

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def exported() -> set[str]:
    """Every sample name the gateway's registry and the control plane's collector produce."""
    names: set[str] = set()
    collectors: list[Collector] = [GatewayMetrics().registry, ControlPlaneTelemetry(db=None)]  # type: ignore[arg-type]
    for collector in collectors:
        for family in collector.collect():
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def queries(dashboard: dict[str, object]) -> list[str]:
    found = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]  # type: ignore[attr-defined]
    found += [a["expr"] for a in dashboard["annotations"]["list"]]  # type: ignore[index]
    found += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]  # type: ignore[index]
    return found


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "turnout-endpoints.json").read_text())
    names = exported()
    used = {m for q in queries(dashboard) for m in re.findall(r"\bturnout_[a-z_]+", q)}
    assert used, "the dashboard queries nothing"
    assert sorted(used - names) == []
    # The dashboard covers what operators look at: traffic per version, TTFT, rollouts.
    assert {"turnout_gateway_requests_total", "turnout_gateway_ttft_seconds_bucket"} <= used
    assert "turnout_deployments" in used


def test_systemd_units_run_the_roles() -> None:
    for role in (Role.API, Role.GATEWAY, Role.WORKER):
        unit = (DEPLOY / "systemd" / f"turnout-{role}.service").read_text()
        assert f"turnout serve --role {role} " in unit
        assert "EnvironmentFile=/etc/turnout/turnout.env" in unit
