"""What the listener counts, and the HTTP endpoint that shows it (METRICS_PORT).

`Stats` is the one place a worker records what happened: the totals the CLI prints, and the
Prometheus metrics (prometheus_client, in a registry of its own).  `MetricsServer` serves, from a
thread of its own:

- /metrics  the counters and histograms, plus the queue as the database sees it (rows waiting
            per status, the age of the oldest waiting row, the generations and how far each
            covers the live rows), read at scrape time at most every DB_EVERY seconds through
            the listener's own connection pool;
- /healthz  200 while the listener's event loop is alive (it beats every second);
- /readyz   200 only while the database answers, the embedding server embeds (the client's
            honest probe) and the breaker is closed; checked when asked, at most every
            READY_EVERY seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("study_embed.metrics")
DB_EVERY = 5.0  # seconds between two reads of the queue's state for /metrics
READY_EVERY = 3.0  # seconds a readiness answer is reused
BEAT_EVERY = 1.0  # the event loop's heartbeat
ALIVE_WITHIN = 10.0  # /healthz fails when the loop has not beaten for this long
CALL_TIMEOUT = 5.0  # seconds the HTTP thread waits for the event loop's answer
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60)
T = TypeVar("T")


@dataclass
class Stats:
    """Totals of one process.  Every change goes through a method, which also moves the
    matching Prometheus metric."""

    embedded: int = 0
    failed: Tally[str] = field(default_factory=Tally)  # reason -> rows
    released: int = 0
    superseded: int = 0  # claim voided by an edit meanwhile
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.m_embedded = Counter(
            "study_embed_rows_embedded", "Rows whose vector was written", registry=r
        )
        self.m_failed = Counter(
            "study_embed_rows_failed",
            "Rows marked failed, by error class",
            ["error_class"],
            registry=r,
        )
        self.m_released = Counter(
            "study_embed_rows_released",
            "Rows given back without an attempt counted, by reason",
            ["reason"],
            registry=r,
        )
        self.m_superseded = Counter(
            "study_embed_rows_superseded",
            "Rows embedded but not written: the text was edited meanwhile",
            registry=r,
        )
        self.m_batches = Counter("study_embed_batches", "Batches processed", registry=r)
        self.m_embed_seconds = Histogram(
            "study_embed_embedding_request_seconds",
            "Time to embed one batch (all its HTTP requests)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.m_write_seconds = Histogram(
            "study_embed_database_write_seconds",
            "Time to write one batch's outcome",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.m_texts = Counter(
            "study_embed_texts_sent", "Texts sent to the embedding server", registry=r
        )
        self.m_chars = Counter(
            "study_embed_characters_sent",
            "Characters of the texts sent to the embedding server",
            registry=r,
        )
        self.m_reconnects = Counter(
            "study_embed_reconnects", "Reconnections of the LISTEN connection", registry=r
        )
        self.m_in_flight = Gauge("study_embed_batches_in_flight", "Batches claimed", registry=r)
        self.m_breaker = Gauge(
            "study_embed_breaker_open",
            "1 while the listener holds work back from the embedding server",
            registry=r,
        )

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def sent(self, texts: list[str]) -> None:
        self.m_texts.inc(len(texts))
        self.m_chars.inc(sum(map(len, texts)))

    def batch(self, embedded: int, superseded: int, embed_s: float, write_s: float) -> None:
        self.batches += 1
        self.embedded += embedded
        self.superseded += superseded
        self.m_batches.inc()
        self.m_embedded.inc(embedded)
        self.m_superseded.inc(superseded)
        self.m_embed_seconds.observe(embed_s)
        self.m_write_seconds.observe(write_s)

    def row_failed(self, error_class: str, reason: str) -> None:
        self.failed[reason[:160]] += 1
        self.m_failed.labels(error_class).inc()

    def released_rows(self, n: int, reason: str) -> None:
        self.released += n
        self.m_released.labels(reason).inc(n)

    def reconnected(self) -> None:
        self.m_reconnects.inc()

    def watch(self, in_flight: Callable[[], float], breaker_open: Callable[[], bool]) -> None:
        self.m_in_flight.set_function(in_flight)
        self.m_breaker.set_function(lambda: 1.0 if breaker_open() else 0.0)


class QueueCollector(Collector):
    """Rows waiting per status and the oldest waiting row's age, and the generations (the
    served model's and, during a model change, the other one's, with how many live rows each
    covers), from the database, at most every DB_EVERY seconds; nothing (and
    study_embed_database_up 0) when it does not answer."""

    def __init__(self, read: Callable[[], tuple[list[Any], list[Any]]]) -> None:
        self.read = read
        self.rows: list[Any] = []
        self.generations: list[Any] = []
        self.up = 0.0
        self.at = float("-inf")
        self.lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.lock:
            if time.monotonic() - self.at >= DB_EVERY:
                try:
                    (self.rows, self.generations), self.up = self.read(), 1.0
                except Exception as e:
                    log.warning("metrics: the queue's state could not be read: %s", e)
                    self.rows, self.generations, self.up = [], [], 0.0
                self.at = time.monotonic()
            rows, generations, up = self.rows, self.generations, self.up
        yield GaugeMetricFamily(
            "study_embed_database_up", "1 when the last read of the queue's state worked", up
        )
        if not rows:
            return
        live = GaugeMetricFamily(
            "study_embed_rows", "Live rows per embedding status", labels=["status"]
        )
        oldest = GaugeMetricFamily(
            "study_embed_oldest_waiting_seconds",
            "Age of the oldest live row waiting for an embedding (0: none waiting)",
        )
        ages = [r.oldest_waiting.total_seconds() for r in rows if r.oldest_waiting is not None]
        for r in rows:
            live.add_metric([r.status], r.live)
        oldest.add_metric([], max(ages, default=0.0))
        yield live
        yield oldest
        info = GaugeMetricFamily(
            "study_embed_generation_info",
            "The embedding generations: served, and next or previous during a model change",
            labels=["role", "model", "dimension"],
        )
        ready = GaugeMetricFamily(
            "study_embed_generation_ready_rows",
            "Live rows embedded from their current text by the generation's model",
            labels=["role"],
        )
        missing = GaugeMetricFamily(
            "study_embed_generation_missing_rows",
            "Live rows the generation does not cover yet (a switch waits for 0)",
            labels=["role"],
        )
        for g in generations:
            info.add_metric([g.role, g.model, str(g.dimension)], 1)
            ready.add_metric([g.role], g.ready)
            missing.add_metric([g.role], g.live - g.ready)
        yield info
        yield ready
        yield missing


@dataclass
class Readiness:
    ready: bool
    checks: dict[str, bool]
    at: float


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow readiness check never blocks a scrape."""

    daemon_threads = True


