"""The Python client of Turnout's HTTP APIs: management, admin and inference.

The CLI, the demo and the tests all talk to a server through :class:`TurnoutClient`. It
returns the JSON bodies the API sends (so ``--json`` prints exactly the wire) and raises
typed errors: :class:`ApiError` for an error answer (with the flat body's fields) and
:class:`Unreachable` when no answer came. Waiting for long-running operations is here too,
with a callback per poll so callers render progress their own way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

MANAGEMENT = "/management/v1"
ADMIN = "/admin/v1"

Body = dict[str, Any]


class ClientError(Exception):
    """Anything that stops a client call."""


class Unreachable(ClientError):
    """No HTTP answer: the server is down, the address is wrong, or the connection broke."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach Turnout at {url}: {cause}")
        self.url = url


class ApiError(ClientError):
    """The server answered with an error; the flat error body's fields, as sent."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    @property
    def refused(self) -> bool:
        """A 4xx: the request was wrong (as opposed to the server failing)."""
        return self.status < 500

    @classmethod
    def from_response(cls, resp: httpx.Response) -> ApiError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return cls(resp.status_code, resp.text or resp.reason_phrase)
        return cls(
            resp.status_code,
            str(body.get("message") or resp.text),
            body.get("code"),
            body.get("param"),
        )


class OperationTimeout(ClientError):
    """A long-running operation did not end within the caller's timeout."""


def version_name(org: str, arch: str, version: str | int) -> str:
    return f"orgs/{org}/models/{arch}/versions/{version}"


