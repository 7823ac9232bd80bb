"""Client commands (`turnout models|endpoints|deploy|deployments|rollback|chat`): the
management API and the gateway over HTTP through :mod:`turnout.client`, never the store, so
they work against any server.

Exit codes: 0 ok, 1 the operation failed (or the server answered 5xx), 2 the API refused the
request (4xx; its flat error's message goes to stderr), 3 the server cannot be reached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from turnout.cli import rollouts
from turnout.cli.context import EXIT_FAILED, EXIT_REFUSED, JsonFlag, dump, table
from turnout.client import TurnoutClient, version_name

models_app = typer.Typer(
    help="Model versions: upload, list, aliases, delete.", no_args_is_help=True
)
endpoints_app = typer.Typer(help="Endpoints of your org and their status.", no_args_is_help=True)
deployments_app = typer.Typer(help="An endpoint's deployments.", no_args_is_help=True)

# Progress and errors go to stderr so that stdout carries only the result (JSON for scripts).
err = Console(stderr=True, soft_wrap=True)
out = Console()

Url = Annotated[str, typer.Option("--url", envvar="TURNOUT_URL", help="Turnout server URL.")]
Org = Annotated[str, typer.Option("--org", envvar="TURNOUT_ORG", help="Your org.")]
Key = Annotated[str, typer.Option("--key", envvar="TURNOUT_MANAGEMENT_KEY", help="Management key.")]
Wait = Annotated[bool, typer.Option("--wait", help="Follow the operation until it ends.")]
DEFAULT_URL = "http://127.0.0.1:8080"


def connect(url: str, key: str, timeout: float = 30) -> TurnoutClient:
    """A client for one command; errors it raises end the command (see ``cli.main``)."""
    return TurnoutClient(url, key, timeout=timeout)


def need(value: str, what: str, env: str) -> str:
    if not value:
        err.print(f"[red]error:[/red] no {what}: pass --{what} or set {env}")
        raise typer.Exit(EXIT_REFUSED)
    return value


def tail(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def version_rows(versions: list[dict[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for v in versions:
        r = v["response"]
        status = r["sync_status"] + (f" ({v['error']['message']})" if v.get("error") else "")
        aliases = ", ".join(r["version_aliases"]) or None
        rows.append([tail(v["name"]), aliases, status, r.get("digest"), r["customer_s3_uri"]])
    return rows


VERSION_COLUMNS = ["version", "aliases", "sync", "digest", "weight_uri"]


# ---------------------------------------------------------------- models


@models_app.command("upload")
def models_upload(
    arch: str,
    uri: str,
    alias: Annotated[list[str] | None, typer.Option("--alias", help="Alias (repeatable).")] = None,
    suffix: Annotated[str | None, typer.Option("--fingerprint-suffix")] = None,
    wait: Wait = False,
    url: Url = DEFAULT_URL,
    org: Org = "",
    key: Key = "",
    as_json: JsonFlag = False,
) -> None:
    """Upload a model version from URI (s3://, file://, an absolute path, https://, hf://)."""
    api = connect(url, key)
    org = need(org, "org", "TURNOUT_ORG")
    body = api.upload(org, arch, uri, alias, suffix)
    if wait:
        body = wait_sync(api, body)
    dump(body) if as_json else table(VERSION_COLUMNS, version_rows([body]))
    if body["done"] and body["response"]["sync_status"] == "failed":
        raise typer.Exit(EXIT_FAILED)


def wait_sync(api: TurnoutClient, body: dict[str, Any], console: Console = err) -> dict[str, Any]:
    """Follow the version until its sync ends, showing bytes synced; print its outcome."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, TransferSpeedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"syncing {body['name']}", total=None)

        def show(polled: dict[str, Any]) -> None:
            progress = polled["response"].get("sync_progress") or {}
            if progress.get("bytes_total"):
                bar.update(task, completed=progress["bytes_done"], total=progress["bytes_total"])

        body = api.wait_sync(body, show)
    if body["response"]["sync_status"] == "failed":
        message = (body.get("error") or {}).get("message", "sync failed")
        console.print(f"[red]sync failed:[/red] {message}", highlight=False)
    else:
        console.print(f"synced {body['name']} ({body['response'].get('digest')})", highlight=False)
    return body


@models_app.command("list")
def models_list(
    arch: str, url: Url = DEFAULT_URL, org: Org = "", key: Key = "", as_json: JsonFlag = False
) -> None:
    """List the versions of an architecture."""
    org = need(org, "org", "TURNOUT_ORG")
    body = connect(url, key).versions(org, arch)
    dump(body) if as_json else table(VERSION_COLUMNS, version_rows(body["model_versions"]))


@models_app.command("get")
def models_get(
    arch: str,
    version: str,
    url: Url = DEFAULT_URL,
    org: Org = "",
    key: Key = "",
    as_json: JsonFlag = False,
) -> None:
    """Show one version (VERSION is a number or an alias)."""
    org = need(org, "org", "TURNOUT_ORG")
    body = connect(url, key).version(version_name(org, arch, version))
    dump(body) if as_json else table(VERSION_COLUMNS, version_rows([body]))


@models_app.command("alias")
def models_alias(
    arch: str,
    version: str,
    aliases: Annotated[list[str] | None, typer.Argument(help="The new alias set.")] = None,
    url: Url = DEFAULT_URL,
    org: Org = "",
    key: Key = "",
    as_json: JsonFlag = False,
) -> None:
    """Replace a version's aliases with ALIASES (none: remove them all)."""
    org = need(org, "org", "TURNOUT_ORG")
    body = connect(url, key).set_aliases(version_name(org, arch, version), aliases or [])
    if as_json:
        dump(body)
    else:
        table(["version", "aliases"], [[tail(body["name"]), ", ".join(body["version_aliases"])]])


@models_app.command("delete")
def models_delete(
    arch: str,
    version: str,
    url: Url = DEFAULT_URL,
    org: Org = "",
    key: Key = "",
    as_json: JsonFlag = False,
) -> None:
    """Delete a version (refused while it serves or is being deployed)."""
    org = need(org, "org", "TURNOUT_ORG")
    body = connect(url, key).delete_version(version_name(org, arch, version))
    dump(body) if as_json else err.print(f"deleted {body['name']}", highlight=False)


# ---------------------------------------------------------------- endpoints


@endpoints_app.command("list")
def endpoints_list(
    url: Url = DEFAULT_URL, org: Org = "", key: Key = "", as_json: JsonFlag = False
) -> None:
    """List your org's endpoints."""
    org = need(org, "org", "TURNOUT_ORG")
    body = connect(url, key).endpoints(org)
    if as_json:
        return dump(body)
    rows = [[e["endpoint_id"], e["model_arch_id"], e["org_name"]] for e in body["endpoints"]]
    table(["endpoint", "arch", "org"], rows)


@endpoints_app.command("status")
def endpoints_status(
    endpoint: str, url: Url = DEFAULT_URL, key: Key = "", as_json: JsonFlag = False
) -> None:
    """Show what an endpoint serves and any rollout in progress."""
    body = connect(url, key).endpoint(endpoint)
    if as_json:
        return dump(body)
    out.print(f"[bold]{body['name']}[/bold] ({body['model_arch_id']})")
    rows = []
    for m in body["deployed_models"]:
        reps = m.get("replicas") or {}
        ready = f"{reps.get('ready')}/{reps.get('total')}" if reps else None
        serving = "yes" if m.get("serving") else "no"
        rows.append([m["id"], m["model"], m.get("version_alias"), m["state"], serving, ready])
    table(["deployment", "model", "alias", "state", "serving", "replicas"], rows)


# ---------------------------------------------------------------- deployments


DEPLOYMENT_COLUMNS = ["deployment", "version", "alias", "status", "step", "error"]


def deployment_row(d: dict[str, Any]) -> list[object]:
    r = d["response"]
    error = (d.get("error") or {}).get("message")
    return [
        r["deployment_id"],
        r["version_id"],
        r.get("version_alias"),
        r["rollout_status"],
        r.get("step"),
        error,
    ]


def show_deployment(api: TurnoutClient, body: dict[str, Any], wait: bool, as_json: bool) -> None:
    if wait:
        body = wait_rollout(api, body)
        if as_json:  # the live view went to stderr; the result is the last body
            dump(body)
            if body["response"]["rollout_status"] != "complete":
                raise typer.Exit(EXIT_FAILED)
            return
    dump(body) if as_json else table(DEPLOYMENT_COLUMNS, [deployment_row(body)])
    if body["done"] and body["response"]["rollout_status"] != "complete":
        raise typer.Exit(EXIT_FAILED)


def wait_rollout(
    api: TurnoutClient, body: dict[str, Any], console: Console = err
) -> dict[str, Any]:
    """Follow the deployment live (traffic split and gate readings for a canary); print how it
    ended."""
    body = rollouts.watch(api, body, console)
    if body["response"]["rollout_status"] != "complete":
        message = (body.get("error") or {}).get("message", "deployment did not complete")
        console.print(
            f"[red]{body['response']['rollout_status']}:[/red] {message}", highlight=False
        )
    return body


def deploy(
    endpoint: str,
    model: Annotated[str, typer.Argument(help="ARCH@VERSION or ARCH@ALIAS")],
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="surge, rolling, canary or in_place")
    ] = None,
    canary: Annotated[
        str | None, typer.Option("--canary", help="Canary steps in % of traffic, e.g. 5,50")
    ] = None,
    hold: Annotated[float, typer.Option("--hold", help="Seconds each canary step is held.")] = 60,
    gate: Annotated[
        list[str] | None,
        typer.Option("--gate", help="NAME=VALUE, e.g. error_rate=0.02 (repeatable)"),
    ] = None,
    golden: Annotated[
        Path | None, typer.Option("--golden", help="JSON file of golden prompts")
    ] = None,
    sticky: Annotated[
        str | None, typer.Option("--sticky", help="none, api_key or header:NAME")
    ] = None,
    on_gate_failure: Annotated[
        str | None, typer.Option("--on-gate-failure", help="rollback (default) or pause")
    ] = None,
    wait: Wait = False,
    url: Url = DEFAULT_URL,
    org: Org = "",
    key: Key = "",
    as_json: JsonFlag = False,
) -> None:
    """Deploy a version to an endpoint (zero-downtime rollout; --canary for a judged one)."""
    if model.startswith("orgs/"):
        name = model
    elif "@" in model:
        arch, _, version = model.partition("@")
        name = version_name(need(org, "org", "TURNOUT_ORG"), arch, version)
    else:
        err.print("[red]error:[/red] MODEL must be ARCH@VERSION or ARCH@ALIAS")
        raise typer.Exit(EXIT_REFUSED)
    policy = rollouts.policy_from_flags(
        strategy, canary, hold, gate or [], golden, sticky, on_gate_failure
    )
    api = connect(url, key)
    show_deployment(api, api.deploy(endpoint, name, rollout=policy), wait, as_json)


