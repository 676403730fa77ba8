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
    passed, and the server is probed meanwhile, whatever the outage looked like (refused, timed
    out, 5xx JSON or a proxy's HTML): at most one probe at a time, one a `probe_every` seconds
    (the client's honest probe: its health route, then the smallest real request).  The breaker
    half-opens as soon as a probe succeeds, so work resumes within about a second of the
    server's return however long the backoff had grown.  Only a batch that succeeds closes it
    and resets the backoff.  (A rate limit is not an outage: the client's pacer waits it out,
    the breaker is not involved.)"""

    def __init__(
        self, backoff: Backoff, probe: Callable[[], Awaitable[bool]], probe_every: float = 1.0
    ) -> None:
        self.backoff = backoff
        self.probe = probe
        self.probe_every = probe_every
        self.open_until = 0.0
        self.down_since: float | None = None  # the first failure since the last success

    @property
    def down_for(self) -> float:
        """Seconds since the server last served a batch, when it has failed since (else 0)."""
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

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
        self.down_since = None

    def record_failure(self) -> float:
        delay = self.backoff.next_delay()
        self.open_until = time.monotonic() + delay
        if self.down_since is None:
            self.down_since = time.monotonic()
        return delay

    async def wait(self, stop: asyncio.Event, down_at_most: float | None = None) -> None:
        """Until the breaker half-opens (backoff over, or a probe answered), or stop, or (with
        `down_at_most`) the server has been down that many seconds."""
        while not stop.is_set():
            if down_at_most is not None and self.down_for >= down_at_most:
                return
            remaining = self.open_until - time.monotonic()
            if remaining <= 0:
                return
            if not await sleep_unless(stop, min(remaining, self.probe_every)):
                return
            if self.is_open and await self.probe():
                log.info("embedding server is reachable again; resuming")
                self.open_until = 0.0
                return
