"""`turnout serve` in a subprocess on a free loopback port: the demo's server and the tests'.

The process gets its own data dir and environment; :meth:`ServerProcess.cli` runs other
`turnout` commands (``admin ...``) against the same data dir and environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from turnout.client import TurnoutClient


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        role: str = "all",
        port: int = 0,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.role = role
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "TURNOUT_DATA_DIR": str(data_dir), **(env or {})}
        self.log_path = log_path or data_dir.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a `turnout` command against the same data dir and environment."""
        result = subprocess.run(
            [sys.executable, "-m", "turnout.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"turnout {' '.join(args)} failed: {result.stderr}")
        return result

    def start(self, timeout: float = 60) -> ServerProcess:
        """Start the server and wait until it answers ``/healthz``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "turnout.cli.main", "serve", "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*argv, "--role", self.role], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnout serve exited: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"turnout serve did not come up: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return f"(no log at {self.log_path})"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Signal the server and wait for it to exit (SIGKILL if it does not in time)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def client(self, key: str = "", timeout: float = 30) -> TurnoutClient:
        return TurnoutClient(self.url, key, timeout=timeout)