def rollback(
    endpoint: str,
    wait: Wait = False,
    url: Url = DEFAULT_URL,
    key: Key = "",
    as_json: JsonFlag = False,
) -> None:
    """Deploy the endpoint's previously complete version again."""
    api = connect(url, key)
    show_deployment(api, api.rollback(endpoint), wait, as_json)


@deployments_app.command("list")
def deployments_list(
    endpoint: str, url: Url = DEFAULT_URL, key: Key = "", as_json: JsonFlag = False
) -> None:
    """An endpoint's deployments, newest first."""
    body = connect(url, key).deployments(endpoint)
    dump(body) if as_json else table(
        DEPLOYMENT_COLUMNS, [deployment_row(d) for d in body["deployments"]]
    )


@deployments_app.command("get")
def deployments_get(
    deployment_id: str,
    wait: Wait = False,
    url: Url = DEFAULT_URL,
    key: Key = "",
    as_json: JsonFlag = False,
) -> None:
    """One deployment's status (and, with --wait, follow it to the end)."""
    api = connect(url, key)
    show_deployment(api, api.deployment(deployment_id), wait, as_json)


@deployments_app.command("cancel")
def deployments_cancel(
    endpoint: str,
    deployment_id: str,
    url: Url = DEFAULT_URL,
    key: Key = "",
    as_json: JsonFlag = False,
) -> None:
    """Cancel a queued or running deployment; the serving version keeps serving."""
    body = connect(url, key).cancel(endpoint, deployment_id)
    dump(body) if as_json else table(DEPLOYMENT_COLUMNS, [deployment_row(body)])


