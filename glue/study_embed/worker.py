"""The worker: claim a batch, embed it, write the outcome back, and keep the embedding server
busy.  It only orchestrates: the queue client talks to the database, the embedding client to
the server and says what its answers mean (a `Disposition`), and this module maps those to
queue calls:

    vector                      -> complete (stored only if the claim is still current)
    row failure / rejected row  -> fail (retryable or for good)
    SPLIT / RETRY_LATER         -> halve the batch and try the halves
    UNREACHABLE / BACK_OFF      -> release the batch (no attempt spent), open the breaker

Model changes: a `Lane` is one generation's queue (study_embed.generations) with the embedder
whose model it holds: the served slot's always, the shadow slot's when a change is in progress
and NEXT_EMBEDDING_* (or EMBEDDING_*, after a switch) names its model.  The served lane is
claimed first, so fresh edits never wait behind a re-embed of the whole bank; each embedder has
its own breaker.  The lanes are read again before every drain, and at once when the database
refuses a batch's model (a switch happened while it was embedded: its rows are given back).

A claimed batch is held in `_held` from the moment it is claimed until its outcome is written,
so that a shutdown can give back whatever it did not finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import count

import numpy as np

from .backoff import Backoff, Breaker, sleep_unless
from .database import DatabaseError, DatabaseUnavailable, NotMigrated, NotPermitted, first_line
from .embedders import Disposition, EmbeddingClient, EmbeddingError, RowFailure
from .metrics import Stats
from .queue import Claim, Failure, Generation, Queue
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


@dataclass(frozen=True)
class Lane:
    """One generation's queue and the embedder that fills it."""

    slot: str  # served or shadow
    client: EmbeddingClient
    breaker: Breaker
    dim: int

    @property
    def model(self) -> str:
        return self.client.config.model


