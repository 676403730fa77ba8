"""Staying under an embedding server's rate limits instead of bouncing off them.

One `Pacer` per embedding client, shared by every batch of the listener:

- **Budgets.** Requests per minute and tokens per minute (EMBEDDING_RPM, EMBEDDING_TPM; or the
  limits the server states in `x-ratelimit-limit-requests` / `-tokens`, when they are smaller).
  Each is a token bucket refilled continuously at 97 % of the budget, holding at most 10 s of it,
  so a burst never runs ahead of the server's own window.  A request waits for both.
- **Tokens are estimated** before a request, since the server counts them only after it: one
  token per 2 bytes of UTF-8 at first (a Korean syllable is 3 bytes and about one token of
  bge-m3's tokenizer, an English word of 4-5 letters about one token: the estimate is high for
  both), then the ratio of tokens to bytes the server reports (OpenAI's `usage.prompt_tokens`),
  with a 3 % margin, from the first count it reports (then raised at once by a batch that had
  more, lowered slowly).
- **What the server says wins.** A 429's `Retry-After` (seconds or an HTTP date) or its
  `x-ratelimit-reset-requests` / `-tokens` (durations such as `12ms`, `1s`, `6m0s`): no request
  before that time.  `x-ratelimit-remaining-*` at 0 does the same until its reset.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

REFILL_SHARE = 0.97  # of the budget: a margin for clocks and the server's window
BURST_SECONDS = 10.0  # a bucket holds at most this many seconds of its budget
BYTES_PER_TOKEN = 2.0  # the first estimate, deliberately high
TOKEN_MARGIN = 1.03  # over the ratio the server reports
DEFAULT_RETRY_AFTER = 1.0  # a 429 that names no time


def estimate_bytes(texts: list[str]) -> int:
    return len("".join(texts).encode())  # (one encode: a request's texts, twice a request)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str) -> float | None:
    """OpenAI's reset durations: '12ms', '1s', '6m0s', '1h2m3.5s' -> seconds."""
    value = value.strip()
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks a client to wait: Retry-After (seconds or HTTP date), else the
    longest of the rate-limit resets; None when it names no time."""
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            return max(0.0, when - (time.time() if now is None else now))
    resets = [
        d
        for key in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if (raw := headers.get(key)) and (d := parse_duration(raw)) is not None
    ]
    return max(resets) if resets else None


def _int_header(headers: Mapping[str, str], key: str) -> int | None:
    try:
        return int(headers[key])
    except (KeyError, ValueError):
        return None


class Bucket:
    """A token bucket: `per_minute` refilled continuously (REFILL_SHARE of it), at most
    BURST_SECONDS' worth held."""

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.level = self.capacity
        self.at = time.monotonic()

    @property
    def rate(self) -> float:
        return self.per_minute * REFILL_SHARE / 60.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * BURST_SECONDS)

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is there (0: now).  An amount over the capacity waits for a
        full bucket: a request larger than the burst is sent alone, never refused."""
        self._refill()
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount  # may go below 0 for an oversized request: paid back by waiting

    def limit(self, per_minute: float) -> None:
        """The server says the budget is smaller."""
        if per_minute < self.per_minute:
            self._refill()
            self.per_minute = per_minute
            self.level = min(self.level, self.capacity)


class Pacer:
    def __init__(self, rpm: int | None = None, tpm: int | None = None) -> None:
        self.requests = Bucket(rpm) if rpm else None
        self.tokens = Bucket(tpm) if tpm else None
        self.tokens_per_byte = 1.0 / BYTES_PER_TOKEN
        self.calibrated = False  # the server has reported a count
        self.paused_until = 0.0
        self.rate_limited = 0  # 429s seen
        self._lock = asyncio.Lock()

    def estimate(self, texts: list[str]) -> int:
        return max(1, math.ceil(estimate_bytes(texts) * self.tokens_per_byte))

    def pause(self, seconds: float | None) -> float:
        """No request before `seconds` from now (a 429); returns the pause."""
        seconds = DEFAULT_RETRY_AFTER if seconds is None else seconds
        self.rate_limited += 1
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)
        return seconds

    @property
    def paused_for(self) -> float:
        return max(0.0, self.paused_until - time.monotonic())

    async def acquire(self, texts: list[str]) -> None:
        """Wait until a request of `texts` is within every budget and no pause holds; then
        count it.  One waiter at a time, so requests leave in order."""
        tokens = self.estimate(texts)
        async with self._lock:
            while True:
                wait = self.paused_for
                if self.requests:
                    wait = max(wait, self.requests.wait_for(1))
                if self.tokens:
                    wait = max(wait, self.tokens.wait_for(tokens))
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.requests:
                self.requests.take(1)
            if self.tokens:
                self.tokens.take(tokens)

    def observe(self, headers: Mapping[str, str], texts: list[str], usage: int | None) -> None:
        """Learn from an answer: the limits the server states, its count of the tokens."""
        if (limit := _int_header(headers, "x-ratelimit-limit-requests")) and limit > 0:
            if self.requests is None:
                self.requests = Bucket(limit)
            self.requests.limit(limit)
        if (limit := _int_header(headers, "x-ratelimit-limit-tokens")) and limit > 0:
            if self.tokens is None:
                self.tokens = Bucket(limit)
            self.tokens.limit(limit)
        for kind in ("requests", "tokens"):
            if _int_header(headers, f"x-ratelimit-remaining-{kind}") == 0:
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
                if reset:
                    self.paused_until = max(self.paused_until, time.monotonic() + reset)
        if usage and usage > 0 and (n := estimate_bytes(texts)) > 0:
            # up at once, down slowly: a batch of more English (fewer tokens per byte) must not
            # make the next, more Korean one run over
            seen = usage / n * TOKEN_MARGIN
            if not self.calibrated:
                self.tokens_per_byte, self.calibrated = seen, True
            else:
                self.tokens_per_byte = max(seen, 0.8 * self.tokens_per_byte + 0.2 * seen)


__all__ = ["Pacer", "Bucket", "parse_duration", "retry_after", "estimate_bytes"]
