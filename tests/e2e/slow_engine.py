"""A test double for an engine whose streams take long (stdlib only), so a test can hold a
rollout in its drain step for as long as it needs. It speaks just enough of the OpenAI API for
the rollout gates and the gateway: /health, /ready, /v1/completions, /v1/chat/completions."""

from __future__ import annotations

import argparse
import time
from http.server import ThreadingHTTPServer

from fake_http import FakeEngineHandler

CHUNKS = 60
DELAY = 0.25


class Handler(FakeEngineHandler):
    def do_GET(self) -> None:
        self._json({"status": "ok"})

    def do_POST(self) -> None:
        request = self._read_json()
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        base = {"id": "chatcmpl-slow", "created": int(time.time()), "model": self.served_name,
                "system_fingerprint": "fp_slow"}  # fmt: skip
        if not request.get("stream"):
            self._chat_answer(base, "ok", usage)
            return
        self._chat_stream(base, ["x"] * CHUNKS, DELAY)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-name", default="model")
    args = parser.parse_args()
    Handler.served_name = args.served_name
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
