"""A test-double engine (stdlib only) whose behaviour comes with its weights: the
``turnout_test`` object of ``{model_dir}/config.json`` says how this "version" behaves, so one
endpoint template can serve a good version and a bad one, as canary tests need.

``turnout_test``: ``answer`` (the text; default "4"), ``error_every`` (every Nth generation
answers 500; 0 never), ``first_delay`` (seconds before the first token), ``token_delay``
(seconds between tokens), ``tokens`` (per answer, default 8). ``/update_weights_from_disk``
switches to another directory's behaviour, like a real reload.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fake_http import FakeEngineHandler


class Behaviour:
    lock = threading.Lock()
    counter = itertools.count(1)
    model_dir = ""
    conf: dict[str, Any] = {}

    @classmethod
    def load(cls, model_dir: str) -> None:
        config = json.loads(Path(model_dir, "config.json").read_text())
        cls.model_dir, cls.conf = model_dir, dict(config.get("turnout_test") or {})


class Handler(FakeEngineHandler):
    def do_GET(self) -> None:
        self._json({"status": "ok", "model_path": Behaviour.model_dir})

    def do_POST(self) -> None:
        body = self._read_json()
        if self.path == "/update_weights_from_disk":
            Behaviour.load(str(body["model_path"]))
            self._json({"success": True, "message": "reloaded", "num_paused_requests": 0})
            return
        conf = Behaviour.conf
        n = next(Behaviour.counter)
        every = int(conf.get("error_every", 0))
        if every and n % every == 0:
            error = {"message": "scripted failure", "type": "server_error", "code": "boom"}
            self._json({"error": error}, 500)
            return
        time.sleep(float(conf.get("first_delay", 0)))
        words = [str(conf.get("answer", "4"))] + ["x"] * (int(conf.get("tokens", 8)) - 1)
        chat = self.path.endswith("chat/completions")
        usage = {
            "prompt_tokens": 3,
            "completion_tokens": len(words),
            "total_tokens": 3 + len(words),
        }
        base = {"id": "cmpl-behaving", "created": int(time.time()), "model": self.served_name}
        if not body.get("stream"):
            time.sleep(float(conf.get("token_delay", 0)) * len(words))
            text = " ".join(words)
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
            choice.update(
                {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            )
            kind = "chat.completion" if chat else "text_completion"
            self._json({**base, "object": kind, "choices": [choice], "usage": usage})
            return
        self._start_stream()
        for i, word in enumerate(words):
            last = i == len(words) - 1
            choice = {"index": 0, "finish_reason": "length" if last else None}
            piece = word if i == 0 else " " + word
            choice.update({"delta": {"content": piece}} if chat else {"text": piece})
            event = {**base, "object": "chat.completion.chunk", "choices": [choice]}
            if last:
                event["usage"] = usage
            self._event(event)
            if not last:
                time.sleep(float(conf.get("token_delay", 0)))
        self._end_stream()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-name", default="model")
    args = parser.parse_args()
    Behaviour.load(args.model_dir)
    Handler.served_name = args.served_name
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
