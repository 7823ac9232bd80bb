"""A test double for an engine: a tiny OpenAI-ish HTTP server (stdlib only).

GET /health answers 200 at once; GET /ready answers 200 once ``--ready-file`` exists (or at
once without it); POST /v1/chat/completions answers a fixed completion. Flags make it behave
like a broken engine: fail at start with an error, ignore SIGTERM, or spawn a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--fail-at-start")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--spawn-child", action="store_true")
    return parser.parse_args()


class _Handler(BaseHTTPRequestHandler):
    ready_file: Path | None = None

    def _json(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, {"status": "ok"})
        elif self.path == "/ready":
            ready = self.ready_file is None or self.ready_file.exists()
            self._json(200 if ready else 503, {"ready": ready})
        else:
            self._json(404, {"message": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/v1/chat/completions":
            self._json(404, {"message": "not found"})
            return
        self._json(
            200,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": request.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello from fake"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
            },
        )

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the replica log for what the tests read


def main() -> None:
    args = _parse()
    print(f"fake engine: pid {os.getpid()} starting on port {args.port}", flush=True)
    if args.fail_at_start:
        print(f"fake engine: {args.fail_at_start}", file=sys.stderr, flush=True)
        sys.exit(2)
    if args.spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(f"child_pid={child.pid}", flush=True)
    _Handler.ready_file = args.ready_file
    server = ThreadingHTTPServer((args.host, args.port), _Handler)

    def on_sigterm(signum: int, frame: object) -> None:
        if args.ignore_sigterm:
            print("fake engine: ignoring SIGTERM", flush=True)
            return
        print("fake engine: SIGTERM, draining", flush=True)
        # shutdown() blocks until serve_forever returns, so call it off the main thread.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    server.serve_forever()
    server.server_close()
    print("fake engine: exited cleanly", flush=True)


if __name__ == "__main__":
    main()
