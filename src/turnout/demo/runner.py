"""The demo's steps: a real `turnout serve`, an org with keys and an endpoint, version 1 live,
then version 2 rolled out under load with a summary that shows nothing was dropped."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from turnout.cli.client import V1, Api, wait_rollout, wait_sync
from turnout.demo.load import Load, Summary, summarize

ORG = "demo"
QUESTIONS = ("What is the capital of Italy?", "Why do cats purr?")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """`turnout serve` in a subprocess with a fresh store under ``data_dir/server``."""

    data_dir: Path
    models_dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_urlsafe(24)
        self.log_path = self.data_dir / "server.log"

    def start(self, timeout: float = 120) -> None:
        store = self.data_dir / "server"
        # The store is per run (the model cache is not): a rerun starts from a clean endpoint.
        shutil.rmtree(store, ignore_errors=True)
        store.mkdir(parents=True)
        env = {
            **os.environ,
            "TURNOUT_DATA_DIR": str(store),
            "TURNOUT_ALLOWED_LOCAL_ROOTS": str(self.models_dir),
            "TURNOUT_ADMIN_TOKEN": self.admin_token,
        }
        cmd = [sys.executable, "-m", "turnout.cli.main", "serve", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnout serve exited; see {self.log_path}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"turnout serve did not come up; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Demo:
    server: Server
    arch: str
    endpoint: str
    console: Console
    management_key: str = ""
    inference_key: str = ""

    def provision(self) -> None:
        """Org, keys and endpoint through the admin API, as an operator would."""
        admin = Api(self.server.url, self.server.admin_token)
        admin.call("POST", "/admin/v1/orgs", {"name": ORG})
        keys = [
            admin.call("POST", "/admin/v1/keys", {"org": ORG, "kind": kind})["key"]
            for kind in ("management", "inference")
        ]
        self.management_key, self.inference_key = keys
        admin.call(
            "POST",
            "/admin/v1/endpoints",
            {"endpoint_id": self.endpoint, "org": ORG, "arch": self.arch},
        )
        self.console.print(f"org [bold]{ORG}[/bold], endpoint [bold]{self.endpoint}[/bold] ready")

    def api(self) -> Api:
        return Api(self.server.url, self.management_key)

    def upload(self, weights: Path, aliases: list[str]) -> dict[str, Any]:
        api = self.api()
        body = {
            "model_arch_id": self.arch,
            "model": {"weight_uri": str(weights), "version_aliases": aliases},
        }
        version = wait_sync(
            api, api.call("POST", f"{V1}/orgs/{ORG}/models:upload", body), self.console
        )
        if version["response"]["sync_status"] != "done":
            raise RuntimeError(f"upload of {weights} failed")
        return version

    def deploy(self, ref: str) -> dict[str, Any]:
        api = self.api()
        name = f"orgs/{ORG}/models/{self.arch}/versions/{ref}"
        self.console.print(f"deploying [bold]{name}[/bold] to {self.endpoint}")
        op = api.call("POST", f"{V1}/endpoints/{self.endpoint}:deployModel", {"model": name})
        done = wait_rollout(api, op, self.console)
        if done["response"]["rollout_status"] != "complete":
            raise RuntimeError(f"deployment of {name} did not complete")
        return done

    def move_alias(self, alias: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        # An alias belongs to one version: take it off the old one before giving it to the new.
        api = self.api()
        kept = [a for a in old["response"]["version_aliases"] if a != alias]
        api.call("PATCH", f"{V1}/{old['name']}", {"version_aliases": kept})
        aliases = [*new["response"]["version_aliases"], alias]
        api.call("PATCH", f"{V1}/{new['name']}", {"version_aliases": aliases})
        self.console.print(f"alias [bold]{alias}[/bold] moved to {new['name']}")

    def ask(self, title: str) -> None:
        table = Table("question", "answer", title=title, show_lines=True)
        with httpx.Client(base_url=self.server.url, timeout=300) as http:
            for question in QUESTIONS:
                resp = http.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {self.inference_key}"},
                    json={
                        "model": self.endpoint,
                        "messages": [{"role": "user", "content": question}],
                        "max_tokens": 48,
                        "temperature": 0,
                    },
                )
                resp.raise_for_status()
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
