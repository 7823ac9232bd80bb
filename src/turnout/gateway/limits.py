"""Per-key requests and tokens per minute, and per-org requests in flight, set by the operator.

Each limited key has two token buckets, refilled continuously (as Cerebras documents its own
limits): one of ``rpm`` requests, one of ``tpm`` tokens, each refilling its whole capacity per
minute. A request is admitted when the key's request bucket holds one request and its token
bucket holds the request's *estimated* prompt tokens; when the answer's ``usage`` arrives the
token bucket is settled to prompt + completion tokens (a failed answer gives the estimate back).
A key may so run into debt on a long completion; it waits until the bucket refills.

Per org, ``max_concurrent`` caps the requests in flight over all its endpoints: one org
flooding the gateway gets 429s while other orgs' requests go through.

Every response to a key with limits carries OpenAI's headers (``x-ratelimit-limit-requests``,
``-remaining-``, ``-reset-`` with Go-style durations such as ``1s`` or ``6m0s``: the time until
the bucket is full again; ``-tokens`` likewise) and, for tokens, Cerebras' published names
(``x-ratelimit-{limit,remaining,reset}-tokens-minute``, reset in float seconds). Cerebras'
``-requests-day`` has no counterpart here (no daily limits). A 429 adds ``retry-after``
(seconds) and ``retry-after-ms``. Each header costs the gateway a few microseconds in uvicorn
(it validates every header), so keys without limits get none.

State is per gateway process: with N gateways behind a balancer a key gets up to N times its
limits. Nothing here awaits: every method runs on the event loop between two awaits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnout.errors import RateLimited
from turnout.gateway.keys import KeyEntry

Headers = list[tuple[bytes, bytes]]


class Bucket:
    """A token bucket of ``capacity`` that refills ``capacity`` per minute."""

    __slots__ = ("capacity", "level", "stamp")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.level = float(capacity)
        self.stamp = now

    def refill(self, capacity: int, now: float) -> None:
        if capacity != self.capacity:  # the operator changed the limit: keep what was used
            self.level += capacity - self.capacity
            self.capacity = capacity
        self.level = min(float(capacity), self.level + (now - self.stamp) * capacity / 60.0)
        self.stamp = now

    def seconds_until(self, amount: float) -> float:
        """How long until the bucket holds ``amount`` (0 if it does)."""
        missing = amount - self.level
        return max(0.0, missing * 60.0 / self.capacity)

    def headers(self, kind: bytes) -> Headers:
        """OpenAI's three headers for this bucket; for tokens also Cerebras' ``-minute`` ones
        (Cerebras publishes tokens per minute, and requests per *day*, which Turnout has not)."""
        remaining = max(0, math.floor(self.level))
        reset = self.seconds_until(self.capacity)
        limit, left = str(self.capacity).encode(), str(remaining).encode()
        headers = [
            (b"x-ratelimit-limit-" + kind, limit),
            (b"x-ratelimit-remaining-" + kind, left),
            (b"x-ratelimit-reset-" + kind, go_duration(reset).encode()),
        ]
        if kind == b"tokens":
            headers += [
                (b"x-ratelimit-limit-tokens-minute", limit),
                (b"x-ratelimit-remaining-tokens-minute", left),
                (b"x-ratelimit-reset-tokens-minute", f"{reset:.3f}".encode()),
            ]
        return headers


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's ``time.Duration``): ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    total = round(seconds, 3)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


@dataclass(slots=True)
class Admission:
    """One admitted request of a limited key: what to settle and release when it ends."""

    entry: KeyEntry
    tokens: Bucket | None
    estimate: int
    headers: Headers
    counted_in_flight: bool


class Limits:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, Bucket] = {}
        self._tokens: dict[str, Bucket] = {}
        self._in_flight: dict[str, int] = {}

    def in_flight(self, org: str) -> int:
        return self._in_flight.get(org, 0)

    def admit(self, entry: KeyEntry, payload: Mapping[str, Any]) -> Admission:
        """Count the request against the key's and its org's limits, or raise 429."""
        now = self._clock()
        requests = self._bucket(self._requests, entry.key_id, entry.rpm, now)
        tokens = self._bucket(self._tokens, entry.key_id, entry.tpm, now)
        cap = entry.org_max_concurrent
        if cap is not None and self._in_flight.get(entry.org, 0) >= cap:
            raise Refused(
                f"Org {entry.org} already has {cap} requests in flight, its limit; retry when "
                "one finishes.",
                code="concurrency_limit_exceeded",
                retry_after=1.0,
                headers=[],
            )
        headers: Headers = []
        if requests is not None:
            if requests.level < 1:
                raise Refused(
                    "Requests per minute limit exceeded - too many requests sent.",
                    code="request_quota_exceeded",
                    retry_after=requests.seconds_until(1),
                    headers=requests.headers(b"requests") + _tokens_headers(tokens),
                )
        estimate = 0
        if tokens is not None:
            estimate = estimate_prompt_tokens(payload)
            if estimate > tokens.capacity:
                raise Refused(
                    f"The request's prompt is about {estimate} tokens, more than this key's "
                    f"limit of {tokens.capacity} tokens per minute; send a shorter prompt.",
                    code="token_quota_exceeded",
                    retry_after=None,
                    headers=_requests_headers(requests) + tokens.headers(b"tokens"),
                )
            if tokens.level < estimate:
                raise Refused(
                    "Tokens per minute limit exceeded - too many tokens processed.",
                    code="token_quota_exceeded",
                    retry_after=tokens.seconds_until(estimate),
                    headers=_requests_headers(requests) + tokens.headers(b"tokens"),
                )
            tokens.level -= estimate
        if requests is not None:
            requests.level -= 1
            headers += requests.headers(b"requests")
        if tokens is not None:
            headers += tokens.headers(b"tokens")
        if cap is not None:
            self._in_flight[entry.org] = self._in_flight.get(entry.org, 0) + 1
        return Admission(entry, tokens, estimate, headers, cap is not None)

    def finish(self, admission: Admission, used_tokens: int | None) -> None:
        """Settle the token estimate with what the answer used: its usage, or 0 when it
        failed before anything was sent (an estimate stands when it is passed back)."""
        if admission.counted_in_flight:
            org = admission.entry.org
            left = self._in_flight.get(org, 0) - 1
            if left > 0:
                self._in_flight[org] = left
            else:
                self._in_flight.pop(org, None)
        tokens = admission.tokens
        if tokens is not None:
            used = 0 if used_tokens is None else used_tokens
            tokens.level = min(float(tokens.capacity), tokens.level + admission.estimate - used)

    @staticmethod
    def _bucket(
        buckets: dict[str, Bucket], key_id: str, capacity: int | None, now: float
    ) -> Bucket | None:
        if capacity is None:
            buckets.pop(key_id, None)  # the limit was lifted
            return None
        bucket = buckets.get(key_id)
        if bucket is None:
            bucket = buckets[key_id] = Bucket(capacity, now)
        else:
            bucket.refill(capacity, now)
        return bucket


def _requests_headers(bucket: Bucket | None) -> Headers:
    return bucket.headers(b"requests") if bucket is not None else []


def _tokens_headers(bucket: Bucket | None) -> Headers:
    return bucket.headers(b"tokens") if bucket is not None else []


class Refused(RateLimited):
    """A 429 with the headers that tell the client its limits and when to retry (built like
    any error of the tree; the extras are optional)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = "quota",
        code: str | None = None,
        retry_after: float | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.headers = list(headers)
        if retry_after is not None:
            self.headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
            self.headers.append((b"retry-after-ms", str(math.ceil(retry_after * 1000)).encode()))


def estimate_prompt_tokens(payload: Mapping[str, Any]) -> int:
    """A quick upper-ish estimate of a request's prompt tokens: a token per 4 characters of
    its text (messages' contents, or ``prompt``), plus a few per message for the template."""
    chars = 0
    count = 0
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            count += 1
            content = message.get("content") if isinstance(message, dict) else None
            chars += _text_length(content)
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        for item in prompt:
            if isinstance(item, str):
                chars += len(item)
            elif isinstance(item, int):
                chars += 4  # already a token id
            elif isinstance(item, list):
                chars += 4 * len(item)
    return chars // 4 + 4 * count + 1


def _text_length(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part["text"])
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0
