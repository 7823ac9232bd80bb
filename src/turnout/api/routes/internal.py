"""``/internal/v1``: what nodes of the fleet fetch from the control plane (not for tenants).

A replica on a node without the weight store reads its version's manifest, then each file,
with the internal token (``TURNOUT_INTERNAL_TOKEN``); it checks every file against the
manifest and the manifest against the digest, so the route needs to be trusted for nothing
but availability.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import FileResponse, Response

from turnout.api.deps import ServicesDep
from turnout.errors import Conflict, NotFound, Unauthenticated


async def require_internal(
    services: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    scheme, _, token = (authorization or "").partition(" ")
    expected = services.internal_token
    if (
        not expected
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(token.strip().encode(), expected.encode())
    ):
        raise Unauthenticated("send 'Authorization: Bearer <TURNOUT_INTERNAL_TOKEN>'")


router = APIRouter(
    prefix="/internal/v1",
    tags=["internal"],
    dependencies=[Depends(require_internal)],
    include_in_schema=False,
)


class _WeightFile(FileResponse):
    # Starlette reads 64 KiB at a time; weight files are gigabytes, sent to nodes that hash
    # as they receive.
    chunk_size = 4 * 2**20


def _not_found(hexdigest: str) -> NotFound:
    return NotFound(f"no published weights with digest sha256:{hexdigest}", param="digest")


@router.get("/weights/{hexdigest}/manifest")
async def manifest(hexdigest: str, s: ServicesDep) -> Response:
    try:
        found = await asyncio.to_thread(s.weights.manifest, hexdigest)
    except FileNotFoundError:
        raise _not_found(hexdigest) from None
    except ValueError as exc:  # the store's copy was changed on disk: never serve it
        raise Conflict(str(exc), param="digest") from None
    return Response(found.to_json(), media_type="application/json")


@router.get("/weights/{hexdigest}/files/{name}")
async def weight_file(hexdigest: str, name: str, s: ServicesDep) -> FileResponse:
    try:
        files = {f.path for f in (await asyncio.to_thread(s.weights.manifest, hexdigest)).files}
    except FileNotFoundError:
        raise _not_found(hexdigest) from None
    if name not in files:  # only the manifest's names: nothing else of the disk is reachable
        raise NotFound(f"sha256:{hexdigest} has no file {name!r}", param="name")
    return _WeightFile(s.weights.path_for(hexdigest) / name, media_type="application/octet-stream")
