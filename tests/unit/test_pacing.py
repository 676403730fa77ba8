"""Pacing under a server's rate limits: what the headers say, the budgets, the estimate."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from study_embed.embedders import CLIENTS, ClientConfig, Disposition, EmbeddingError
from study_embed.embedders.pacing import Bucket, Pacer, parse_duration, retry_after


@pytest.mark.parametrize(
    "text,seconds",
    [("12ms", 0.012), ("1s", 1.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("0.5s", 0.5)],
)
def test_openais_reset_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "5", "1s later"])
def test_what_is_not_a_duration(text):
    assert parse_duration(text) is None


def test_retry_after_in_seconds_as_a_date_and_from_the_resets():
    assert retry_after({"retry-after": "7"}) == 7.0
    now = time.time()
    when = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=30), usegmt=True)
    assert retry_after({"retry-after": when}, now=now) == pytest.approx(30, abs=1)
    # no Retry-After: the longest of the resets
    headers = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after(headers) == 360.0
    assert retry_after({}) is None


def test_a_bucket_paces_to_its_budget_after_its_burst():
    b = Bucket(600)  # 10 a second, at 97 %
    assert b.wait_for(1) == 0
    b.take(b.capacity)  # the burst is spent
    assert b.wait_for(1) == pytest.approx(1 / (600 * 0.97 / 60), rel=0.05)
    b.limit(60)  # the server says the budget is smaller
    assert b.per_minute == 60 and b.capacity == pytest.approx(60 * 0.97 / 60 * 10)
    b.limit(6000)  # never raised by a header
    assert b.per_minute == 60


def test_the_pacer_holds_requests_to_the_budget():
    pacer = Pacer(rpm=1200)  # 19.4 a second after a burst of 194

    async def send(n: int) -> float:
        t0 = time.monotonic()
        for _ in range(n):
            await pacer.acquire(["x"])
        return time.monotonic() - t0

    pacer.requests.level = 0  # type: ignore[union-attr]  # no burst: the steady rate
    took = asyncio.run(send(10))
    assert took == pytest.approx(10 / (1200 * 0.97 / 60), rel=0.25)


def test_the_token_estimate_is_high_then_learns_the_servers_count():
    pacer = Pacer(tpm=100_000)
    texts = ["광합성이 일어나는 곳은?"]  # 33 bytes of UTF-8
    assert pacer.estimate(texts) == 17  # one token per 2 bytes at first
    pacer.observe({}, texts, usage=11)  # the server counted one per 3
    assert pacer.estimate(texts) == 12  # its ratio, 5 % over
    pacer.observe({}, texts, usage=5)  # a batch with fewer: lowered slowly
    assert 6 < pacer.estimate(texts) < 12  # (5 tokens would be 6 with the margin)
    pacer.observe({}, texts, usage=20)  # one with more: raised at once
    assert pacer.estimate(texts) == 21


def test_limit_headers_start_a_budget_and_remaining_zero_pauses_until_the_reset():
    pacer = Pacer()
    pacer.observe(
        {"x-ratelimit-limit-requests": "60", "x-ratelimit-limit-tokens": "1000"}, [], None
    )
    assert pacer.requests is not None and pacer.requests.per_minute == 60
    assert pacer.tokens is not None and pacer.tokens.per_minute == 1000
    pacer.observe(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}, [], None
    )
    assert 1.5 < pacer.paused_for <= 2.0


def test_a_429_pauses_every_request_of_the_client_for_the_time_it_names():
    calls = []

    def handler(request):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(429, json={"error": "slow down"}, headers={"retry-after": "1"})
        return httpx.Response(200, json=[[0.1, 0.2]])

    config = ClientConfig(
        api="tei", url="http://x.test", model="m", api_key=None, timeout=5.0, max_inputs=32
    )
    c = CLIENTS["tei"](
        config, http=httpx.AsyncClient(base_url=config.url, transport=httpx.MockTransport(handler))
    )

    async def run() -> None:
        with pytest.raises(EmbeddingError) as e:
            await c._embed_request(["a"])  # the request itself: refused, the client paused
        assert e.value.disposition is Disposition.RATE_LIMITED and e.value.retry_after == 1.0
        assert e.value.server_side  # nothing is wrong with the rows: never split, never failed
        await c.embed(["a"])  # waits until the time named, then goes through

    asyncio.run(run())
    assert calls[1] - calls[0] >= 0.95
    assert c.pacer.rate_limited == 1


def test_a_batch_waits_out_a_short_limit_in_place_and_gives_up_on_a_long_one():
    answers = iter([429, 200, 429])

    def handler(request):
        status = next(answers)
        wait = "0.2" if len(seen) == 0 else "3600"
        seen.append(status)
        if status == 429:
            return httpx.Response(429, json={"error": "slow down"}, headers={"retry-after": wait})
        return httpx.Response(200, json=[[0.1, 0.2]])

    seen: list[int] = []
    config = ClientConfig(
        api="tei", url="http://x.test", model="m", api_key=None, timeout=5.0, max_inputs=1
    )
    c = CLIENTS["tei"](
        config, http=httpx.AsyncClient(base_url=config.url, transport=httpx.MockTransport(handler))
    )

    async def run() -> None:
        assert len(await c.embed(["a"])) == 1  # 429 for 0.2 s, then 200: one result
        with pytest.raises(EmbeddingError) as e:
            await c.embed(["b"])  # an hour: given back
        assert e.value.disposition is Disposition.RATE_LIMITED

    asyncio.run(run())
    assert seen == [429, 200, 429]


def test_a_client_paused_by_a_rate_limit_is_healthy_without_asking():
    """/readyz during a rate limit: the server answered, it is up; the probe does not wait out
    the pause (nor spend the budget)."""
    seen = []

    def handler(request):
        seen.append(request.method)
        return httpx.Response(503)

    config = ClientConfig(
        api="tei", url="http://x.test", model="m", api_key=None, timeout=5.0, max_inputs=1
    )
    c = CLIENTS["tei"](
        config,
        http=httpx.AsyncClient(base_url=config.url, transport=httpx.MockTransport(handler)),
    )
    assert asyncio.run(c.healthy()) is False and seen == ["GET"]
    c.pacer.pause(60)
    assert asyncio.run(c.healthy()) is True and seen == ["GET"]
