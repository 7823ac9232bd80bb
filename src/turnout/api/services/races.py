"""Running a transaction again when it lost a uniqueness race.

Two requests that create at once (two deploys taking the next ``seq``, two uploads taking the
next version number, two retries with one ``Idempotency-Key``) both read, then both insert;
the database's unique constraint lets one commit and fails the other with ``IntegrityError``.
The loser runs its whole transaction again, and on that run sees the winner's row: the next
number, or the operation recorded under the key.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from sqlalchemy.exc import IntegrityError

from turnout.errors import Conflict

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS: Final = 20


async def run_again_on_race(what: str, work: Callable[[], Awaitable[T]]) -> T:
    """``work`` opens and commits its own transaction; it is run again after an
    ``IntegrityError``. After :data:`ATTEMPTS` lost races the caller gets a 409 to retry."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await work()
        except IntegrityError as exc:
            log.info("%s lost a race with a concurrent request (try %d): %s", what, attempt, exc)
            # A little jitter, so the losers of one round do not collide again in step.
            await asyncio.sleep(random.uniform(0, 0.01 * attempt))
    raise Conflict(
        f"{what} kept colliding with concurrent requests; retry it",
        code="concurrent_update",
    )
