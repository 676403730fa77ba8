"""An in-memory queue for the worker's unit tests: the interface of `study_embed.queue.Queue`
(what `QueueClient` offers the worker), the queue's rules kept in a dict, no database.

It keeps the rules the worker depends on, as the SQL does (040_queue.sql): a claim hands out
none/stale/failed-and-due rows and pending rows whose lease expired, with a fresh token each;
complete/fail/release act only on a row whose token is still the presented one; release spends
no attempt.  It does not keep what only the database can prove (concurrency, HOT updates,
privileges): those are tested against PostgreSQL in tests/integration and tests/cli, which run
the same loops through the real command.

Model changes: `begin(model, dim)` gives every row a second state, the shadow slot's
(046_generations.sql), which the `slot="shadow"` calls act on; `switch()` trades the slots.
complete() refuses a model that is not the slot's, as the SQL does.

Faults: set `unavailable` and every call raises DatabaseUnavailable, as the real client does
once its retries are exhausted or when asked not to wait; `calls` records each method called.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from study_embed.database import DatabaseError, DatabaseUnavailable
from study_embed.queue import Claim, Failure, Generation, GenerationStatus, Queue, StatusRow

STATUSES = ("none", "stale", "pending", "failed", "ready")


@dataclass
class Row:
    id: int
    body: str
    status: str = "none"
    token: uuid.UUID | None = None
    due: float = 0.0
    attempts: int = 0
    vector: np.ndarray | None = None
    model: str | None = None
    last_error: str | None = None
    was: str = "none"  # the status a release returns a pending row to


def _due(row: Row, now: float) -> bool:
    """Claimable now: waiting, a failure whose retry is due, or a claim whose lease expired
    (the claim's own predicate in 040_queue.sql)."""
    return row.status in ("none", "stale") or (
        row.status in ("failed", "pending") and row.due <= now
    )


@dataclass
class InMemoryQueue:
    dim: int = 4
    model: str = "test-model"  # the served generation's
    max_attempts: int = 5
    rows: dict[int, Row] = field(default_factory=dict)
    shadow: dict[int, Row] | None = None  # the shadow slot's rows, during a model change
    shadow_model: tuple[str, int] | None = None
    unavailable: bool = False
    calls: list[str] = field(default_factory=list)
    notified: asyncio.Event = field(default_factory=asyncio.Event)
    opened: bool = False

    # -- what a client does (tests) ----------------------------------------------------------

    def insert(self, *bodies: str) -> list[int]:
        ids = []
        for body in bodies:
            row = Row(len(self.rows) + 1, body)
            self.rows[row.id] = row
            if self.shadow is not None:
                self.shadow[row.id] = Row(row.id, body)
            ids.append(row.id)
        self.notified.set()
        return ids

    def begin(self, model: str, dim: int) -> None:
        """A model change: every row queued in the shadow slot."""
        self.shadow = {i: Row(i, r.body) for i, r in self.rows.items()}
        self.shadow_model = (model, dim)

    def switch(self) -> None:
        assert self.shadow is not None and self.shadow_model is not None
        self.rows, self.shadow = self.shadow, self.rows
        (self.model, self.dim), self.shadow_model = self.shadow_model, (self.model, self.dim)

    def shadow_statuses(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for r in (self.shadow or {}).values():
            found[r.status] = found.get(r.status, 0) + 1
        return found

    def statuses(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for r in self.rows.values():
            found[r.status] = found.get(r.status, 0) + 1
        return found

    # -- the Queue interface -----------------------------------------------------------------

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.unavailable:
            raise DatabaseUnavailable("connection refused (in-memory queue switched off)")

    def _slot(self, slot: str) -> dict[int, Row]:
        if slot == "served":
            return self.rows
        return self.shadow if self.shadow is not None else {}

    def _current(self, claim: Claim, slot: str = "served") -> Row | None:
        row = self._slot(slot).get(claim.id)
        return row if row and row.status == "pending" and row.token == claim.token else None

    async def open(self, timeout: float = 15.0) -> None:
        self._call("open")
        self.opened = True

    async def close(self, timeout: float = 5.0) -> None:
        self.calls.append("close")
        self.opened = False

    async def ping(self) -> bool:
        self._call("ping")
        return True

    async def claim(
        self, batch_size: int, lease_seconds: float, slot: str = "served"
    ) -> list[Claim]:
        self._call("claim" if slot == "served" else "claim_shadow")
        now = time.monotonic()
        out: list[Claim] = []
        for row in self._slot(slot).values():
            if len(out) == batch_size:
                break
            if not _due(row, now):
                continue
            if row.status == "pending":
                row.attempts += 1  # an expired lease counts as an attempt
                if row.attempts >= self.max_attempts:
                    row.status, row.token = "failed", None
                    continue
            else:
                row.was = row.status
            row.status, row.token, row.due = "pending", uuid.uuid4(), now + lease_seconds
            out.append(Claim(row.id, row.token, row.body))
        return out

    async def complete(
        self, done: Sequence[tuple[Claim, np.ndarray]], model: str, slot: str = "served"
    ) -> set[int]:
        self._call("complete" if slot == "served" else "complete_shadow")
        expected = self.model if slot == "served" else (self.shadow_model or ("", 0))[0]
        if model != expected:
            raise DatabaseError(f"complete: the {slot} generation is model {expected}, not {model}")
        written = set()
        for claim, vector in done:
            if (row := self._current(claim, slot)) is not None:
                row.status, row.token, row.vector, row.model = "ready", None, vector, model
                row.attempts, row.last_error = 0, None
                written.add(row.id)
        return written

    async def fail(self, failures: Sequence[Failure], slot: str = "served") -> None:
        self._call("fail")
        for f in failures:
            if (row := self._current(f.claim, slot)) is not None:
                row.attempts += 1
                row.status, row.token, row.last_error = "failed", None, f.error
                parked = not f.retryable or row.attempts >= self.max_attempts
                row.due = float("inf") if parked else time.monotonic()

    async def release(
        self,
        claims: Sequence[Claim],
        retry_in: float,
        reason: str,
        retry: bool = True,
        slot: str = "served",
    ) -> None:
        self._call("release")
        for claim in claims:
            if (row := self._current(claim, slot)) is not None:
                row.status, row.token, row.due = row.was, None, time.monotonic() + retry_in
        if claims:
            self.notified.set()

    async def detect_duplicates(self, budget_seconds: float) -> int:
        self._call("detect_duplicates")
        return 0

    async def compact_counts(self) -> None:
        self._call("compact_counts")

    async def embedding_dimension(self) -> int | None:
        self._call("embedding_dimension")
        return self.dim

    async def channel(self) -> str:
        self._call("channel")
        return "study_embed"

    async def generation_status(self, retry: bool = True) -> list[GenerationStatus]:
        self._call("generation_status")
        live = len(self.rows)
        found = [
            GenerationStatus(
                "served",
                self.model,
                self.dim,
                "served",
                datetime.now(UTC),
                live,
                self.statuses().get("ready", 0),
                self.statuses().get("failed", 0),
            )
        ]
        if self.shadow_model is not None:
            shadow = self.shadow_statuses()
            found.append(
                GenerationStatus(
                    "shadow",
                    *self.shadow_model,
                    "next",
                    datetime.now(UTC),
                    live,
                    shadow.get("ready", 0),
                    shadow.get("failed", 0),
                )
            )
        return found

    async def generations(self) -> list[Generation]:
        self._call("generations")
        found = [Generation("served", self.model, self.dim)]
        if self.shadow_model is not None:
            found.append(Generation("shadow", *self.shadow_model))
        return found

    async def waiting(self) -> int:
        self._call("waiting")
        return sum(1 for r in self.rows.values() if r.status != "ready")

    async def status(self, retry: bool = True) -> list[StatusRow]:
        self._call("status")
        counts = self.statuses()
        return [StatusRow(s, counts.get(s, 0), 0, None) for s in STATUSES]

    def _claimable(self) -> bool:
        now = time.monotonic()
        return any(_due(r, now) for r in self.rows.values())

    @asynccontextmanager
    async def sleeping_on(self, channel: str) -> AsyncIterator[MemorySleeper]:
        self._call("listen")
        yield MemorySleeper(self)


class MemorySleeper:
    """The LISTEN connection's part: a NOTIFY is `queue.notified`."""

    def __init__(self, queue: InMemoryQueue) -> None:
        self.queue = queue

    async def sleep(self, wait_ms: int) -> str:
        self.queue._call("listener_sleep")
        if self.queue._claimable():
            return "work"
        self.queue.notified.clear()
        return "asleep"

    async def wake(self) -> None:
        self.queue._call("listener_wake")

    async def wait(self, stop: asyncio.Event, timeout: float) -> str:
        notified = asyncio.ensure_future(self.queue.notified.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {notified, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            notified.cancel()
            stopped.cancel()
        if stopped in done:
            return "stop"
        if self.queue.unavailable:
            raise DatabaseUnavailable("the LISTEN connection was lost")
        return "notify" if notified in done else "poll"


def _conforms(q: InMemoryQueue) -> Queue:
    return q  # mypy holds the in-memory queue to the interface the worker uses
