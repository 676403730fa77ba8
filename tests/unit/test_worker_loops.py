"""The worker's loops on the in-memory queue (study_embed_dev.memory_queue): drain, give-back,
shutdown, the breaker's effect on a drain, the listen loop's wake-up and reconnect.  No database
and no server, so each runs in milliseconds; tests/cli runs the same loops through the real
command against PostgreSQL."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from study_embed import listener
from study_embed.backoff import Backoff, Breaker
from study_embed.database import DatabaseUnavailable
from study_embed.embedders import ClientConfig, Disposition, EmbeddingError
from study_embed.settings import Settings
from study_embed.worker import PROBE_TEXT, Worker
from study_embed_dev.memory_queue import InMemoryQueue

DIM = 4


class Embedder:
    """A loopback embedding server in memory: `down` refuses every request, `hold` keeps
    requests waiting until it is set, a text containing REJECT is refused for good.  The
    start-up probe is always answered."""

    def __init__(self) -> None:
        self.config = ClientConfig.of(Settings())
        self.down = False
        self.rate_limited = 0  # the next this many requests are refused with a 429
        self.hold: asyncio.Event | None = None
        self.requests = 0
        self.arrived = asyncio.Event()

    async def healthy(self) -> bool:
        return not self.down

    async def aclose(self) -> None:
        pass

    async def embed(self, texts, dim=None):
        if texts == [PROBE_TEXT]:  # the listener's start-up check
            return [np.full(DIM, 0.5, dtype=np.float32)]
        self.requests += 1
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            raise EmbeddingError("connection refused", Disposition.UNREACHABLE)
        if self.rate_limited:
            self.rate_limited -= 1
            raise EmbeddingError("HTTP 429: slow down", Disposition.RATE_LIMITED, 0.01)
        if any("REJECT" in t for t in texts):
            raise EmbeddingError("422 input too long", Disposition.SPLIT)
        return [np.full(DIM, 0.5, dtype=np.float32) for _ in texts]


def make(batch_size=10, concurrency=2, **settings):
    s = Settings(batch_size=batch_size, concurrency=concurrency, **settings)
    client = Embedder()
    queue = InMemoryQueue(dim=DIM, model=client.config.model)
    worker = Worker(s, queue, client)  # type: ignore[arg-type]
    worker.breaker = Breaker(
        Backoff(base=0.001, cap=0.005), probe=client.healthy, probe_every=0.001
    )
    worker.reconnect = Backoff(base=0.001, cap=0.005)
    worker.dim = DIM
    return s, queue, client, worker


def test_drain_embeds_every_row_and_stops_when_nothing_is_claimable():
    _, queue, client, worker = make()
    queue.insert(*[f"q{i}" for i in range(25)])
    asyncio.run(worker.drain(asyncio.Event()))
    assert queue.statuses() == {"ready": 25}
    assert worker.stats.embedded == 25 and client.requests == 3
    assert worker.in_flight_rows == 0


def test_a_rejected_row_fails_alone_and_the_drain_goes_on():
    _, queue, _, worker = make()
    queue.insert("ok 1", "REJECT me", "ok 2")
    asyncio.run(worker.drain(asyncio.Event()))
    assert queue.statuses() == {"ready": 2, "failed": 1}
    assert "rejected by the embedding server" in (queue.rows[2].last_error or "")


def test_an_unreachable_server_gives_the_batch_back_without_spending_an_attempt():
    _, queue, client, worker = make(drain_give_up_after=0.05)
    queue.insert("a", "b")
    client.down = True
    asyncio.run(worker.drain(asyncio.Event(), give_up=True))
    assert worker.gave_up and worker.breaker.down_for >= 0.05
    assert queue.statuses() == {"none": 2}
    assert all(r.attempts == 0 for r in queue.rows.values())
    assert "release" in queue.calls and "fail" not in queue.calls


def test_a_rate_limit_gives_the_batch_back_and_is_no_outage():
    """A batch the rate limit held too long goes back without an attempt spent; the breaker
    stays closed (nothing is probed, `drain` does not count it towards giving up), and the
    rows are embedded in the same drain."""
    _, queue, client, worker = make(drain_give_up_after=0.05)
    queue.insert("a", "b", "c")
    client.rate_limited = 3
    asyncio.run(worker.drain(asyncio.Event(), give_up=True))
    assert not worker.gave_up and worker.breaker.down_for == 0
    assert queue.statuses() == {"ready": 3}
    assert all(r.attempts == 0 for r in queue.rows.values())
    assert worker.stats.released == 9  # three times a batch of three


def test_the_breaker_resumes_the_drain_as_soon_as_the_server_answers():
    _, queue, client, worker = make()
    queue.insert("a", "b", "c")
    client.down = True

    async def run():
        stop = asyncio.Event()
        task = asyncio.create_task(worker.drain(stop))
        while worker.breaker.failures < 2:
            await asyncio.sleep(0.001)
        client.down = False  # the server is back: the probe half-opens the breaker
        await asyncio.wait_for(task, 5)

    asyncio.run(run())
    assert queue.statuses() == {"ready": 3}
    assert worker.breaker.failures == 0 and not worker.breaker.is_open


def test_after_a_switch_readiness_and_the_breaker_follow_the_served_generations_server():
    """NEXT_EMBEDDING_*'s model became the served one: /readyz asks its server (worker.serving)
    and the drain's breaker is its, so EMBEDDING_*'s server (now the previous generation's)
    being down leaves the listener ready and the served queue draining."""
    s = Settings(batch_size=10, concurrency=1)
    old, new = Embedder(), Embedder()
    new.config = ClientConfig.of(Settings(embedding_model="next-model"))
    queue = InMemoryQueue(dim=DIM, model=old.config.model)
    worker = Worker(s, queue, old, new)  # type: ignore[arg-type]
    queue.insert("a", "b")
    queue.begin("next-model", DIM)
    queue.switch()
    old.down = True

    async def run():
        await worker.resolve_lanes()
        assert worker.serving is new and worker.breaker is worker.breakers[id(new)]
        assert await worker.serving.healthy()
        await worker.drain(asyncio.Event(), give_up=True)

    asyncio.run(run())
    assert queue.statuses() == {"ready": 2} and not worker.gave_up
    assert new.requests == 1 and not worker.breaker.is_open
    # the previous generation's lane met its server down: its breaker, not the served one's
    assert old.requests >= 1 and worker.breakers[id(old)].failures >= 1


def test_a_stop_mid_batch_gives_the_held_rows_back():
    _, queue, client, worker = make(batch_size=5)
    queue.insert(*[f"q{i}" for i in range(5)])
    client.hold = asyncio.Event()

    async def run():
        stop = asyncio.Event()
        task = asyncio.create_task(worker.drain(stop))
        await client.arrived.wait()
        assert queue.statuses() == {"pending": 5} and worker.in_flight_rows == 5
        stop.set()
        task.cancel()  # what the listener process does once its shutdown timeout has passed
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert queue.statuses() == {"none": 5}
    assert worker.in_flight_rows == 0 and worker.stats.released == 5


def test_give_back_does_not_wait_for_a_database_that_is_down():
    _, queue, client, worker = make(batch_size=3)
    queue.insert("a", "b", "c")
    client.hold = asyncio.Event()

    async def run():
        task = asyncio.create_task(worker.drain(asyncio.Event()))
        await client.arrived.wait()
        queue.unavailable = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    # the release was tried once, without retry, and failed: the lease brings the rows back
    assert queue.calls.count("release") == 1
    assert queue.statuses() == {"pending": 3} and worker.in_flight_rows == 0


def test_a_database_outage_while_writing_the_outcome_stops_the_drain_typed():
    _, queue, client, worker = make(batch_size=2)
    queue.insert("a", "b")
    client.hold = asyncio.Event()

    async def run():
        task = asyncio.create_task(worker.drain(asyncio.Event()))
        await client.arrived.wait()
        queue.unavailable = True
        client.hold.set()
        await task

    with pytest.raises(DatabaseUnavailable):
        asyncio.run(run())
    assert queue.statuses() == {"pending": 2}  # held until the lease expires


def test_the_listener_process_stops_within_its_shutdown_timeout_and_gives_back():
    s, queue, client, worker = make(batch_size=4, shutdown_timeout=0.05)
    queue.insert("a", "b", "c", "d")
    client.hold = asyncio.Event()  # the server never answers
    out = io.StringIO()

    async def run():
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(s, "drain", worker=worker, stop=stop, stream=out))
        await client.arrived.wait()
        stop.set()
        return await asyncio.wait_for(task, 5)

    code = asyncio.run(run())
    assert code == 1 and "interrupted" in out.getvalue()
    assert queue.statuses() == {"none": 4} and "close" in queue.calls


def test_the_listener_process_drains_and_summarises():
    s, queue, _, worker = make()
    queue.insert(*[f"q{i}" for i in range(12)], "REJECT")
    out = io.StringIO()
    code = asyncio.run(listener.run(s, "drain", worker=worker, stop=asyncio.Event(), stream=out))
    assert code == 1  # a row is left failed
    assert "drain: embedded 12 rows" in out.getvalue()
    assert "1 row(s) are left failed" in out.getvalue()


def test_listen_wakes_on_a_notify_and_reconnects_after_an_outage():
    _, queue, _, worker = make()
    worker.s = Settings(batch_size=10, concurrency=2, poll_interval=3600)

    async def run():
        stop = asyncio.Event()
        task = asyncio.create_task(worker.listen(stop))
        queue.insert("first")
        while queue.statuses() != {"ready": 1}:
            await asyncio.sleep(0.001)
        queue.unavailable = True  # the LISTEN connection breaks while it sleeps
        queue.notified.set()
        while queue.calls.count("listen") < 2:  # reconnected
            await asyncio.sleep(0.001)
        queue.unavailable = False
        queue.insert("second")  # a NOTIFY after the reconnect
        while queue.statuses() != {"ready": 2}:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(run())
