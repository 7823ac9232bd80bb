"""A fake SGLang server (stdlib only) with SGLang's command line and wire format, written from
SGLang's source (``sglang/srt/server_args.py``, ``entrypoints/http_server.py``,
``entrypoints/openai/protocol.py``), so Turnout's ``sglang`` template is exercised as it is.

- The command line is SGLang's names for what the template passes; anything else fails as
  SGLang's argparse would (exit 2).
- ``GET /health`` answers as soon as the port listens; ``GET /health_generate`` only after the
  "weights" load (``--load-seconds``), like SGLang's one-token generation check.
- ``POST /v1/chat/completions`` and ``/v1/completions`` answer with text that names the loaded
  weights (a digest of their config.json), streamed in SGLang's chunk shape (``matched_stop``,
  ``usage: null`` until the last chunk, no ``system_fingerprint``).
- ``GET /get_model_info`` and ``POST /update_weights_from_disk`` as SGLang has them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class State:
    model_path = ""
    served_name = ""
    ready_at = 0.0
    lock = threading.Lock()

    @classmethod
    def weights(cls) -> str:
        config = Path(cls.model_path, "config.json").read_bytes()
        return hashlib.sha256(config).hexdigest()[:8]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: object, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, b"", "text/plain")
        elif self.path == "/health_generate":
            ready = time.monotonic() >= State.ready_at
            self._send(200 if ready else 503, b"" if ready else b"loading", "text/plain")
        elif self.path == "/get_model_info":
            self._send(
                200,
                {
                    "model_path": State.model_path,
                    "tokenizer_path": State.model_path,
                    "is_generation": True,
                    "weight_version": State.weights(),
                },
            )
        elif self.path == "/v1/models":
            card = {"id": State.served_name, "object": "model", "owned_by": "sglang"}
            self._send(200, {"object": "list", "data": [card]})
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        if self.path == "/update_weights_from_disk":
            self._update(body)
        elif self.path in ("/v1/chat/completions", "/v1/completions"):
            self._generate(body, chat=self.path.endswith("chat/completions"))
        else:
            self._send(404, {"detail": "Not Found"})

    def _update(self, body: dict[str, object]) -> None:
        path = str(body.get("model_path", ""))
        if not Path(path, "config.json").is_file():
            message = f"Failed to update weights: {path} has no config.json"
            self._send(400, {"success": False, "message": message, "num_paused_requests": 0})
            return
        with State.lock:
            State.model_path = path
        message = "Succeeded to update model weights."
        self._send(200, {"success": True, "message": message, "num_paused_requests": 0})

    def _generate(self, body: dict[str, object], chat: bool) -> None:
        words = ["weights", State.weights(), "say", "hello"]
        limit = int(body.get("max_tokens") or 16)  # type: ignore[call-overload]
        words = words[: max(1, limit)]
        usage = {
            "prompt_tokens": 3,
            "completion_tokens": len(words),
            "total_tokens": 3 + len(words),
        }
        base = {"id": "sglang-fake", "created": int(time.time()), "model": State.served_name}
        if not body.get("stream"):
            text = " ".join(words)
            choice: dict[str, object] = {
                "index": 0,
                "finish_reason": "length",
                "matched_stop": None,
            }
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            kind = "chat.completion" if chat else "text_completion"
            self._send(200, {**base, "object": kind, "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        kind = "chat.completion.chunk" if chat else "text_completion"
        for i, word in enumerate(words):
            last = i == len(words) - 1
            piece = word if i == 0 else " " + word
            choice = {"index": 0, "finish_reason": "length" if last else None, "matched_stop": None}
            if chat:
                choice["delta"] = (
                    {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                )
            else:
                choice["text"] = piece
            event = {**base, "object": kind, "choices": [choice], "usage": None}
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
        options = body.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            event = {**base, "object": kind, "choices": [], "usage": usage}
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--served-model-name")
    parser.add_argument("--context-length", type=int)
    parser.add_argument(
        "--dtype", choices=["auto", "half", "float16", "bfloat16", "float", "float32"]
    )
    parser.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--load-seconds", type=float, default=1.0)  # the fake's own
    args = parser.parse_args()
    State.model_path = args.model_path
    State.served_name = args.served_model_name or args.model_path
    State.ready_at = time.monotonic() + args.load_seconds
    print(f"fake sglang: tp {args.tp_size}, context {args.context_length}", flush=True)
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
