"""The queue client: one method per SQL function of the queue API (db/queries/queue.sql),
typed results.  Built on the database layer (database.py), which decides what a database error
means.

complete/fail/release are safe to repeat (they act only on the current claim).  A claim whose
reply was lost with the connection leaves its rows pending until their lease expires: the price
of never handing one row to two listeners.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

import numpy as np
import psycopg

from .database import Database, VectorRows, clean_text

APP_NAME = "study-embed listener"


@dataclass(frozen=True)
class Claim:
    id: int
    token: UUID
    body: str


@dataclass(frozen=True)
class Failure:
    claim: Claim
    error: str
    retryable: bool
    kind: str = "rejected"  # for the metrics: rejected, unusable_vector, listener_error


@dataclass(frozen=True)
class Generation:
    """Which model a slot holds (study_embed.generations): `served` is what search compares,
    `shadow` the other model of a change in progress."""

    slot: str
    model: str
    dimension: int


@dataclass(frozen=True)
class GenerationStatus(Generation):
    role: str  # served, next (being built) or previous (kept for a switch back)
    since: datetime
    live: int
    ready: int
    failed: int


@dataclass(frozen=True)
class StatusRow:
    status: str
    live: int
    deleted: int
    oldest_waiting: timedelta | None


@dataclass(frozen=True)
class FailedRow:
    id: int
    attempts: int
    last_error: str | None
    next_retry_at: datetime | None
    waiting_for_edit: bool


async def read_status(db: Database, retry: bool = True) -> list[StatusRow]:
    """The queue's state (study_embed.status), for any client."""
    return [StatusRow(*r) for r in await db.run("status", retry=retry)]


async def read_generations(db: Database, retry: bool = True) -> list[GenerationStatus]:
    """The generations and how far each covers the live rows, for any client."""
    return [GenerationStatus(*r) for r in await db.run("generation_status", retry=retry)]


def _slot(name: str, slot: str) -> str:
    """The statement of `name` for a slot: claim, claim_shadow, ..."""
    if slot not in ("served", "shadow"):
        raise ValueError(f"slot must be served or shadow, not {slot!r}")
    return name if slot == "served" else f"{name}_shadow"


class Sleeper(Protocol):
    """The LISTEN connection as the worker uses it (`Listening`)."""

    async def sleep(self, wait_ms: int) -> str: ...
    async def wake(self) -> None: ...
    async def wait(self, stop: asyncio.Event, timeout: float) -> str: ...


class Queue(Protocol):
    """What the worker and the listener process need of a queue: `QueueClient` against
    PostgreSQL, `study_embed_dev.memory_queue.InMemoryQueue` in the worker's unit tests.  Every
    method raises the database layer's typed errors (database.py)."""

    async def open(self, timeout: float = ...) -> None: ...
    async def close(self, timeout: float = ...) -> None: ...
    async def ping(self) -> bool: ...
    async def claim(
        self, batch_size: int, lease_seconds: float, slot: str = "served"
    ) -> list[Claim]: ...
    async def complete(
        self, done: Sequence[tuple[Claim, np.ndarray]], model: str, slot: str = "served"
    ) -> set[int]: ...
    async def fail(self, failures: Sequence[Failure], slot: str = "served") -> None: ...
    async def release(
        self,
        claims: Sequence[Claim],
        retry_in: float,
        reason: str,
        retry: bool = True,
        slot: str = "served",
    ) -> None: ...
    async def generations(self) -> list[Generation]: ...
    async def generation_status(self, retry: bool = True) -> list[GenerationStatus]: ...
    async def detect_duplicates(self, budget_seconds: float) -> int: ...
    async def compact_counts(self) -> None: ...
    async def embedding_dimension(self) -> int | None: ...
    async def channel(self) -> str: ...
    async def waiting(self) -> int: ...
    async def status(self, retry: bool = True) -> list[StatusRow]: ...
    def sleeping_on(self, channel: str) -> AbstractAsyncContextManager[Sleeper]: ...


