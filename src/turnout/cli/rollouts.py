"""Progressive rollouts from the command line: building a policy from flags, steering a canary
(pause, resume, promote), endpoints that follow an alias, and the live view of a rollout
(``--wait`` and ``turnout deployments watch``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from turnout.cli.context import EXIT_FAILED, EXIT_REFUSED, JsonFlag, dump
from turnout.client import TurnoutClient

Policy = dict[str, Any]

GATE_NAMES = {
    "error_rate": "max_error_rate",
    "stream_abort_rate": "max_stream_abort_rate",
    "ttft_p95_ratio": "max_ttft_p95_ratio",
    "tpot_p95_ratio": "max_tpot_p95_ratio",
    "min_requests": "min_requests",
}


def policy_from_flags(
    strategy: str | None,
    canary: str | None,
    hold: float,
    gates: list[str],
    golden: Path | None,
    sticky: str | None,
    on_gate_failure: str | None,
) -> Policy | None:
    """The ``rollout`` body for these flags (None: plain surge, the published body)."""
    if not any((strategy, canary, gates, golden, sticky, on_gate_failure)):
        return None
    policy: Policy = {"strategy": strategy or ("canary" if canary else "surge")}
    if canary:
        try:
            shares = [int(part) for part in canary.split(",") if part.strip()]
        except ValueError:
            raise typer.BadParameter("--canary takes percentages like 5,50") from None
        policy["steps"] = [{"traffic_percent": p, "hold_seconds": hold} for p in shares]
    policy["gates"] = _gates(gates, golden)
    if sticky:
        policy["sticky"] = sticky
    if on_gate_failure:
        policy["on_gate_failure"] = on_gate_failure
    return policy


def _gates(specs: list[str], golden: Path | None) -> dict[str, Any]:
    gates: dict[str, Any] = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        if name not in GATE_NAMES or not value:
            known = ", ".join(GATE_NAMES)
            raise typer.BadParameter(f"--gate takes NAME=VALUE with NAME one of {known}")
        # A value that is no number is the caller's mistake: exit 2 naming it, not a traceback.
        try:
            gates[GATE_NAMES[name]] = int(value) if name == "min_requests" else float(value)
        except ValueError:
            kind = "a whole number" if name == "min_requests" else "a number"
            raise typer.BadParameter(f"--gate {spec}: {name} takes {kind}") from None
    if golden is not None:
        try:
            prompts = json.loads(golden.read_text())
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"--golden {golden}: {exc}") from None
        gates["golden_prompts"] = prompts if isinstance(prompts, list) else [prompts]
    return gates


# -- the live view ---------------------------------------------------------------------------


def render(body: dict[str, Any]) -> Group:
    """One deployment as people read it: status, traffic split, gates, recent events."""
    r = body["response"]
    title = Text.assemble(
        (f"deployment {r['deployment_id']}", "bold"),
        f"  version {r['version_id']} -> {r['endpoint_id']}  ",
        (r["rollout_status"], "green" if r["rollout_status"] == "complete" else "yellow"),
        f"  step {r.get('step') or '-'}  ({r.get('strategy', 'surge')})",
    )
    parts: list[Any] = [title]
    share = r.get("traffic_percent")
    if share is not None:
        bar = "#" * (share // 4) + "." * (25 - share // 4)
        parts.append(Text(f"traffic  new {share:3d}% [{bar}] old {100 - share}%"))
    if r.get("gates"):
        gates = Table("gate", "threshold", "reading", "verdict", "detail")
        for g in r["gates"]:
            colour = {"pass": "green", "fail": "red"}.get(g["verdict"], "yellow")
            # A pending gate has no reading: the API leaves the null field out of its body.
            reading = "-" if g.get("reading") is None else f"{g['reading']:g}"
            gates.add_row(
                g["name"], f"{g['threshold']:g}", reading, Text(g["verdict"], colour), g["detail"]
            )
        parts.append(gates)
    for event in (r.get("events") or [])[-6:]:
        at = time.strftime("%H:%M:%S", time.localtime(event["at"]))
        parts.append(Text.assemble(f"  {at} ", (event["step"], "cyan"), f" {event['message']}"))
    if body.get("error"):
        parts.append(Text(f"{body['error']['code']}: {body['error']['message']}", "red"))
    return Group(*parts)


def watch(api: TurnoutClient, body: dict[str, Any], console: Console) -> dict[str, Any]:
    """Follow the deployment live until it ends; its last body."""
    with Live(render(body), console=console, refresh_per_second=4, transient=False) as live:
        body = api.wait_deployment(body, lambda polled: live.update(render(polled)))
    return body


# -- commands ---------------------------------------------------------------------------------

Url = Annotated[str, typer.Option("--url", envvar="TURNOUT_URL", help="Turnout server URL.")]
Key = Annotated[str, typer.Option("--key", envvar="TURNOUT_MANAGEMENT_KEY", help="Management key.")]
DEFAULT_URL = "http://127.0.0.1:8080"
err = Console(stderr=True, soft_wrap=True)


def steer(action: str, deployment_id: str, url: str, key: str, as_json: bool) -> None:
    body = TurnoutClient(url, key).steer(deployment_id, action)
    dump(body) if as_json else err.print(render(body))


def deployments_watch(
    deployment_id: str, url: Url = DEFAULT_URL, key: Key = "", as_json: JsonFlag = False
) -> None:
    """Follow a rollout live: step, traffic split, gate readings and verdicts, events."""
    api = TurnoutClient(url, key)
    body = watch(api, api.deployment(deployment_id), err)
    if as_json:
        dump(body)
    if body["response"]["rollout_status"] != "complete":
        raise typer.Exit(EXIT_FAILED)


def endpoints_follow(
    endpoint: str,
    alias: Annotated[str, typer.Argument(help="The alias to follow; 'none' stops following.")],
    canary: Annotated[str | None, typer.Option("--canary", help="Steps, e.g. 5,50")] = None,
    hold: Annotated[float, typer.Option("--hold", help="Seconds each step is held.")] = 60,
    gate: Annotated[list[str] | None, typer.Option("--gate", help="e.g. error_rate=0.02")] = None,
    strategy: Annotated[str | None, typer.Option("--strategy")] = None,
    url: Url = DEFAULT_URL,
    key: Key = "",
    as_json: JsonFlag = False,
) -> None:
    """Follow an alias: moving it (PATCH on the version) deploys its version with this policy."""
    if alias == "none" and (canary or gate or strategy):
        err.print("[red]error:[/red] a policy needs an alias to follow")
        raise typer.Exit(EXIT_REFUSED)
    policy = policy_from_flags(strategy, canary, hold, gate or [], None, None, None)
    body = TurnoutClient(url, key).follow(endpoint, None if alias == "none" else alias, policy)
    if as_json:
        dump(body)
    else:
        err.print(f"{endpoint} follows {body.get('follow_alias') or 'no alias'}", highlight=False)
