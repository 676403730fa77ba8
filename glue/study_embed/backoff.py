"""Waiting after failures: one exponential backoff, and the breaker built on it that holds the
listener back while the embedding server cannot serve."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("study_embed.backoff")


class Backoff:
    """base * 2**failures seconds, at most cap, with up to `jitter` of it taken off at random
    (so that listeners that failed together do not come back together)."""

    def __init__(self, base: float, cap: float, jitter: float = 0.2) -> None:
        self.base, self.cap, self.jitter = base, cap, jitter
        self.failures = 0

    def next_delay(self) -> float:
        """The wait after one more failure."""
        delay = min(self.cap, self.base * 2 ** min(self.failures, 62))
        self.failures += 1
        return delay * random.uniform(1 - self.jitter, 1.0)

    def reset(self) -> None:
        self.failures = 0

    async def sleep(self, stop: asyncio.Event | None = None) -> bool:
        """Wait the next delay; False when `stop` was set meanwhile."""
        return await sleep_unless(stop, self.next_delay())


async def sleep_unless(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep, or return early (False) when `stop` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return True
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return True
    return False


class Breaker:
    """Closed: work goes to the embedding server.  Open: nothing does until the backoff has
    passed.  When the server could not be reached at all, its health is probed meanwhile (a
    request with no rows in it) and the breaker half-opens as soon as it answers: work resumes
    within a probe interval of the server's return however long the backoff had grown.  When
    the server did answer (overloaded, erroring, unusable replies), it is left alone for the
    whole backoff.  Only a batch that succeeds closes the breaker and resets the backoff."""

    def __init__(
        self, backoff: Backoff, probe: Callable[[], Awaitable[bool]], probe_every: float = 1.0
    ) -> None:
        self.backoff = backoff
        self.probe = probe
        self.probe_every = probe_every
        self.open_until = 0.0
        self.unreachable = False

    @property
    def is_open(self) -> bool:
        return time.monotonic() < self.open_until

    @property
    def failures(self) -> int:
        """Failures in a row since the last success."""
        return self.backoff.failures

    def record_success(self) -> None:
        if self.backoff.failures:
            log.info("embedding server is answering again")
        self.backoff.reset()
        self.open_until = 0.0
        self.unreachable = False

    def record_failure(self, unreachable: bool) -> float:
        delay = self.backoff.next_delay()
        self.open_until = time.monotonic() + delay
        self.unreachable = unreachable
        return delay

    async def wait(self, stop: asyncio.Event) -> None:
        """Until the breaker half-opens (backoff over, or a probe answered) or stop."""
        while not stop.is_set():
            remaining = self.open_until - time.monotonic()
            if remaining <= 0:
                return
            step = min(remaining, self.probe_every) if self.unreachable else remaining
            if not await sleep_unless(stop, step):
                return
            if self.unreachable and self.is_open and await self.probe():
                log.info("embedding server is reachable again; resuming")
                self.open_until = 0.0
                return