class Worker:
    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        client: EmbeddingClient,
        next_client: EmbeddingClient | None = None,
    ) -> None:
        self.s = settings
        self.queue = queue
        self.client = client  # EMBEDDING_*: the served model's, unless a switch made it the other
        self.clients = [client] + ([next_client] if next_client is not None else [])
        self.breakers = {
            id(c): Breaker(Backoff(base=1.0, cap=60.0), probe=c.healthy) for c in self.clients
        }
        self.reconnect = Backoff(base=1.0, cap=30.0)  # the LISTEN connection's
        self.stats = Stats()
        self.stats.watch(lambda: len(self._held), lambda: self.breaker.is_open)
        self.dim = 0
        self.dims: dict[int, int] = {}  # per embedder: the dimension its server answered with
        self.lanes: list[Lane] = []
        self.gave_up = False
        self._held: dict[int, tuple[Lane, list[Claim]]] = {}
        self._settled = asyncio.Event()  # set whenever a batch's outcome is written
        self._folded_at = float("-inf")
        self._seq = count()
        self._lanes_stale = False
        self._said: set[str] = set()  # lane notices already logged

    @property
    def serving(self) -> EmbeddingClient:
        """The served generation's embedder as of the last reading of the lanes: EMBEDDING_*'s,
        or NEXT_EMBEDDING_*'s once a switch made its model the served one (readiness asks it)."""
        lane = next((x for x in self.lanes if x.slot == "served"), None)
        return lane.client if lane is not None else self.client

    @property
    def breaker(self) -> Breaker:
        """The served generation's embedder's breaker (readiness, the metrics, a drain's
        give-up)."""
        return self.breakers[id(self.serving)]

    @breaker.setter
    def breaker(self, breaker: Breaker) -> None:
        self.breakers[id(self.serving)] = breaker

    @property
    def in_flight_rows(self) -> int:
        return sum(len(c) for _, c in self._held.values())

    def _client_for(self, model: str) -> EmbeddingClient | None:
        return next((c for c in self.clients if c.config.model == model), None)

    def _say_once(self, level: int, message: str, **fields) -> None:
        if message not in self._said:
            self._said.add(message)
            log.log(level, message, extra={"fields": fields} if fields else None)

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
        """The served model and its dimension from the database; an embedder for that model,
        whose server answers with that dimension.  (The shadow lane, during a model change, is
        looked for before every drain: its server's trouble does not stop the served lane.)"""
        try:
            generations = await self.queue.generations()
        except NotMigrated as e:
            raise StartupError(str(e), config=True) from None
        except NotPermitted:
            raise StartupError(
                "this database role may not run the queue: GRANT study_embed_listener TO it",
                config=True,
            ) from None
        served = next((g for g in generations if g.slot == "served"), None)
        if served is None:
            raise StartupError(str(NotMigrated("no served generation recorded")), config=True)
        client = self._client_for(served.model)
        if client is None:
            configured = " and ".join(repr(c.config.model) for c in self.clients)
            raise StartupError(
                f"the database serves model {served.model!r}, but this listener embeds with "
                f"{configured}: set EMBEDDING_MODEL={served.model} (and its server's "
                "EMBEDDING_URL). To change the served model, begin a change with `study-embed "
                "model begin MODEL --dimension N` and give the listener NEXT_EMBEDDING_URL and "
                "NEXT_EMBEDDING_MODEL.",
                config=True,
            )
        dim = served.dimension
        self.dim = dim
        backoff = Backoff(base=1.0, cap=30.0)
        cfg = client.config
        while True:
            try:
                [probe] = await client.embed([PROBE_TEXT])
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
        self.dims[id(client)] = dim
        log.info(
            "embedding server ok",
            extra={"fields": {"api": cfg.api, "url": cfg.url, "model": cfg.model, "dim": dim}},
        )
        await self.resolve_lanes(generations)

    async def _probe(self, client: EmbeddingClient) -> int | None:
        """The dimension `client`'s server answers with, or None (logged) when it does not."""
        if id(client) in self.dims:
            return self.dims[id(client)]
        cfg = client.config
        try:
            [probe] = await client.embed([PROBE_TEXT])
        except EmbeddingError as e:
            log.warning(
                "the embedding server of the other generation does not answer; trying again "
                "before the next drain",
                extra={"fields": {"url": cfg.url, "model": cfg.model, "error": str(e)}},
            )
            return None
        if isinstance(probe, RowFailure):
            log.warning(
                "the embedding server of the other generation answers badly",
                extra={"fields": {"url": cfg.url, "model": cfg.model, "error": probe.message}},
            )
            return None
        self.dims[id(client)] = probe.shape[0]
        log.info(
            "embedding server ok",
            extra={
                "fields": {
                    "api": cfg.api,
                    "url": cfg.url,
                    "model": cfg.model,
                    "dim": probe.shape[0],
                }
            },
        )
        return probe.shape[0]

    async def resolve_lanes(self, generations: list[Generation] | None = None) -> None:
        """The lanes this listener can fill now: each generation whose model one of its
        embedders has, served first."""
        if generations is None:
            generations = await self.queue.generations()
        self._lanes_stale = False
        lanes: list[Lane] = []
        for g in generations:
            client = self._client_for(g.model)
            if client is None:
                if g.slot == "served":
                    self._say_once(
                        logging.ERROR,
                        f"the database now serves model {g.model!r}, which this listener has "
                        "no embedder for (EMBEDDING_MODEL, NEXT_EMBEDDING_MODEL): its queue "
                        "waits for a listener that has",
                    )
                else:
                    self._say_once(
                        logging.INFO,
                        f"a model change to {g.model!r} is in progress; this listener has no "
                        "embedder for it (NEXT_EMBEDDING_URL, NEXT_EMBEDDING_MODEL) and leaves "
                        "it to others",
                    )
                continue
            dim = await self._probe(client)
            if dim is None:
                continue
            if dim != g.dimension:
                self._say_once(
                    logging.ERROR,
                    f"dimension mismatch: the {g.slot} generation ({g.model!r}) is "
                    f"{g.dimension}-dimensional but its embedding server at "
                    f"{client.config.url} returns {dim}-dimensional vectors; its queue waits",
                )
                continue
            lanes.append(Lane(g.slot, client, self.breakers[id(client)], dim))
            if g.slot == "shadow":
                self._say_once(
                    logging.INFO,
                    f"building the next generation: {g.model!r} ({g.dimension} dimensions), "
                    "after the served generation's queue",
                )
        self.lanes = lanes

    # -- one batch -------------------------------------------------------------------------------

    async def embed_rows(
        self, claims: list[Claim], lane: Lane | None = None
    ) -> tuple[list[tuple[Claim, np.ndarray]], list[Failure]]:
        """Vectors and row failures; a rejected request is halved until the rejected rows are
        alone.  A server-side EmbeddingError escapes: the whole batch goes back."""
        client, dim = (lane.client, lane.dim) if lane else (self.client, self.dim)
        texts = [c.body for c in claims]
        self.stats.sent(texts)
        try:
            results = await client.embed(texts, dim)
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
            done_a, failed_a = await self.embed_rows(claims[:mid], lane)
            done_b, failed_b = await self.embed_rows(claims[mid:], lane)
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

    async def process(self, key: int, claims: list[Claim], lane: Lane | None = None) -> None:
        lane = lane or (
            self.lanes[0] if self.lanes else Lane("served", self.client, self.breaker, self.dim)
        )
        slot = lane.slot
        t0 = time.monotonic()
        try:
            done, failed = await self.embed_rows(claims, lane)
        except EmbeddingError as e:
            if e.disposition is Disposition.RATE_LIMITED:
                # not an outage: the client's pacer holds every request until the time the
                # server named; the rows go back, due at once, and no attempt is spent
                log.info(
                    "rate limited by the embedding server; batch given back",
                    extra={"fields": {"rows": len(claims), "wait_s": e.retry_after}},
                )
                await self.queue.release(claims, 0, f"rate limited: {e}", slot=slot)
                self.stats.released_rows(len(claims), "rate_limited")
                self._held.pop(key, None)
                return
            delay = lane.breaker.record_failure()
            log.warning(
                "embedding server unavailable; batch given back",
                extra={
                    "fields": {"rows": len(claims), "error": str(e), "retry_in_s": round(delay, 1)}
                },
            )
            # due at once: the breaker, not the row, decides when the server is asked again
            await self.queue.release(claims, 0, f"embedding server unavailable: {e}", slot=slot)
            self.stats.released_rows(len(claims), "server_unavailable")
            self._held.pop(key, None)
            return
        lane.breaker.record_success()
        t1 = time.monotonic()
        embed_ms = (t1 - t0) * 1000
        try:
            written = await self.queue.complete(done, lane.model, slot=slot)
        except DatabaseError as e:
            if isinstance(e, DatabaseUnavailable) or not await self._switched(lane):
                raise
            # the generations switched while the batch was embedded: its claim is now in the
            # other slot, or it was made for a model that slot no longer holds; give it back
            # wherever it is (a claim token is unique: only the slot that holds it acts)
            log.info(
                "the served generation switched while a batch was embedded; batch given back",
                extra={"fields": {"rows": len(claims), "model": lane.model}},
            )
            for where in ("served", "shadow"):
                with contextlib.suppress(DatabaseError):
                    await self.queue.release(claims, 0, "the generations switched", slot=where)
            self.stats.released_rows(len(claims), "generation_switched")
            self._held.pop(key, None)
            return
        await self.queue.fail(failed, slot=slot)
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

    async def _switched(self, lane: Lane) -> bool:
        """Does the lane's slot hold another model than the lane's embedder now?  (Then the
        lanes are read again before the next claim.)"""
        now = {g.slot: g.model for g in await self.queue.generations()}
        if now.get(lane.slot) == lane.model:
            return False
        self._lanes_stale = True
        return True

    # -- the loops -------------------------------------------------------------------------------

    async def drain(self, stop: asyncio.Event, give_up: bool = False) -> None:
        """Claim and process until nothing is claimable (or stop; or, with `give_up`, once the
        server has served no batch for DRAIN_GIVE_UP_AFTER seconds).  One batch is claimed
        ahead while `concurrency` batches are in flight, so the server never waits for the
        database."""
        queue: asyncio.Queue[tuple[int, Lane, list[Claim]] | None] = asyncio.Queue(maxsize=1)
        await self.resolve_lanes()

        async def producer() -> None:
            while not stop.is_set():
                if self._lanes_stale:
                    await self.resolve_lanes()
                # the lanes whose server is up, served first; when every one is down, wait
                # for the first (its breaker probes the server)
                lanes = [x for x in self.lanes if not x.breaker.is_open] or self.lanes[:1]
                if not lanes:
                    break
                if len(lanes) == 1:
                    bound = self.s.drain_give_up_after if give_up else None
                    await lanes[0].breaker.wait(stop, bound)
                    if stop.is_set():
                        break
                    if give_up and lanes[0].breaker.down_for >= self.s.drain_give_up_after:
                        self.gave_up = True
                        break
                self._settled.clear()
                claims: list[Claim] = []
                for lane in lanes:
                    claims = await self.queue.claim(
                        self.s.batch_size, self.s.lease_seconds, slot=lane.slot
                    )
                    if claims:
                        break
                if not claims:
                    if self._held:  # a batch in flight may yet be given back: look
                        with contextlib.suppress(TimeoutError):  # again when it settles
                            await asyncio.wait_for(self._settled.wait(), 1.0)
                        continue
                    break
                key = next(self._seq)
                self._held[key] = (lane, claims)
                await queue.put((key, lane, claims))
            # only on the way out of the loop: a cancelled or failed producer is followed by
            # the consumers' cancellation below, and a sentinel put into a full queue that
            # nobody reads any more would never return
            for _ in range(self.s.concurrency):
                await queue.put(None)

        async def consumer() -> None:
            while (item := await queue.get()) is not None:
                key, lane, claims = item
                try:
                    await self.process(key, claims, lane)
                    self._settled.set()
                except Exception as e:
                    if isinstance(e, DatabaseUnavailable):
                        raise  # the rows stay held: given back below, or by the lease
                    # a bug, or a database error writing the outcome: fail the batch, go on
                    log.exception("batch failed inside the listener")
                    error = f"listener error: {type(e).__name__}: {first_line(e)}"
                    failures = [Failure(c, error, True, "listener_error") for c in claims]
                    await self.queue.fail(failures, slot=lane.slot)
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
        by_slot: dict[str, list[Claim]] = {}
        for lane, claims in self._held.values():
            by_slot.setdefault(lane.slot, []).extend(claims)
        self._held.clear()
        held = [c for claims in by_slot.values() for c in claims]
        if not held:
            return
        log.info("giving back unfinished rows", extra={"fields": {"rows": len(held)}})
        try:

            async def release_all() -> None:
                for slot, claims in by_slot.items():
                    await self.queue.release(claims, 0, reason, retry=False, slot=slot)

            await asyncio.wait_for(release_all(), GIVE_BACK_TIMEOUT)
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
