"""A fast test-double engine (stdlib only) that a test can hold at a rollout step.

It speaks enough of the OpenAI API for the rollout gates and the gateway: ``/health``,
``/ready``, ``/v1/completions``, ``/v1/chat/completions``. Every answer's text names the
weight directory it was started with (``v:<its name>``), so a caller can tell which version
really answered, not just which one the gateway says.

Holds, so a test can catch a rollout at a step and kill the server there (files in
``--gate-dir``, created and removed by the test):

- ``hold-ready``: ``/ready`` answers 503 (the rollout waits in ``starting``);
- ``hold-warmup``: non-streamed generations wait (the warm-up: the rollout waits in
  ``warming``).

Streams send ``--chunks`` content chunks ``--delay`` seconds apart, then ``[DONE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from fake_http import FakeEngineHandler


class Handler(FakeEngineHandler):
    tag = "v:unknown"
    gate_dir: Path | None = None
    chunks = 20
    delay = 0.0

    def _held(self, name: str) -> bool:
        return self.gate_dir is not None and (self.gate_dir / name).exists()

    def do_GET(self) -> None:
        if self.path.startswith("/ready") and self._held("hold-ready"):
            self._json({"status": "loading"}, 503)
            return
        self._json({"status": "ok"})

    def do_POST(self) -> None:
        request = self._read_json()
        usage = {
            "prompt_tokens": 1,
            "completion_tokens": self.chunks,
            "total_tokens": 1 + self.chunks,
        }
        base = {"id": "chatcmpl-stub", "created": int(time.time()), "model": self.served_name,
                "system_fingerprint": "fp_stub"}  # fmt: skip
        if not request.get("stream"):
            while self._held("hold-warmup"):
                time.sleep(0.05)
            self._chat_answer(base, self.tag, usage)
            return
        self._chat_stream(base, [self.tag] + ["."] * (self.chunks - 1), self.delay)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-name", default="model")
    parser.add_argument("--model-dir", default="")
    parser.add_argument("--gate-dir", default="")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--env-dump", default="", help="write os.environ here as JSON at start")
    args = parser.parse_args()
    if args.env_dump:
        Path(args.env_dump).write_text(json.dumps(dict(os.environ)))
    Handler.served_name = args.served_name
    Handler.tag = "v:" + os.path.basename(args.model_dir.rstrip("/"))
    Handler.gate_dir = Path(args.gate_dir) if args.gate_dir else None
    Handler.chunks = max(1, args.chunks)
    Handler.delay = args.delay
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
