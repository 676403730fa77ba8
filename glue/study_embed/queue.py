"""The queue client: one method per SQL function of the queue API (db/queries.sql), typed
results, and the one place that decides what a database error means.

- Connection-class failures (the server went away, cannot connect, the pool has no connection)
  are retried with backoff until they pass; after close(), or for a call made with
  `retry=False`, they raise `DatabaseUnavailable` at once, so that a shutdown never waits for a
  database that is down.
- Deadlocks and serialization failures are retried a few times, then raised.
- Everything else (a statement timeout, a lock timeout, a missing privilege) is raised as it
  is: retrying would only repeat it.

complete/fail/release are safe to repeat (they act only on the current claim).  A claim whose
reply was lost with the connection leaves its rows pending until their lease expires: the price
of never handing one row to two listeners.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
from pgvector.psycopg import register_vector_async
from psycopg import errors, sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .backoff import Backoff
from .sqlfiles import queries

log = logging.getLogger("study_embed.queue")
APP_NAME = "study-embed listener"
CONFLICT_RETRIES = 3  # deadlock / serialization failure: tries before giving up
CONNECT_TIMEOUT = 10.0  # seconds to wait for a pooled connection before trying again
MESSAGE_LIMIT = 2000  # characters of an error message kept in the row


class DatabaseUnavailable(Exception):
    """The database cannot be reached (and the client is closing, so it does not retry)."""


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


def is_connection_error(e: BaseException) -> bool:
    """Lost or no connection: worth retrying.  psycopg raises OperationalError for these, but
    also for QueryCanceled (statement_timeout) and LockNotAvailable (lock_timeout), which are
    not."""
    if isinstance(e, PoolTimeout):
        return True
    if not isinstance(e, psycopg.OperationalError):
        return False
    state = e.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def is_conflict(e: BaseException) -> bool:
    return isinstance(e, (errors.SerializationFailure, errors.DeadlockDetected))


def clean_text(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """What a text column accepts: no NUL (PostgreSQL refuses it), and not unbounded."""
    return text.replace("\x00", "")[:limit]


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class QueueClient:
    def __init__(self, url: str, *, max_size: int = 4, app_name: str = APP_NAME) -> None:
        self.url = url
        self.app_name = app_name
        self.closing = False
        self.q = queries()
        self.pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "application_name": app_name},
            configure=register_vector_async,
            check=AsyncConnectionPool.check_connection,
            name="study-embed",
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self, timeout: float = 15.0) -> None:
        await self.pool.open(wait=True, timeout=timeout)

    async def close(self, timeout: float = 5.0) -> None:
        self.closing = True
        await self.pool.close(timeout=timeout)

    # -- the one way a statement runs ------------------------------------------------------------

    async def _call(
        self, name: str, params: dict[str, Any] | None = None, retry: bool = True
    ) -> list[tuple]:
        backoff = Backoff(base=0.5, cap=10.0)
        conflicts = 0
        while True:
            try:
                wait = CONNECT_TIMEOUT if retry and not self.closing else 1.0
                async with self.pool.connection(timeout=wait) as conn:
                    cur = await conn.execute(self.q[name], params or {})
                    return await cur.fetchall() if cur.description else []
            except Exception as e:
                if is_connection_error(e):
                    if self.closing or not retry:
                        raise DatabaseUnavailable(first_line(e)) from e
                    delay = backoff.next_delay()
                    log.warning(
                        "database unavailable; retrying",
                        extra={
                            "fields": {
                                "query": name,
                                "error": first_line(e),
                                "retry_in_s": round(delay, 1),
                            }
                        },
                    )
                    await asyncio.sleep(delay)
                elif is_conflict(e) and conflicts < CONFLICT_RETRIES:
                    conflicts += 1
                    await asyncio.sleep(0.05 * conflicts)
                else:
                    raise

    async def fetch(
        self, name: str, params: dict[str, Any] | None = None, retry: bool = True
    ) -> list[tuple]:
        """Run one statement of db/queries.sql under this client's error policy (for the
        app-facing reads in bank.py)."""
        return await self._call(name, params, retry)

    async def _scalar(self, name: str, params: dict[str, Any] | None = None) -> Any:
        rows = await self._call(name, params)
        return rows[0][0] if rows else None

    # -- the queue API ---------------------------------------------------------------------------

    async def claim(self, batch_size: int, lease_seconds: float) -> list[Claim]:
        rows = await self._call("claim", {"batch_size": batch_size, "lease_seconds": lease_seconds})
        return [Claim(*r) for r in rows]

    async def complete(self, done: Sequence[tuple[Claim, np.ndarray]], model: str) -> set[int]:
        """Store the vectors of still-current claims; returns the ids written."""
        if not done:
            return set()
        rows = await self._call(
            "complete",
            {
                "ids": [c.id for c, _ in done],
                "claim_tokens": [c.token for c, _ in done],
                "embeddings": [v for _, v in done],
                "model": model,
            },
        )
        return {r[0] for r in rows}

    async def fail(self, failures: Sequence[Failure]) -> None:
        for retryable in (True, False):
            part = [f for f in failures if f.retryable is retryable]
            if part:
                await self._call(
                    "fail",
                    {
                        "ids": [f.claim.id for f in part],
                        "claim_tokens": [f.claim.token for f in part],
                        "errors": [clean_text(f.error) for f in part],
                        "retryable": retryable,
                    },
                )

    async def release(
        self, claims: Sequence[Claim], retry_in: float, reason: str, retry: bool = True
    ) -> None:
        await self._call(
            "release",
            {
                "ids": [c.id for c in claims],
                "claim_tokens": [c.token for c in claims],
                "retry_in_seconds": retry_in,
                "reason": clean_text(reason),
            },
            retry=retry,
        )

    async def detect_duplicates(self, budget_seconds: float) -> int:
        return await self._scalar("detect_duplicates", {"budget_seconds": budget_seconds}) or 0

    async def compact_counts(self) -> None:
        await self._call("compact_counts")

    async def ping(self) -> bool:
        """Does the database answer (one try, no retry)?"""
        return bool(await self._call("ping", retry=False))

    async def embedding_dimension(self) -> int | None:
        return await self._scalar("embedding_dimension")

    async def channel(self) -> str:
        return await self._scalar("channel")

    async def schema_ready(self) -> tuple[bool, bool]:
        """(pgvector's type exists, the queue API exists), on a connection of its own: at
        start-up a database that cannot be reached is an error, not something to wait for."""
        async with await psycopg.AsyncConnection.connect(
            self.url, application_name=self.app_name
        ) as conn:
            cur = await conn.execute(self.q["schema_ready"])
            row = await cur.fetchone()
        assert row is not None
        return row[0], row[1]

    async def waiting(self) -> int:
        """Rows waiting for an embedding now (exact, from the status view)."""
        return await self._scalar("waiting") or 0

    async def status(self, retry: bool = True) -> list[StatusRow]:
        return [StatusRow(*r) for r in await self._call("status", retry=retry)]

    async def failures(self, limit: int) -> list[FailedRow]:
        return [FailedRow(*r) for r in await self._call("failures", {"limit": limit})]

    async def requeue_model(self, model: str, after_id: int) -> tuple[int, int | None]:
        """Queue one bounded batch of rows embedded by another model: (queued, next after_id,
        None when done)."""
        rows = await self._call("requeue_model", {"model": model, "after_id": after_id})
        return rows[0][0], rows[0][1]

    # -- LISTEN ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def listening(self, channel: str) -> AsyncIterator[Listening]:
        """A connection of its own that LISTENs on `channel` (connection errors propagate:
        the caller reconnects)."""
        async with await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, application_name=self.app_name + " (LISTEN)"
        ) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
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