@deployments_app.command("pause")
def deployments_pause(
    deployment_id: str, url: Url = DEFAULT_URL, key: Key = "", as_json: JsonFlag = False
) -> None:
    """Hold a canary at its step."""
    rollouts.steer("pause", deployment_id, url, key, as_json)


@deployments_app.command("resume")
def deployments_resume(
    deployment_id: str, url: Url = DEFAULT_URL, key: Key = "", as_json: JsonFlag = False
) -> None:
    """Go on with a paused canary (its gates judge a fresh window)."""
    rollouts.steer("resume", deployment_id, url, key, as_json)


@deployments_app.command("promote")
def deployments_promote(
    deployment_id: str, url: Url = DEFAULT_URL, key: Key = "", as_json: JsonFlag = False
) -> None:
    """Skip a canary's remaining steps: all traffic to the new version now."""
    rollouts.steer("promote", deployment_id, url, key, as_json)


deployments_app.command("watch")(rollouts.deployments_watch)
endpoints_app.command("follow")(rollouts.endpoints_follow)


# ---------------------------------------------------------------- chat


def chat(
    endpoint: str,
    prompt: Annotated[str | None, typer.Argument(help="One question; none: a REPL.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 256,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0, max=2)] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    url: Url = DEFAULT_URL,
    key: Annotated[
        str, typer.Option("--key", envvar="TURNOUT_API_KEY", help="Inference key.")
    ] = "",
) -> None:
    """Chat with an endpoint through the gateway, printing tokens as they stream in."""
    api = connect(url, key, timeout=300)
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        stream_reply(api, endpoint, [*history, {"role": "user", "content": prompt}], params)
        return
    err.print(f"chatting with {endpoint}; an empty line or Ctrl-D ends", highlight=False)
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not line:
            break
        history.append({"role": "user", "content": line})
        answer = stream_reply(api, endpoint, history, params)
        history.append({"role": "assistant", "content": answer})


def stream_reply(
    api: TurnoutClient, endpoint: str, messages: list[dict[str, str]], params: dict[str, Any]
) -> str:
    body = {"model": endpoint, "messages": messages, "stream": True, **params}
    parts: list[str] = []
    with api.stream("/v1/chat/completions", body) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "choices" not in chunk:  # an error sent mid-stream
                err.print(f"[red]error:[/red] {chunk.get('message', data)}", highlight=False)
                raise typer.Exit(EXIT_FAILED)
            for choice in chunk["choices"]:
                text = (choice.get("delta") or {}).get("content") or ""
                parts.append(text)
                typer.echo(text, nl=False)
    typer.echo("")
    return "".join(parts)