class QueueClient(Database):
    def __init__(self, url: str, *, max_size: int = 4, app_name: str = APP_NAME) -> None:
        super().__init__(url, "queue", max_size=max_size, app_name=app_name)

    # -- the queue API ---------------------------------------------------------------------------

    async def claim(
        self, batch_size: int, lease_seconds: float, slot: str = "served"
    ) -> list[Claim]:
        """A batch of the served generation's queue, or of the shadow one's (a model change
        in progress; nothing when there is none)."""
        rows = await self.run(
            _slot("claim", slot), {"batch_size": batch_size, "lease_seconds": lease_seconds}
        )
        return [Claim(*r) for r in rows]

    async def complete(
        self, done: Sequence[tuple[Claim, np.ndarray]], model: str, slot: str = "served"
    ) -> set[int]:
        """Store the vectors of still-current claims; returns the ids written.  The database
        refuses a model that is not the slot's."""
        if not done:
            return set()
        vectors = [v for _, v in done]
        rows = await self.run(
            _slot("complete", slot),
            {
                "ids": [c.id for c, _ in done],
                "claim_tokens": [c.token for c, _ in done],
                # one shape (the column's, as check_vectors() saw to): one array in one step;
                # else as they are, for the database to refuse
                "embeddings": VectorRows(vectors)
                if len({v.shape for v in vectors}) == 1
                else vectors,
                "model": model,
            },
        )
        return {r[0] for r in rows}

    async def fail(self, failures: Sequence[Failure], slot: str = "served") -> None:
        for retryable in (True, False):
            part = [f for f in failures if f.retryable is retryable]
            if part:
                await self.run(
                    _slot("fail", slot),
                    {
                        "ids": [f.claim.id for f in part],
                        "claim_tokens": [f.claim.token for f in part],
                        "errors": [clean_text(f.error) for f in part],
                        "retryable": retryable,
                    },
                )

    async def release(
        self,
        claims: Sequence[Claim],
        retry_in: float,
        reason: str,
        retry: bool = True,
        slot: str = "served",
    ) -> None:
        await self.run(
            _slot("release", slot),
            {
                "ids": [c.id for c in claims],
                "claim_tokens": [c.token for c in claims],
                "retry_in_seconds": retry_in,
                "reason": clean_text(reason),
            },
            retry=retry,
        )

    async def detect_duplicates(self, budget_seconds: float) -> int:
        return await self.scalar("detect_duplicates", {"budget_seconds": budget_seconds}) or 0

    async def compact_counts(self) -> None:
        await self.run("compact_counts")

    async def embedding_dimension(self) -> int | None:
        return await self.scalar("embedding_dimension")

    async def channel(self) -> str:
        return await self.scalar("channel")

    async def generations(self) -> list[Generation]:
        return [Generation(*r) for r in await self.run("generations")]

    async def served_model(self) -> str:
        return await self.scalar("served_model")

    async def generation_status(self, retry: bool = True) -> list[GenerationStatus]:
        return await read_generations(self, retry)

    async def waiting(self) -> int:
        """Rows waiting for an embedding now (exact, from the status view)."""
        return await self.scalar("waiting") or 0

    async def status(self, retry: bool = True) -> list[StatusRow]:
        return await read_status(self, retry)

    async def failures(self, limit: int) -> list[FailedRow]:
        return [FailedRow(*r) for r in await self.run("failures", {"limit": limit})]

    async def requeue_model(self, model: str, after_id: int) -> tuple[int, int | None]:
        """Queue one bounded batch of rows embedded by another model: (queued, next after_id,
        None when done)."""
        rows = await self.run("requeue_model", {"model": model, "after_id": after_id})
        return rows[0][0], rows[0][1]

    # -- LISTEN ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def sleeping_on(self, channel: str) -> AsyncIterator[Listening]:
        """The LISTEN connection and its sleep lock (errors come out typed: see database.py)."""
        async with self.listening(channel) as conn:
            yield Listening(conn, self.q)


class Listening:
    """The LISTEN connection, and the sleep lock taken on it (study_embed.listener_sleep)."""

    def __init__(self, conn: psycopg.AsyncConnection, q: dict[str, str]) -> None:
        self.conn, self.q = conn, q

    async def sleep(self, wait_ms: int) -> str:
        """Take the sleep lock, so that writers start to NOTIFY: asleep, work, other or busy."""
        cur = await self.conn.execute(self.q["listener_sleep"], {"wait_ms": wait_ms})
        row = await cur.fetchone()
        assert row is not None
        return row[0]

    async def wake(self) -> None:
        await self.conn.execute(self.q["listener_wake"])

    async def wait(self, stop: asyncio.Event, timeout: float) -> str:
        """Until a NOTIFY ('notify'), the timeout ('poll') or stop ('stop')."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "poll"
            async for _ in self.conn.notifies(timeout=min(remaining, 0.5), stop_after=1):
                return "notify"
        return "stop"
