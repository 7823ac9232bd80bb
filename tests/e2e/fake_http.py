"""The wire side shared by the test-double engines in this folder (stub, slow and behaving
engines): JSON answers and chunked server-sent-event streams on a keep-alive HTTP/1.1 server.

Stdlib only, like the engines. They run as scripts by path, so they import this module by its
bare name (the script's folder is first on sys.path).
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler


class FakeEngineHandler(BaseHTTPRequestHandler):
    # HTTP/1.1, as real engines speak it: the gateway keeps connections to engines alive.
    protocol_version = "HTTP/1.1"
    served_name = "model"

    def _read_json(self) -> dict[str, object]:
        length = int(self.headers.get("content-length", "0"))
        body: dict[str, object] = json.loads(self.rfile.read(length) or b"{}")
        return body

    def _json(self, body: object, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def _event(self, event: object) -> None:
        self._chunk(f"data: {json.dumps(event)}\n\n".encode())

    def _end_stream(self) -> None:
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")  # the empty chunk ends the chunked body

    def _chat_answer(self, base: dict[str, object], text: str, usage: dict[str, int]) -> None:
        """A whole answer, its text both as a chat message and as a completion's ``text``, so
        that one shape serves /v1/chat/completions and /v1/completions."""
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "finish_reason": "stop", "message": message, "text": text}
        self._json({**base, "object": "chat.completion", "choices": [choice], "usage": usage})

    def _chat_stream(self, base: dict[str, object], pieces: list[str], delay: float) -> None:
        """One chat chunk per piece, ``delay`` seconds apart; the last one finishes."""
        self._start_stream()
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            choice = {
                "index": 0,
                "delta": {"content": piece},
                "finish_reason": "stop" if last else None,
            }
            self._event({**base, "object": "chat.completion.chunk", "choices": [choice]})
            if delay:
                time.sleep(delay)
        self._end_stream()

    def _chunk(self, data: bytes) -> None:
        # Flushed one by one, so that a client sees each event when it is sent.
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass  # a request log line per call would flood the replica's log that tests read
