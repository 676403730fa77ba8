"""The listener process's life: start-up, signals, the metrics server, the shutdown timeout,
drain's progress bar and its summary.  `study-embed listen` and `study-embed drain` are
`run(settings, "listen" | "drain")`; the loops themselves are the worker's (worker.py).

A stop (SIGTERM, SIGINT) lets in-flight batches finish for up to SHUTDOWN_TIMEOUT, then gives
back what is still held (no attempt spent) and exits; `drain` exits non-zero when it was
interrupted, when rows are left failed, or when the embedding server kept failing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from typing import TextIO

from .embedders import ClientConfig, make_client
from .queue import GenerationStatus, QueueClient, StatusRow
from .settings import EXIT_CONFIG, ConfigError, Settings
from .worker import StartupError, Worker

log = logging.getLogger("study_embed")


class Progress:
    """drain's progress: a bar on a terminal, a log line every few seconds otherwise."""

    def __init__(self, worker: Worker, total: int, stream: TextIO) -> None:
        self.worker, self.total, self.stream = worker, max(total, 0), stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()

    def line(self) -> str:
        st = self.worker.stats
        done = st.embedded + st.failed_total
        total = max(self.total, done)
        elapsed = time.monotonic() - self.t0
        rate = st.embedded / elapsed if elapsed > 0 else 0.0
        left = max(total - done, 0)
        eta = f"{int(left / rate // 60)}:{int(left / rate % 60):02d}" if rate > 0 else "--:--"
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
        return (
            f"[{bar}] {done}/{total} done, {left} waiting, {st.failed_total} failed, "
            f"{rate:.0f} rows/s, ETA {eta}"
        )

    async def run(self) -> None:
        period = 0.2 if self.tty else 5.0
        while True:
            await asyncio.sleep(period)
            self.show()

    def show(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
            self.stream.flush()
        elif not final:
            log.info("progress: " + self.line())


async def run(
    cfg: Settings,
    mode: str,
    *,
    worker: Worker | None = None,
    stop: asyncio.Event | None = None,
    stream: TextIO | None = None,
) -> int:
    """`listen` or `drain` to the end; the exit code.  SIGTERM and SIGINT stop it unless the
    caller brings its own `stop` (and, for the unit tests, its own worker)."""
    stream = stream or sys.stderr
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    if worker is None:
        queue = QueueClient(
            cfg.database_url, max_size=cfg.concurrency + 2, app_name="study-embed listener"
        )
        nxt = ClientConfig.next_of(cfg)
        worker = Worker(
            cfg, queue, make_client(ClientConfig.of(cfg)), make_client(nxt) if nxt else None
        )
    progress: Progress | None = None
    progress_task = None
    metrics = None
    left_failed = 0
    try:
        await worker.open()
        metrics = start_metrics(cfg, worker, loop)
        await worker.startup_checks(wait_for_server=mode == "listen", stop=stop)
        if mode == "drain":
            progress = Progress(worker, await worker.queue.waiting(), stream)
            progress_task = asyncio.create_task(progress.run())
        task = asyncio.create_task(
            worker.listen(stop) if mode == "listen" else worker.drain(stop, give_up=True)
        )
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            log.info(
                "stopping: finishing in-flight batches",
                extra={
                    "fields": {
                        "timeout_s": cfg.shutdown_timeout,
                        "in_flight_rows": worker.in_flight_rows,
                    }
                },
            )
            done, _ = await asyncio.wait({task}, timeout=cfg.shutdown_timeout)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        stopper.cancel()
        if not task.cancelled():
            task.result()  # re-raise a crash of the loop
        if progress_task and progress:
            progress_task.cancel()
            progress.show(final=True)
        if mode == "drain" and not stop.is_set():
            left_failed = next(
                (r.live for r in await worker.queue.status() if r.status == "failed"), 0
            )
    except StartupError as e:
        log.error(str(e))
        return EXIT_CONFIG if e.config else 1
    finally:
        if progress_task:
            progress_task.cancel()
        if metrics:
            metrics.stop()
        await worker.close()
    if mode == "drain":
        return drain_summary(worker, stop.is_set(), left_failed, stream)
    log.info(
        "listener stopped",
        extra={"fields": {"embedded": worker.stats.embedded, "failed": worker.stats.failed_total}},
    )
    return 0


async def _queue_state(worker: Worker) -> tuple[list[StatusRow], list[GenerationStatus]]:
    """What a scrape shows of the database: the status counts and the generations."""
    return (
        await worker.queue.status(retry=False),
        await worker.queue.generation_status(retry=False),
    )


def start_metrics(cfg: Settings, worker: Worker, loop: asyncio.AbstractEventLoop):
    """METRICS_PORT: the endpoint, and the heartbeat behind /healthz (None when off)."""
    if cfg.metrics_port is None:
        return None
    from .metrics import MetricsServer

    try:
        server = MetricsServer(
            worker.stats,
            loop,
            status=lambda: _queue_state(worker),
            checks={
                "database": worker.queue.ping,
                # the served generation's server, which a switch may have made NEXT_EMBEDDING_*'s
                "embedding_server": lambda: worker.serving.healthy(),
            },
            breaker_open=lambda: worker.breaker.is_open,
            host=cfg.metrics_host,
            port=cfg.metrics_port,
        )
    except OSError as e:
        raise ConfigError(
            f"METRICS_PORT={cfg.metrics_port}: cannot listen on {cfg.metrics_host}: {e}"
        ) from None
    server.start()
    log.info(
        "metrics endpoint up",
        extra={"fields": {"url": f"http://{cfg.metrics_host}:{server.port}/metrics"}},
    )
    return server


def drain_summary(worker: Worker, interrupted: bool, left_failed: int, stream: TextIO) -> int:
    st = worker.stats
    elapsed = time.monotonic() - st.started
    rate = st.embedded / elapsed if elapsed > 0 else 0.0
    print(
        f"drain: embedded {st.embedded} rows in {elapsed:.1f} s ({rate:.0f} rows/s); "
        f"failed {st.failed_total}; superseded by edits {st.superseded}; "
        f"given back {st.released}" + ("; interrupted" if interrupted else ""),
        file=stream,
    )
    for reason, n in st.failed.most_common(10):
        print(f"  failed x{n}: {reason}", file=stream)
    if worker.gave_up:
        print(
            "drain: stopped: the embedding server served no batch for "
            f"{worker.breaker.down_for:.0f} s "
            f"(DRAIN_GIVE_UP_AFTER={worker.s.drain_give_up_after:g}); the rows it did not "
            "embed are waiting (given back, no attempt spent)",
            file=stream,
        )
    if left_failed:
        print(
            f"drain: {left_failed} row(s) are left failed: see `study-embed status`",
            file=stream,
        )
    return 1 if left_failed or interrupted or worker.gave_up else 0