class MetricsServer:
    """The endpoint.  `checks` are coroutines run on the listener's event loop: database,
    embedding server; `breaker_open` is read directly."""

    def __init__(
        self,
        stats: Stats,
        loop: asyncio.AbstractEventLoop,
        *,
        status: Callable[[], Coroutine[Any, Any, tuple[list[Any], list[Any]]]],
        checks: dict[str, Callable[[], Coroutine[Any, Any, bool]]],
        breaker_open: Callable[[], bool],
        host: str,
        port: int,
    ) -> None:
        self.stats, self.loop = stats, loop
        self.checks, self.breaker_open = checks, breaker_open
        self.beat = time.monotonic()
        self.beat_task: asyncio.Task[None] | None = None
        self._ready: Readiness | None = None
        self._ready_lock = threading.Lock()
        stats.registry.register(QueueCollector(lambda: self._on_loop(status())))
        self._metrics_app = make_wsgi_app(stats.registry)
        self.httpd = make_server(
            host, port, self._app, server_class=_ThreadingWSGIServer, handler_class=_Quiet
        )
        self.port = self.httpd.server_port
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="study-embed metrics", daemon=True
        )

    def start(self) -> None:
        """Serve, and beat on the event loop (call it from the loop's thread)."""
        self._thread.start()
        self.beat_task = self.loop.create_task(self.heartbeat())

    def stop(self) -> None:
        if self.beat_task:
            self.beat_task.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    async def heartbeat(self) -> None:
        """Run on the event loop for as long as the listener runs."""
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(BEAT_EVERY)

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the listener's loop and wait for it (cancelled if it is late)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(CALL_TIMEOUT)
        except FutureTimeout:
            future.cancel()
            raise

    def readiness(self) -> Readiness:
        with self._ready_lock:
            if self._ready is None or time.monotonic() - self._ready.at >= READY_EVERY:
                checks: dict[str, bool] = {}
                for name, check in self.checks.items():
                    try:
                        checks[name] = bool(self._on_loop(check()))
                    except (Exception, FutureTimeout):
                        checks[name] = False
                checks["breaker_closed"] = not self.breaker_open()
                self._ready = Readiness(all(checks.values()), checks, time.monotonic())
            return self._ready

    def _app(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start)
        if path == "/healthz":
            alive = time.monotonic() - self.beat < ALIVE_WITHIN
            return _json(start, 200 if alive else 503, {"alive": alive})
        if path == "/readyz":
            r = self.readiness()
            return _json(start, 200 if r.ready else 503, {"ready": r.ready, **r.checks})
        return _json(start, 404, {"error": "not found: /metrics, /healthz, /readyz"})


def _json(start: Callable[..., Any], status: int, body: dict[str, Any]) -> list[bytes]:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    start(f"{status} {reason}", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