class TurnoutClient:
    """One server, one key (management, inference or the admin token)."""

    def __init__(self, url: str, key: str = "", *, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # trust_env=False: a proxy from the environment must never see loopback calls.
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, trust_env=False
        )

    def __enter__(self) -> TurnoutClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- raw calls ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """The raw answer, whatever its status; :class:`Unreachable` when there is none."""
        try:
            return self.http.request(method, path, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, exc) from exc

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Body:
        """The JSON body of a successful answer; :class:`ApiError` for an error answer."""
        resp = self.request(method, path, body, headers)
        if resp.status_code >= 400:
            raise ApiError.from_response(resp)
        data: Body = resp.json()
        return data

    @contextmanager
    def stream(self, path: str, body: Mapping[str, Any]) -> Iterator[httpx.Response]:
        """A POST whose answer is read as it arrives (server-sent events)."""
        try:
            with self.http.stream("POST", path, json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError.from_response(resp)
                yield resp
        except httpx.TransportError as exc:
            raise Unreachable(self.url, exc) from exc

    # -- model versions ---------------------------------------------------------------------

    def upload(
        self,
        org: str,
        arch: str,
        weight_uri: str,
        aliases: list[str] | None = None,
        fingerprint_suffix: str | None = None,
        idempotency_key: str | None = None,
    ) -> Body:
        model: Body = {"weight_uri": weight_uri, "version_aliases": aliases or []}
        if fingerprint_suffix:
            model["system_fingerprint_suffix"] = fingerprint_suffix
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.call(
            "POST",
            f"{MANAGEMENT}/orgs/{org}/models:upload",
            {"model_arch_id": arch, "model": model},
            headers,
        )

    def version(self, name: str) -> Body:
        return self.call("GET", f"{MANAGEMENT}/{name}")

    def versions(self, org: str, arch: str) -> Body:
        return self.call("GET", f"{MANAGEMENT}/orgs/{org}/models/{arch}/versions")

    def set_aliases(self, name: str, aliases: list[str]) -> Body:
        return self.call("PATCH", f"{MANAGEMENT}/{name}", {"version_aliases": aliases})

    def delete_version(self, name: str) -> Body:
        return self.call("DELETE", f"{MANAGEMENT}/{name}")

    def wait_sync(
        self,
        version: Body,
        on_poll: Callable[[Body], None] | None = None,
        *,
        timeout: float | None = None,
        interval: float = 0.3,
    ) -> Body:
        """Poll a version until its sync ends; the final body (``sync_status`` says how)."""
        return self._wait(version, lambda b: self.version(b["name"]), on_poll, timeout, interval)

    # -- endpoints and deployments --------------------------------------------------------

    def endpoints(self, org: str) -> Body:
        return self.call("GET", f"{MANAGEMENT}/orgs/{org}/endpoints")

    def endpoint(self, endpoint_id: str) -> Body:
        return self.call("GET", f"{MANAGEMENT}/endpoints/{endpoint_id}")

    def deploy(
        self,
        endpoint_id: str,
        model: str,
        *,
        rollout: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Body:
        body: Body = {"model": model}
        if rollout is not None:
            body["rollout"] = dict(rollout)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.call("POST", f"{MANAGEMENT}/endpoints/{endpoint_id}:deployModel", body, headers)

    def deployment(self, deployment_id: str) -> Body:
        return self.call("GET", f"{MANAGEMENT}/deployments/{deployment_id}")

    def deployments(self, endpoint_id: str) -> Body:
        return self.call("GET", f"{MANAGEMENT}/endpoints/{endpoint_id}/deployments")

    def cancel(self, endpoint_id: str, deployment_id: str) -> Body:
        return self.call(
            "POST", f"{MANAGEMENT}/endpoints/{endpoint_id}/deployments/{deployment_id}:cancel"
        )

    def rollback(self, endpoint_id: str) -> Body:
        return self.call("POST", f"{MANAGEMENT}/endpoints/{endpoint_id}:rollback")

    def steer(self, deployment_id: str, action: str) -> Body:
        """``pause``, ``resume`` or ``promote`` a running canary."""
        return self.call("POST", f"{MANAGEMENT}/deployments/{deployment_id}:{action}")

    def follow(
        self, endpoint_id: str, alias: str | None, rollout: Mapping[str, Any] | None = None
    ) -> Body:
        """Make the endpoint follow ``alias`` (None: stop following)."""
        body: Body = {"follow_alias": alias}
        if rollout is not None:
            body["rollout"] = dict(rollout)
        return self.call("PATCH", f"{MANAGEMENT}/endpoints/{endpoint_id}", body)

    def wait_deployment(
        self,
        operation: Body,
        on_poll: Callable[[Body], None] | None = None,
        *,
        timeout: float | None = None,
        interval: float = 0.3,
    ) -> Body:
        """Poll a deployment until it ends; the final body (``rollout_status`` says how)."""
        return self._wait(
            operation, lambda b: self.deployment(b["name"]), on_poll, timeout, interval
        )

    # -- admin (with the admin token) -------------------------------------------------------

    def create_org(self, name: str) -> Body:
        return self.call("POST", f"{ADMIN}/orgs", {"name": name})

    def create_key(self, org: str, kind: str) -> str:
        """A new key of ``kind`` (management or inference); the token is shown only now."""
        return str(self.call("POST", f"{ADMIN}/keys", {"org": org, "kind": kind})["key"])

    def create_endpoint(self, endpoint_id: str, org: str, arch: str, **fields: Any) -> Body:
        body = {"endpoint_id": endpoint_id, "org": org, "arch": arch, **fields}
        return self.call("POST", f"{ADMIN}/endpoints", body)

    # -- waiting ----------------------------------------------------------------------------

    @staticmethod
    def _wait(
        body: Body,
        fetch: Callable[[Body], Body],
        on_poll: Callable[[Body], None] | None,
        timeout: float | None,
        interval: float,
    ) -> Body:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if on_poll is not None:
                on_poll(body)
            if body["done"]:
                return body
            if deadline is not None and time.monotonic() > deadline:
                raise OperationTimeout(f"{body['name']} did not end within {timeout:g}s: {body}")
            time.sleep(interval)
            body = fetch(body)
