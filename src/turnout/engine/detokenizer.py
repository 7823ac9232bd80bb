"""Incremental detokenization with stop strings.

Tokens arrive one at a time; text goes out as soon as it is safe: never half a UTF-8 character
(byte-level BPE splits characters across tokens) and never the start of what may turn out to
be a stop string, which must be trimmed from the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Detokenizer:
    tokenizer: Any
    stop: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    stopped: bool = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became safe to send (maybe empty)."""
        self.ids.append(token_id)
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if decoded.endswith("\ufffd"):
            # An incomplete multi-byte character: wait for the tokens that complete it.
            return ""
        self.text = decoded
        if self.stop:
            hit = self._find_stop()
            if hit is not None:
                self.stopped = True
                self.text = decoded[:hit]
                return self._take(hit)
            return self._take(len(decoded) - self._held_back())
        return self._take(len(decoded))

    def flush(self) -> str:
        """At the end of generation: everything not yet sent (held-back partial stop prefixes)."""
        if self.stopped:
            return ""
        # A trailing partial character never completed: send the replacement character for it.
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        if end <= self.sent:
            return ""
        out = self.text[self.sent : end]
        self.sent = end
        return out

    def _find_stop(self) -> int | None:
        # A stop string can only newly appear overlapping the unsent tail.
        longest = max(len(s) for s in self.stop)
        start = max(0, self.sent - longest + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
