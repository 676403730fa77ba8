"""The worker loop: claim a batch, embed it, write it back — and keep the embedding server busy.

All state lives in the database; this process only moves bytes.  A claimed batch is held in
`_held` from the moment it is claimed until its outcome (complete, fail or release) is written,
so that a shutdown can give back whatever it did not finish.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import count
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
from pgvector.psycopg import register_vector_async
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .embedders import (EmbeddingClient, EmbeddingError, InputError, MalformedReply,
                        TransientError, check_vectors)
from .sqlfiles import queries

log = logging.getLogger("study_embed.worker")
APP_NAME = "study-embed listener"
SLEEP_LOCK_WAIT_MS = 50   # how long a listener waits for committing writers before it sleeps
#                           (writers that come meanwhile NOTIFY: keep it short)
FOLD_EVERY = 10.0         # seconds between two foldings of the status counts by an idle listener


class StartupError(Exception):
    """The listener must not start: the message says why.  `config` when it is a setting."""

    def __init__(self, message: str, config: bool = False) -> None:
        super().__init__(message)
        self.config = config


@dataclass(frozen=True)
class WorkerSettings:
    database_url: str
    model: str
    batch_size: int = 10
    concurrency: int = 2
    lease_seconds: float = 120.0
    poll_interval: float = 30.0
    shutdown_timeout: float = 20.0


@dataclass(frozen=True)
class Row:
    id: int
    token: UUID
    body: str


@dataclass
class Stats:
    embedded: int = 0
    failed: Counter = field(default_factory=Counter)   # reason -> rows
    released: int = 0
    superseded: int = 0                                 # claim voided by an edit meanwhile
    batches: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


class Breaker:
    """Backs the whole listener off while the embedding server is unavailable."""

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base, self.cap = base, cap
        self.failures = 0
        self.open_until = 0.0

    @property
    def is_open(self) -> bool:
        return time.monotonic() < self.open_until

    def record_success(self) -> None:
        if self.failures:
            log.info("embedding server is answering again")
        self.failures = 0
        self.open_until = 0.0

    def record_failure(self) -> float:
        delay = min(self.cap, self.base * 2 ** self.failures) * random.uniform(0.8, 1.0)
        self.failures += 1
        self.open_until = time.monotonic() + delay
        return delay

    async def wait(self, stop: asyncio.Event) -> None:
        remaining = self.open_until - time.monotonic()
        if remaining > 0:
            try:
                await asyncio.wait_for(stop.wait(), remaining)
            except TimeoutError:
                pass


class Worker:
    def __init__(self, settings: WorkerSettings, client: EmbeddingClient) -> None:
        self.s = settings
        self.client = client
        self.q = queries()
        self.stats = Stats()
        self.breaker = Breaker()
        self.dim = 0
        self._held: dict[int, list[Row]] = {}
        self._folded_at = float("-inf")
        self._seq = count()
        self.pool = AsyncConnectionPool(
            settings.database_url, min_size=1, max_size=settings.concurrency + 2, open=False,
            kwargs={"autocommit": True, "application_name": APP_NAME},
            configure=register_vector_async, check=AsyncConnectionPool.check_connection,
            name="study-embed")

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(
                    self.s.database_url, application_name=APP_NAME) as conn:
                cur = await conn.execute(
                    "SELECT to_regtype('vector') IS NOT NULL,"
                    " to_regprocedure('study_embed.claim(integer, interval)') IS NOT NULL")
                has_vector, has_schema = await cur.fetchone()
        except psycopg.OperationalError as e:
            raise StartupError(f"cannot connect to the database: {e}".strip()) from None
        if not (has_vector and has_schema):
            raise StartupError("the database is not migrated (no pgvector type or no "
                               "study_embed schema): run `make migrate`", config=True)
        try:
            await self.pool.open(wait=True, timeout=15)
        except PoolTimeout as e:
            raise StartupError(f"cannot connect to the database: {e}") from None

    async def close(self) -> None:
        await self.pool.close()
        await self.client.aclose()

    async def startup_checks(self, wait_for_server: bool, stop: asyncio.Event) -> None:
        """The column's dimension from the catalog; the server answers with that dimension."""
        try:
            dim = await self._scalar("embedding_dimension", {})
        except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName):
            raise StartupError("the study_embed schema is missing: run `make migrate`",
                               config=True) from None
        except psycopg.errors.InsufficientPrivilege:
            raise StartupError("this database role may not run the queue: "
                               "GRANT study_embed_listener TO it", config=True) from None
        if dim is None or dim < 1:
            raise StartupError("study_questions.embedding is missing: run `make migrate`",
                               config=True)
        self.dim = dim
        delay = 1.0
        while True:
            try:
                [probe] = await self.client.embed(["문제: dimension probe"])
                break
            except EmbeddingError as e:
                msg = (f"the embedding server at {self.client.config.url} "
                       f"({self.client.config.api}) does not answer correctly: {e}")
                if not wait_for_server or isinstance(e, (InputError, MalformedReply)):
                    raise StartupError(msg) from None
                log.warning(msg + f"; retrying in {delay:.0f} s")
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    raise StartupError("stopped while waiting for the embedding server")
                except TimeoutError:
                    delay = min(delay * 2, 30.0)
        if probe.shape[0] != dim:
            raise StartupError(
                f"dimension mismatch: the embedding server returns {probe.shape[0]}-dimensional "
                f"vectors ({self.client.config.model}) but study_questions.embedding is "
                f"vector({dim}). Point EMBEDDING_URL/EMBEDDING_MODEL at a {dim}-dimensional model "
                f"or migrate with EMBEDDING_DIM={probe.shape[0]}.", config=True)
        log.info("embedding server ok", extra={"fields": {
            "api": self.client.config.api, "url": self.client.config.url,
            "model": self.s.model, "dim": dim}})

    # -- database --------------------------------------------------------------------------------

    async def _run(self, name: str, params: dict) -> list[tuple]:
        """One queue-API call, retried across connection loss.  complete/fail/release are
        idempotent (they act only on the current claim); a claim whose reply was lost leaves
        its rows pending until their lease expires, which is the price of never double-claiming."""
        delay = 0.5
        while True:
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(self.q[name], params)
                    return await cur.fetchall() if cur.description else []
            except (psycopg.OperationalError, PoolTimeout) as e:
                log.warning("database unavailable; retrying", extra={"fields": {
                    "query": name, "error": _first_line(e), "retry_in_s": round(delay, 1)}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _scalar(self, name: str, params: dict) -> Any:
        rows = await self._run(name, params)
        return rows[0][0] if rows else None

    async def waiting(self) -> int:
        """Rows waiting for an embedding now (exact, from the status view)."""
        return await self._scalar("waiting", {})

    async def claim(self) -> list[Row]:
        rows = await self._run("claim", {"batch_size": self.s.batch_size,
                                         "lease_seconds": self.s.lease_seconds})
        return [Row(*r) for r in rows]

    async def _complete(self, done: list[tuple[Row, np.ndarray]]) -> set[int]:
        rows = await self._run("complete", {
            "ids": [r.id for r, _ in done], "claim_tokens": [r.token for r, _ in done],
            "embeddings": [v for _, v in done], "model": self.s.model})
        return {r[0] for r in rows}

    async def _fail(self, failed: list[tuple[Row, str, bool]]) -> None:
        for retryable in (True, False):
            part = [(r, msg) for r, msg, rt in failed if rt is retryable]
            if part:
                await self._run("fail", {
                    "ids": [r.id for r, _ in part], "claim_tokens": [r.token for r, _ in part],
                    "errors": [m for _, m in part], "retryable": retryable})

    async def _release(self, rows: list[Row], retry_in: float, reason: str) -> None:
        await self._run("release", {
            "ids": [r.id for r in rows], "claim_tokens": [r.token for r in rows],
            "retry_in_seconds": retry_in, "reason": reason[:2000]})
        self.stats.released += len(rows)

    # -- one batch -------------------------------------------------------------------------------

    async def embed_rows(self, rows: list[Row]) -> tuple[list[tuple[Row, np.ndarray]],
                                                          list[tuple[Row, str, bool]]]:
        """Embed rows; isolate rows the server rejects by splitting.  TransientError escapes."""
        try:
            vectors = await self.client.embed([r.body for r in rows])
        except InputError as e:
            if len(rows) == 1:
                return [], [(rows[0], f"rejected by the embedding server: {e}", e.retryable)]
            mid = len(rows) // 2
            done_a, failed_a = await self.embed_rows(rows[:mid])
            done_b, failed_b = await self.embed_rows(rows[mid:])
            return done_a + done_b, failed_a + failed_b
        except MalformedReply as e:
            return [], [(r, f"malformed reply from the embedding server: {e}", True) for r in rows]
        done, failed = [], []
        for row, vec, problem in zip(rows, vectors, check_vectors(vectors, self.dim), strict=True):
            if problem is None:
                done.append((row, vec))
            else:
                failed.append((row, f"malformed reply from the embedding server: {problem}", True))
        return done, failed

    async def process(self, key: int, rows: list[Row]) -> None:
        t0 = time.monotonic()
        try:
            done, failed = await self.embed_rows(rows)
        except TransientError as e:
            delay = self.breaker.record_failure()
            log.warning("embedding server unavailable; batch given back", extra={"fields": {
                "rows": len(rows), "error": str(e), "retry_in_s": round(delay, 1)}})
            await self._release(rows, delay, f"embedding server unavailable: {e}")
            self._held.pop(key, None)
            return
        self.breaker.record_success()
        embed_ms = (time.monotonic() - t0) * 1000
        written = await self._complete(done) if done else set()
        if failed:
            await self._fail(failed)
        self._held.pop(key, None)
        self.stats.batches += 1
        self.stats.embedded += len(written)
        self.stats.superseded += len(done) - len(written)
        for _, msg, _ in failed:
            self.stats.failed[msg[:160]] += 1
        log.info("batch", extra={"fields": {
            "rows": len(rows), "embedded": len(written), "failed": len(failed),
            "superseded": len(done) - len(written), "embed_ms": round(embed_ms, 1),
            "total_ms": round((time.monotonic() - t0) * 1000, 1)}})
        for row, msg, retryable in failed:
            log.warning("row failed", extra={"fields": {"id": row.id, "error": msg,
                                                        "retryable": retryable}})

    # -- the loops -------------------------------------------------------------------------------

    async def drain(self, stop: asyncio.Event) -> None:
        """Claim and process until nothing is claimable (or stop).  One batch is claimed ahead
        while `concurrency` batches are in flight, so the server never waits for the database."""
        queue: asyncio.Queue[tuple[int, list[Row]] | None] = asyncio.Queue(maxsize=1)

        async def producer() -> None:
            try:
                while not stop.is_set():
                    await self.breaker.wait(stop)
                    if stop.is_set():
                        break
                    rows = await self.claim()
                    if not rows:
                        break
                    key = next(self._seq)
                    self._held[key] = rows
                    await queue.put((key, rows))
            finally:
                for _ in range(self.s.concurrency):
                    await queue.put(None)

        async def consumer() -> None:
            while (item := await queue.get()) is not None:
                try:
                    await self.process(*item)
                except Exception as e:  # a bug here must not strand the batch or the loop
                    log.exception("batch failed inside the listener")
                    key, rows = item
                    await self._fail([(r, f"listener error: {type(e).__name__}: {e}", True)
                                      for r in rows])
                    self._held.pop(key, None)

        tasks = [asyncio.create_task(producer())]
        tasks += [asyncio.create_task(consumer()) for _ in range(self.s.concurrency)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._held:
                await asyncio.shield(self.release_held("listener stopped before finishing"))

    async def detect_duplicates(self, budget_seconds: float = 0.5) -> None:
        """A short near-duplicate pass over what was embedded (the pg_cron tick runs longer
        ones); short so that a NOTIFY arriving meanwhile waits at most this long."""
        n = await self._scalar("detect_duplicates", {"budget_seconds": budget_seconds})
        if n:
            log.info("near-duplicate pass", extra={"fields": {"questions": n}})

    async def release_held(self, reason: str) -> None:
        held = [r for rows in self._held.values() for r in rows]
        self._held.clear()
        if held:
            log.info("giving back unfinished rows", extra={"fields": {"rows": len(held)}})
            try:
                await self._release(held, 0, reason)
            except Exception as e:  # the lease expiry is the safety net
                log.warning("could not give back rows; they return when their lease expires",
                            extra={"fields": {"rows": len(held), "error": str(e)}})

    async def fold_counts(self) -> None:
        """Fold the status-count deltas, at most every FOLD_EVERY seconds (the pg_cron tick does
        it too; not every database has pg_cron)."""
        if time.monotonic() - self._folded_at >= FOLD_EVERY:
            await self._run("compact_counts", {})
            self._folded_at = time.monotonic()

    async def _sleep(self, conn: psycopg.AsyncConnection) -> str:
        """Take the sleep lock on the LISTEN connection, so that writers start to NOTIFY (see
        study_embed.listener_sleep): asleep, work, other or busy."""
        cur = await conn.execute(self.q["listener_sleep"], {"wait_ms": SLEEP_LOCK_WAIT_MS})
        return (await cur.fetchone())[0]

    async def listen(self, stop: asyncio.Event) -> None:
        """Scan first (NOTIFY is not replayed), then sleep until a NOTIFY, a poll, or stop.
        Writers send NOTIFY only while a listener sleeps holding the sleep lock, so that busy
        writers do not serialise their commits on it; the lock's handshake loses no wake-up."""
        channel = await self._scalar("channel", {})
        delay = 1.0
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.s.database_url, autocommit=True,
                        application_name=APP_NAME + " (LISTEN)") as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    log.info("listening", extra={"fields": {"channel": channel}})
                    delay = 1.0
                    while not stop.is_set():
                        await self.drain(stop)
                        await self.detect_duplicates()
                        await self.fold_counts()
                        state = await self._sleep(conn)
                        if state == "work":
                            continue
                        # 'other': another listener holds the lock, and the NOTIFY that wakes
                        # it wakes this one too; look again now and then in case it went away.
                        # 'busy': writers are committing; drain again after a breath.
                        timeout = {"asleep": self.s.poll_interval,
                                   "other": min(self.s.poll_interval, 5.0),
                                   "busy": 0.05}[state]
                        woke = await self._wait(conn, stop, timeout)
                        if state == "asleep":
                            await conn.execute(self.q["listener_wake"])
                        log.debug("woke", extra={"fields": {"by": woke, "slept": state}})
            except psycopg.OperationalError as e:
                if stop.is_set():
                    break
                log.warning("lost the database connection; reconnecting", extra={"fields": {
                    "error": _first_line(e), "retry_in_s": delay}})
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 30.0)

    async def _wait(self, conn: psycopg.AsyncConnection, stop: asyncio.Event,
                    timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "poll"
            async for _ in conn.notifies(timeout=min(remaining, 0.5), stop_after=1):
                return "notify"
        return "stop"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
