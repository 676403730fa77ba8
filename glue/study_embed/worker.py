"""The worker: claim a batch, embed it, write the outcome back, and keep the embedding server
busy.  It only orchestrates: the queue client talks to the database, the embedding client to
the server and says what its answers mean (a `Disposition`), and this module maps those to
queue calls:

    vector                      -> complete (stored only if the claim is still current)
    row failure / rejected row  -> fail (retryable or for good)
    SPLIT / RETRY_LATER         -> halve the batch and try the halves
    UNREACHABLE / BACK_OFF      -> release the batch (no attempt spent), open the breaker

A claimed batch is held in `_held` from the moment it is claimed until its outcome is written,
so that a shutdown can give back whatever it did not finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from itertools import count

import numpy as np

from .backoff import Backoff, Breaker, sleep_unless
from .database import DatabaseError, DatabaseUnavailable, NotMigrated, NotPermitted, first_line
from .embedders import Disposition, EmbeddingClient, EmbeddingError, RowFailure
from .metrics import Stats
from .queue import Claim, Failure, Queue
from .settings import Settings

log = logging.getLogger("study_embed.worker")
PROBE_TEXT = "문제: dimension probe"
# how long a listener waits for committing writers before it sleeps (writers that come
# meanwhile NOTIFY: keep it short)
SLEEP_LOCK_WAIT_MS = 50
FOLD_EVERY = 10.0  # seconds between two foldings of the status counts by an idle listener
DUPLICATE_BUDGET = 0.5  # seconds of near-duplicate work between two drains
GIVE_BACK_TIMEOUT = 5.0  # seconds a shutdown spends giving back unfinished rows


class StartupError(Exception):
    """The listener must not start: the message says why.  `config` when it is a setting."""

    def __init__(self, message: str, config: bool = False) -> None:
        super().__init__(message)
        self.config = config


class Worker:
    def __init__(self, settings: Settings, queue: Queue, client: EmbeddingClient) -> None:
        self.s = settings
        self.queue = queue
        self.client = client
        self.stats = Stats()
        self.breaker = Breaker(Backoff(base=1.0, cap=60.0), probe=client.healthy)
        self.reconnect = Backoff(base=1.0, cap=30.0)  # the LISTEN connection's
        self.stats.watch(lambda: len(self._held), lambda: self.breaker.is_open)
        self.dim = 0
        self.gave_up = False
        self._held: dict[int, list[Claim]] = {}
        self._settled = asyncio.Event()  # set whenever a batch's outcome is written
        self._folded_at = float("-inf")
        self._seq = count()

    @property
    def in_flight_rows(self) -> int:
        return sum(len(c) for c in self._held.values())

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self.queue.open()
        except NotMigrated as e:
            raise StartupError(str(e), config=True) from None
        except DatabaseError as e:
            raise StartupError(f"cannot connect to the database: {e}") from None

    async def close(self) -> None:
        await self.queue.close()
        await self.client.aclose()

    async def startup_checks(self, wait_for_server: bool, stop: asyncio.Event) -> None:
        """The column's dimension from the catalog; the server answers with that dimension."""
        try:
            dim = await self.queue.embedding_dimension()
        except NotMigrated as e:
            raise StartupError(str(e), config=True) from None
        except NotPermitted:
            raise StartupError(
                "this database role may not run the queue: GRANT study_embed_listener TO it",
                config=True,
            ) from None
        if dim is None or dim < 1:
            raise StartupError(
                str(NotMigrated("study_questions.embedding is missing")), config=True
            )
        self.dim = dim
        backoff = Backoff(base=1.0, cap=30.0)
        cfg = self.client.config
        while True:
            try:
                [probe] = await self.client.embed([PROBE_TEXT])
                break
            except EmbeddingError as e:
                msg = (
                    f"the embedding server at {cfg.url} ({cfg.api}) does not answer correctly: {e}"
                )
                if not wait_for_server or not e.server_side:
                    raise StartupError(msg) from None
                delay = backoff.next_delay()
                log.warning(msg + f"; retrying in {delay:.0f} s")
                if not await sleep_unless(stop, delay):
                    raise StartupError("stopped while waiting for the embedding server") from None
        if isinstance(probe, RowFailure):
            raise StartupError(
                f"the embedding server at {cfg.url} ({cfg.api}) does not answer "
                f"correctly: {probe.message}"
            )
        if probe.shape[0] != dim:
            raise StartupError(
                f"dimension mismatch: the embedding server returns {probe.shape[0]}-dimensional "
                f"vectors ({cfg.model}) but study_questions.embedding is vector({dim}). Point "
                f"EMBEDDING_URL/EMBEDDING_MODEL at a {dim}-dimensional model or migrate with "
                f"EMBEDDING_DIM={probe.shape[0]}.",
                config=True,
            )
        log.info(
            "embedding server ok",
            extra={
                "fields": {
                    "api": cfg.api,
                    "url": cfg.url,
                    "model": self.s.embedding_model,
                    "dim": dim,
                }
            },
        )

    # -- one batch -------------------------------------------------------------------------------

    async def embed_rows(
        self, claims: list[Claim]
    ) -> tuple[list[tuple[Claim, np.ndarray]], list[Failure]]:
        """Vectors and row failures; a rejected request is halved until the rejected rows are
        alone.  A server-side EmbeddingError escapes: the whole batch goes back."""
        texts = [c.body for c in claims]
        self.stats.sent(texts)
        try:
            results = await self.client.embed(texts, self.dim)
        except EmbeddingError as e:
            if e.server_side:
                raise
            if len(claims) == 1:
                return [], [
                    Failure(
                        claims[0],
                        f"rejected by the embedding server: {e}",
                        retryable=e.disposition is Disposition.RETRY_LATER,
                    )
                ]
            mid = len(claims) // 2
            done_a, failed_a = await self.embed_rows(claims[:mid])
            done_b, failed_b = await self.embed_rows(claims[mid:])
            return done_a + done_b, failed_a + failed_b
        done: list[tuple[Claim, np.ndarray]] = []
        failed: list[Failure] = []
        for claim, result in zip(claims, results, strict=True):
            if isinstance(result, RowFailure):
                failed.append(
                    Failure(
                        claim,
                        "malformed reply from the embedding server: " + result.message,
                        result.retryable,
                        "unusable_vector",
                    )
                )
            else:
                done.append((claim, result))
        return done, failed

    async def process(self, key: int, claims: list[Claim]) -> None:
        t0 = time.monotonic()
        try:
            done, failed = await self.embed_rows(claims)
        except EmbeddingError as e:
            if e.disposition is Disposition.RATE_LIMITED:
                # not an outage: the client's pacer holds every request until the time the
                # server named; the rows go back, due at once, and no attempt is spent
                log.info(
                    "rate limited by the embedding server; batch given back",
                    extra={"fields": {"rows": len(claims), "wait_s": e.retry_after}},
                )
                await self.queue.release(claims, 0, f"rate limited: {e}")
                self.stats.released_rows(len(claims), "rate_limited")
                self._held.pop(key, None)
                return
            delay = self.breaker.record_failure()
            log.warning(
                "embedding server unavailable; batch given back",
                extra={
                    "fields": {"rows": len(claims), "error": str(e), "retry_in_s": round(delay, 1)}
                },
            )
            # due at once: the breaker, not the row, decides when the server is asked again
            await self.queue.release(claims, 0, f"embedding server unavailable: {e}")
            self.stats.released_rows(len(claims), "server_unavailable")
            self._held.pop(key, None)
            return
        self.breaker.record_success()
        t1 = time.monotonic()
        embed_ms = (t1 - t0) * 1000
        written = await self.queue.complete(done, self.s.embedding_model)
        await self.queue.fail(failed)
        self._held.pop(key, None)
        self.stats.batch(len(written), len(done) - len(written), t1 - t0, time.monotonic() - t1)
        for f in failed:
            self.stats.row_failed(f.kind, f.error)
        log.info(
            "batch",
            extra={
                "fields": {
                    "rows": len(claims),
                    "embedded": len(written),
                    "failed": len(failed),
                    "superseded": len(done) - len(written),
                    "embed_ms": round(embed_ms, 1),
                    "total_ms": round((time.monotonic() - t0) * 1000, 1),
                }
            },
        )
        for f in failed:
            log.warning(
                "row failed",
                extra={"fields": {"id": f.claim.id, "error": f.error, "retryable": f.retryable}},
            )

    # -- the loops -------------------------------------------------------------------------------

    async def drain(self, stop: asyncio.Event, give_up: bool = False) -> None:
        """Claim and process until nothing is claimable (or stop; or, with `give_up`, once the
        server has served no batch for DRAIN_GIVE_UP_AFTER seconds).  One batch is claimed
        ahead while `concurrency` batches are in flight, so the server never waits for the
        database."""
        queue: asyncio.Queue[tuple[int, list[Claim]] | None] = asyncio.Queue(maxsize=1)

        async def producer() -> None:
            while not stop.is_set():
                bound = self.s.drain_give_up_after if give_up else None
                await self.breaker.wait(stop, bound)
                if stop.is_set():
                    break
                if give_up and self.breaker.down_for >= self.s.drain_give_up_after:
                    self.gave_up = True
                    break
                self._settled.clear()
                claims = await self.queue.claim(self.s.batch_size, self.s.lease_seconds)
                if not claims:
                    if self._held:  # a batch in flight may yet be given back: look
                        with contextlib.suppress(TimeoutError):  # again when it settles
                            await asyncio.wait_for(self._settled.wait(), 1.0)
                        continue
                    break
                key = next(self._seq)
                self._held[key] = claims
                await queue.put((key, claims))
            # only on the way out of the loop: a cancelled or failed producer is followed by
            # the consumers' cancellation below, and a sentinel put into a full queue that
            # nobody reads any more would never return
            for _ in range(self.s.concurrency):
                await queue.put(None)

        async def consumer() -> None:
            while (item := await queue.get()) is not None:
                key, claims = item
                try:
                    await self.process(key, claims)
                    self._settled.set()
                except Exception as e:
                    if isinstance(e, DatabaseUnavailable):
                        raise  # the rows stay held: given back below, or by the lease
                    # a bug, or a database error writing the outcome: fail the batch, go on
                    log.exception("batch failed inside the listener")
                    error = f"listener error: {type(e).__name__}: {first_line(e)}"
                    failures = [Failure(c, error, True, "listener_error") for c in claims]
                    await self.queue.fail(failures)
                    for f in failures:
                        self.stats.row_failed(f.kind, f.error)
                    self._held.pop(key, None)
                    self._settled.set()

        tasks = [asyncio.create_task(producer())]
        tasks += [asyncio.create_task(consumer()) for _ in range(self.s.concurrency)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._held:
                await asyncio.shield(self.give_back("listener stopped before finishing"))

    async def give_back(self, reason: str) -> None:
        """Release every held row, within GIVE_BACK_TIMEOUT and without waiting for a database
        that is down: the lease is the safety net for what could not be given back."""
        held = [c for claims in self._held.values() for c in claims]
        self._held.clear()
        if not held:
            return
        log.info("giving back unfinished rows", extra={"fields": {"rows": len(held)}})
        try:
            await asyncio.wait_for(
                self.queue.release(held, 0, reason, retry=False), GIVE_BACK_TIMEOUT
            )
            self.stats.released_rows(len(held), "shutdown")
        except Exception as e:
            log.warning(
                "could not give back rows; they return when their lease expires",
                extra={"fields": {"rows": len(held), "error": first_line(e)}},
            )

    async def _optional(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        """A pass the listener can do without (the pg_cron tick does it too): a database error
        in it is logged, and the listener goes on embedding."""
        try:
            await step()
        except DatabaseError as e:
            if isinstance(e, DatabaseUnavailable):
                raise
            log.warning(f"{what} failed; going on", extra={"fields": {"error": first_line(e)}})

    async def _detect_duplicates(self) -> None:
        """A short near-duplicate pass over what was embedded (the tick runs longer ones);
        short so that a NOTIFY arriving meanwhile waits at most this long."""
        n = await self.queue.detect_duplicates(DUPLICATE_BUDGET)
        if n:
            log.info("near-duplicate pass", extra={"fields": {"questions": n}})

    async def _fold_counts(self) -> None:
        """Fold the status-count deltas, at most every FOLD_EVERY seconds (the tick does it
        too; not every database has pg_cron)."""
        if time.monotonic() - self._folded_at >= FOLD_EVERY:
            await self.queue.compact_counts()
            self._folded_at = time.monotonic()

    async def listen(self, stop: asyncio.Event) -> None:
        """Scan first (NOTIFY is not replayed), then sleep until a NOTIFY, a poll, or stop.
        Writers send NOTIFY only while a listener sleeps holding the sleep lock, so that busy
        writers do not serialise their commits on it; the lock's handshake loses no wake-up."""
        channel = await self.queue.channel()
        while not stop.is_set():
            try:
                async with self.queue.sleeping_on(channel) as ln:
                    log.info("listening", extra={"fields": {"channel": channel}})
                    self.reconnect.reset()
                    while not stop.is_set():
                        await self.drain(stop)
                        await self._optional("near-duplicate pass", self._detect_duplicates)
                        await self._optional("folding the status counts", self._fold_counts)
                        state = await ln.sleep(SLEEP_LOCK_WAIT_MS)
                        if state == "work":
                            continue
                        # 'other': another listener holds the lock, and the NOTIFY that wakes
                        # it wakes this one too; look again now and then in case it went away.
                        # 'busy': writers are committing; drain again after a breath.
                        timeout = {
                            "asleep": self.s.poll_interval,
                            "other": min(self.s.poll_interval, 5.0),
                            "busy": 0.05,
                        }[state]
                        woke = await ln.wait(stop, timeout)
                        if state == "asleep":
                            await ln.wake()
                        log.debug("woke", extra={"fields": {"by": woke, "slept": state}})
            except DatabaseError as e:
                if stop.is_set():
                    break
                self.stats.reconnected()
                what = (
                    "lost the database connection; reconnecting"
                    if isinstance(e, DatabaseUnavailable)
                    else "database error; trying again"
                )
                delay = self.reconnect.next_delay()
                log.warning(
                    what, extra={"fields": {"error": first_line(e), "retry_in_s": round(delay, 1)}}
                )
                await sleep_unless(stop, delay)
