"""The demo's steps: a real `turnout serve`, an org with keys and an endpoint, version 1 live,
then version 2 rolled out under load with a summary that shows nothing was dropped."""

from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from turnout.client import TurnoutClient, version_name
from turnout.demo.load import Load, Summary, summarize
from turnout.demo.server import ServerProcess

ORG = "demo"
QUESTIONS = ("What is the capital of Italy?", "Why do cats purr?")


def demo_server(data_dir: Path, models_dir: Path) -> ServerProcess:
    """`turnout serve` with a fresh store under ``data_dir/server`` (the model cache is kept:
    a rerun starts from a clean endpoint without rebuilding the models)."""
    store = data_dir / "server"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    env = {
        "TURNOUT_ALLOWED_LOCAL_ROOTS": str(models_dir),
        "TURNOUT_ADMIN_TOKEN": secrets.token_urlsafe(24),
    }
    return ServerProcess(store, env=env, log_path=data_dir / "server.log")


@dataclass
class Demo:
    server: ServerProcess
    arch: str
    endpoint: str
    console: Console
    management_key: str = ""
    inference_key: str = ""

    def provision(self) -> None:
        """Org, keys and endpoint through the admin API, as an operator would."""
        with self.server.client(self.server.env["TURNOUT_ADMIN_TOKEN"]) as admin:
            admin.create_org(ORG)
            self.management_key = admin.create_key(ORG, "management")
            self.inference_key = admin.create_key(ORG, "inference")
            admin.create_endpoint(self.endpoint, ORG, self.arch)
        self.console.print(f"org [bold]{ORG}[/bold], endpoint [bold]{self.endpoint}[/bold] ready")

    def api(self) -> TurnoutClient:
        return self.server.client(self.management_key)

    def upload(self, weights: Path, aliases: list[str]) -> dict[str, Any]:
        with self.api() as api, self.console.status(f"syncing {weights.name}") as status:

            def show(polled: dict[str, Any]) -> None:
                progress = polled["response"].get("sync_progress") or {}
                if progress.get("bytes_total"):
                    done, total = progress["bytes_done"], progress["bytes_total"]
                    status.update(
                        f"syncing {weights.name}: {done / 2**20:.0f}/{total / 2**20:.0f} MiB"
                    )

            version = api.wait_sync(api.upload(ORG, self.arch, str(weights), aliases), show)
        if version["response"]["sync_status"] != "done":
            raise RuntimeError(f"upload of {weights} failed: {version.get('error')}")
        self.console.print(f"synced {version['name']} ({version['response']['digest']})")
        return version

    def deploy(self, ref: str) -> dict[str, Any]:
        name = version_name(ORG, self.arch, ref)
        self.console.print(f"deploying [bold]{name}[/bold] to {self.endpoint}")
        seen = 0

        def show(polled: dict[str, Any]) -> None:
            nonlocal seen
            events = polled["response"].get("events") or []
            for e in events[seen:]:
                at = time.strftime("%H:%M:%S", time.localtime(e["at"]))
                self.console.print(f"  {at} [cyan]{e['step']}[/cyan] {e['message']}")
            seen = max(seen, len(events))

        with self.api() as api:
            done = api.wait_deployment(api.deploy(self.endpoint, name), show)
        if done["response"]["rollout_status"] != "complete":
            raise RuntimeError(f"deployment of {name} did not complete: {done.get('error')}")
        return done

    def move_alias(self, alias: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        # An alias belongs to one version: take it off the old one before giving it to the new.
        with self.api() as api:
            kept = [a for a in old["response"]["version_aliases"] if a != alias]
            api.set_aliases(old["name"], kept)
            api.set_aliases(new["name"], [*new["response"]["version_aliases"], alias])
        self.console.print(f"alias [bold]{alias}[/bold] moved to {new['name']}")

    def ask(self, title: str) -> None:
        table = Table("question", "answer", title=title, show_lines=True)
        with self.server.client(self.inference_key, timeout=300) as client:
            for question in QUESTIONS:
                resp = client.request(
                    "POST",
                    "/v1/chat/completions",
                    {
                        "model": self.endpoint,
                        "messages": [{"role": "user", "content": question}],
                        "max_tokens": 48,
                        "temperature": 0,
                    },
                )
                if resp.status_code != 200:
                    raise RuntimeError(f"the endpoint answered {resp.status_code}: {resp.text}")
                answer = resp.json()["choices"][0]["message"]["content"]
                version = resp.headers.get("x-turnout-version")
                table.add_row(question, f"{answer.strip()}\n[dim](version {version})[/dim]")
        self.console.print(table)

    def rollout_under_load(self, v1: dict[str, Any], v2_weights: Path, settle_s: float) -> Summary:
        with Load(self.server.url, self.inference_key, self.endpoint) as load:
            self.console.print("background clients started (1 streaming, 2 plain)")
            time.sleep(settle_s)
            v2 = self.upload(v2_weights, [])
            self.move_alias("production", v1, v2)
            submitted = time.time()
            done = self.deploy("production")
            complete = max(e["at"] for e in done["response"]["events"] or [{"at": time.time()}])
            time.sleep(settle_s)
        return summarize(load.outcomes, submitted, complete)

    def print_summary(self, summary: Summary) -> None:
        table = Table("phase", "requests", "p50 latency", "p99 latency", title="Rollout under load")
        for phase, (count, p50, p99) in summary.latency.items():
            table.add_row(phase, str(count), f"{p50 * 1000:.0f} ms", f"{p99 * 1000:.0f} ms")
        self.console.print(table)
        served = ", ".join(f"version {v}: {n}" for v, n in sorted(summary.served.items()))
        self.console.print(f"requests served per version: {served}")
        colour = "green" if summary.failed == 0 else "red"
        self.console.print(f"failed requests: [{colour}]{summary.failed}[/{colour}]")
        for error in summary.errors[:5]:
            self.console.print(f"  [red]{error}[/red]", highlight=False)
        self.console.print(
            f"switch time (deploy submitted -> rollout complete): {summary.switch_s:.1f} s"
        )

    def print_usage(self) -> None:
        url, key, ep, mk = self.server.url, self.inference_key, self.endpoint, self.management_key
        hello = '[{"role": "user", "content": "Hello!"}]'
        lines = [
            "[bold]curl[/bold]",
            f"  curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' \\",
            f'    -H \'Content-Type: application/json\' -d \'{{"model": "{ep}", '
            f'"messages": {hello}}}\'',
            "[bold]openai[/bold]",
            "  import openai",
            f'  client = openai.OpenAI(base_url="{url}/v1", api_key="{key}")',
            f'  reply = client.chat.completions.create(model="{ep}", messages={hello})',
            "  print(reply.choices[0].message.content)",
            "[bold]turnout chat[/bold]",
            f"  TURNOUT_URL={url} TURNOUT_API_KEY={key} turnout chat {ep}",
            "[bold]manage[/bold]",
            f"  export TURNOUT_URL={url} TURNOUT_ORG={ORG} TURNOUT_MANAGEMENT_KEY={mk}",
            f"  turnout endpoints status {ep}; turnout deployments list {ep}",
        ]
        for line in lines:
            self.console.print(line, highlight=False, soft_wrap=True)
