"""The backoff and the breaker, on short clocks."""

from __future__ import annotations

import asyncio
import time

from study_embed.backoff import Backoff, Breaker


def test_backoff_doubles_up_to_its_cap_with_jitter_below():
    b = Backoff(base=1.0, cap=8.0, jitter=0.2)
    delays = [b.next_delay() for _ in range(6)]
    for d, full in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert 0.8 * full <= d <= full
    b.reset()
    assert b.next_delay() <= 1.0


def test_backoff_never_overflows():
    b = Backoff(base=1.0, cap=60.0)
    b.failures = 10_000
    assert b.next_delay() <= 60.0


def test_a_server_that_fails_is_probed_and_the_breaker_half_opens_when_it_answers():
    answers = iter([False, False, True])
    probes = []

    async def probe() -> bool:
        probes.append(time.monotonic())
        return next(answers)

    async def run() -> float:
        br = Breaker(Backoff(base=30.0, cap=30.0, jitter=0), probe, probe_every=0.02)
        br.record_failure()
        t0 = time.monotonic()
        await br.wait(asyncio.Event())
        assert not br.is_open and br.failures == 1  # half-open: only a success resets
        return time.monotonic() - t0

    assert asyncio.run(run()) < 5  # not the 30 s backoff
    assert len(probes) == 3


def test_probes_come_one_at_a_time_about_once_a_probe_interval():
    """Whatever the outage looked like (an error answered, a stall), the server is asked again
    within a probe interval, never faster, and the wait ends at the first probe that works."""
    probes: list[float] = []

    async def probe() -> bool:
        probes.append(time.monotonic())
        await asyncio.sleep(0.03)  # a probe that takes a while: the next waits for it
        return len(probes) == 4

    async def run() -> None:
        br = Breaker(Backoff(base=60.0, cap=60.0, jitter=0), probe, probe_every=0.05)
        br.record_failure()
        await asyncio.wait_for(br.wait(asyncio.Event()), 5)
        assert not br.is_open and br.down_for > 0  # half-open: still down until a success

    asyncio.run(run())
    assert len(probes) == 4
    gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
    assert min(gaps) >= 0.05 + 0.03 - 0.005  # the interval after the previous probe ended


def test_success_closes_and_resets():
    async def probe() -> bool:
        return False

    br = Breaker(Backoff(base=1.0, cap=60.0), probe)
    for _ in range(5):
        br.record_failure()
    assert br.failures == 5 and br.is_open
    assert br.down_for > 0
    br.record_success()
    assert br.failures == 0 and not br.is_open and br.down_for == 0


def test_stop_ends_the_wait():
    async def probe() -> bool:
        return False

    async def run() -> None:
        br = Breaker(Backoff(base=60.0, cap=60.0), probe, probe_every=0.01)
        br.record_failure()
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        await asyncio.wait_for(br.wait(stop), 5)

    asyncio.run(run())
