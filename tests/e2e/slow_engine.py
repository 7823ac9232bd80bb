"""A test double for an engine whose streams take long (stdlib only), so a test can hold a
rollout in its drain step for as long as it needs. It speaks just enough of the OpenAI API for
the rollout gates and the gateway: /health, /ready, /v1/completions, /v1/chat/completions."""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNKS = 60
DELAY = 0.25


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served_name = "model"

    def _json(self, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._json({"status": "ok"})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        base = {"id": "chatcmpl-slow", "created": int(time.time()), "model": self.served_name,
                "system_fingerprint": "fp_slow"}  # fmt: skip
        if not request.get("stream"):
            message = {"role": "assistant", "content": "ok"}
            choice = {"index": 0, "finish_reason": "stop", "message": message, "text": "ok"}
            self._json({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i in range(CHUNKS):
            last = i == CHUNKS - 1
            choice = {
                "index": 0,
                "delta": {"content": "x"},
                "finish_reason": "stop" if last else None,
            }
            event = {**base, "object": "chat.completion.chunk", "choices": [choice]}
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
            time.sleep(DELAY)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


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
