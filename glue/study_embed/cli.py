"""The `study-embed` command: migrate, listen, drain, status, reembed, search, check-duplicate,
ui."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TextIO, TypeVar

import psycopg

from . import __version__, logs
from .settings import SETTINGS, ConfigError, Settings, add_arguments

EXIT_CONFIG = 2
log = logging.getLogger("study_embed")
T = TypeVar("T")


# -- migrate ---------------------------------------------------------------------------------------


def _cmd_migrate(cfg: Settings, args: argparse.Namespace) -> int:
    from .migrate import MigrationError, Migrator

    try:
        report = Migrator(
            cfg.database_url,
            embedding_dim=cfg.embedding_dim,
            cron=cfg.study_embed_cron and not args.no_cron,
        ).run(force=args.force)
    except MigrationError as e:
        print(f"migrate: {e}", file=sys.stderr)
        return 1
    print(report.summary(), file=sys.stderr)
    return 0


# -- listen / drain --------------------------------------------------------------------------------


def _client(cfg: Settings):
    from .embedders import ClientConfig, make_client

    return make_client(ClientConfig.of(cfg))


def _queue(cfg: Settings, app: str, max_size: int = 1):
    from .queue import QueueClient

    return QueueClient(cfg.database_url, max_size=max_size, app_name=f"study-embed {app}")


class Progress:
    """drain's progress: a bar on a terminal, a log line every few seconds otherwise."""

    def __init__(self, worker, total: int, stream: TextIO = sys.stderr) -> None:
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


async def _run_worker(cfg: Settings, mode: str) -> int:
    from .worker import StartupError, Worker

    worker = Worker(cfg, _queue(cfg, "listener", max_size=cfg.concurrency + 2), _client(cfg))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    progress: Progress | None = None
    progress_task = None
    metrics = None
    left_failed = 0
    try:
        await worker.open()
        metrics = _start_metrics(cfg, worker, loop)
        await worker.startup_checks(wait_for_server=mode == "listen", stop=stop)
        if mode == "drain":
            progress = Progress(worker, await worker.queue.waiting())
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
        return _drain_summary(worker, interrupted=stop.is_set(), left_failed=left_failed)
    log.info(
        "listener stopped",
        extra={"fields": {"embedded": worker.stats.embedded, "failed": worker.stats.failed_total}},
    )
    return 0


def _start_metrics(cfg: Settings, worker, loop: asyncio.AbstractEventLoop):
    """METRICS_PORT: the endpoint, and the heartbeat behind /healthz (None when off)."""
    if cfg.metrics_port is None:
        return None
    from .metrics import MetricsServer

    try:
        server = MetricsServer(
            worker.stats,
            loop,
            status=lambda: worker.queue.status(retry=False),
            checks={"database": worker.queue.ping, "embedding_server": worker.client.healthy},
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


def _drain_summary(worker, interrupted: bool, left_failed: int) -> int:
    st = worker.stats
    elapsed = time.monotonic() - st.started
    rate = st.embedded / elapsed if elapsed > 0 else 0.0
    print(
        f"drain: embedded {st.embedded} rows in {elapsed:.1f} s ({rate:.0f} rows/s); "
        f"failed {st.failed_total}; superseded by edits {st.superseded}; "
        f"given back {st.released}" + ("; interrupted" if interrupted else ""),
        file=sys.stderr,
    )
    for reason, n in st.failed.most_common(10):
        print(f"  failed x{n}: {reason}", file=sys.stderr)
    if worker.gave_up:
        print(
            f"drain: stopped: the embedding server failed {worker.breaker.failures} times in "
            "a row; the rows it did not embed are waiting (given back, no attempt spent)",
            file=sys.stderr,
        )
    if left_failed:
        print(
            f"drain: {left_failed} row(s) are left failed: see `study-embed status`",
            file=sys.stderr,
        )
    return 1 if left_failed or interrupted or worker.gave_up else 0


def _cmd_listen(cfg: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_run_worker(cfg, "listen"))


def _cmd_drain(cfg: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_run_worker(cfg, "drain"))


class NotMigrated(Exception):
    pass


async def _with_queue(cfg: Settings, app: str, work: Callable[..., Awaitable[T]]) -> T:
    """Run `work(queue)` for a one-shot command.  A database that cannot be reached or is not
    migrated is said at once (OperationalError, NotMigrated: main() prints them)."""
    queue = _queue(cfg, app)
    _, has_api = await queue.schema_ready()
    if not has_api:
        raise NotMigrated
    await queue.open()
    try:
        return await work(queue)
    finally:
        await queue.close()


# -- status / reembed ------------------------------------------------------------------------------


def _fmt_age(td) -> str:
    if td is None:
        return "-"
    s = int(td.total_seconds())
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _cmd_status(cfg: Settings, args: argparse.Namespace) -> int:
    async def read(queue):
        return await queue.status(), await queue.failures(args.errors)

    rows, failures = asyncio.run(_with_queue(cfg, "status", read))
    if args.json:
        print(json.dumps(_status_document(rows, failures), ensure_ascii=False, indent=2))
        return 0
    print(f"{'status':<8} {'live':>10} {'deleted':>8}  oldest waiting")
    for r in rows:
        print(f"{r.status:<8} {r.live:>10} {r.deleted:>8}  {_fmt_age(r.oldest_waiting)}")
    if failures:
        print(f"\nfailed rows (up to {args.errors}):")
        print(f"{'id':>10} {'attempts':>8}  {'next retry':<20} last error")
        for f in failures:
            when = (
                "after an edit"
                if f.waiting_for_edit or f.next_retry_at is None
                else f.next_retry_at.strftime("%Y-%m-%d %H:%M:%S")
            )
            print(f"{f.id:>10} {f.attempts:>8}  {when:<20} {(f.last_error or '')[:100]}")
    return 0


def _status_document(rows, failures) -> dict:
    """`status --json`: the same facts, in base units, for scripts."""
    ages = [r.oldest_waiting.total_seconds() for r in rows if r.oldest_waiting is not None]
    return {
        "statuses": {
            r.status: {
                "live": r.live,
                "deleted": r.deleted,
                "oldest_waiting_seconds": None
                if r.oldest_waiting is None
                else r.oldest_waiting.total_seconds(),
            }
            for r in rows
        },
        "waiting": sum(r.live for r in rows if r.status != "ready"),
        "oldest_waiting_seconds": max(ages, default=None),
        "failed_rows": [
            {
                "id": f.id,
                "attempts": f.attempts,
                "last_error": f.last_error,
                "next_retry_at": None if f.next_retry_at is None else f.next_retry_at.isoformat(),
                "waiting_for_edit": f.waiting_for_edit,
            }
            for f in failures
        ],
    }


def _cmd_reembed(cfg: Settings, args: argparse.Namespace) -> int:
    # one bounded batch per transaction: listeners embed meanwhile
    async def requeue(queue) -> int:
        total, after = 0, 0
        while after is not None:
            n, after = await queue.requeue_model(cfg.embedding_model, after)
            total += n
            if after is not None and sys.stderr.isatty():
                print(
                    f"\rreembed: {total} row(s) queued, up to id {after}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        return total

    total = asyncio.run(_with_queue(cfg, "reembed", requeue))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(
        f"reembed: queued {total} row(s) embedded by another model than "
        f"{cfg.embedding_model}; they keep their old vector until the listener replaces it",
        file=sys.stderr,
    )
    return 0


# -- search / check-duplicate ---------------------------------------------------------------------


@asynccontextmanager
async def _embedding(cfg: Settings):
    """The configured embedding client; a server that cannot embed ends the command."""
    from .embedders import EmbeddingError

    client = _client(cfg)
    try:
        yield client
    except EmbeddingError as e:
        raise SystemExit(f"the embedding server at {cfg.embedding_url} failed: {e}") from None
    finally:
        await client.aclose()


def _print_hits(hits, empty: str) -> None:
    if not hits:
        print(empty)
        return
    print(f"{'similarity':>10} {'id':>10}  question")
    for h in hits:
        first = " ".join(h.question_text.split())
        print(f"{h.similarity:>10.3f} {h.id:>10}  {first[:100]}")


def _cmd_search(cfg: Settings, args: argparse.Namespace) -> int:
    from .bank import Bank

    async def search(queue):
        async with _embedding(cfg) as client:
            return await Bank(queue).search(
                args.user, client, args.text, args.k, args.topic, dense=args.dense
            )

    hits = asyncio.run(_with_queue(cfg, "search", search))
    _print_hits(hits, f"no embedded questions of user {args.user}")
    return 0


def _cmd_check_duplicate(cfg: Settings, args: argparse.Namespace) -> int:
    from .bank import Bank
    from .embedders import embed_query

    async def check(queue):
        bank = Bank(queue)
        text = await bank.render(args.question, args.choices)  # the pipeline's own renderer
        answer = args.choices[args.correct - 1] if args.correct else None
        async with _embedding(cfg) as client:
            vec = await embed_query(client, text)
        return await bank.find_duplicates(args.user, vec, args.threshold, answer)

    hits = asyncio.run(_with_queue(cfg, "check-duplicate", check))
    _print_hits(hits, f"no near-duplicates among user {args.user}'s questions")
    return 0


# -- ui --------------------------------------------------------------------------------------------


def _cmd_ui(cfg: Settings, args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .ui.app import Refused, check_role, create_app
    except ImportError as e:
        print(
            f"ui: the web UI needs the ui extra (missing: {e.name}): pip install 'study-embed[ui]'",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    from .bank import Bank

    async def preflight(queue):
        await check_role(Bank(queue, retry=False))

    try:
        asyncio.run(_with_queue(cfg, "ui", preflight))
    except Refused as e:
        print(f"ui: {e}", file=sys.stderr)
        return EXIT_CONFIG
    host = f"[{cfg.ui_host}]" if ":" in cfg.ui_host else cfg.ui_host
    print(
        f"study-embed ui: http://{host}:{cfg.ui_port}/  (no authentication of its own: "
        "keep it on loopback or put the app's authentication in front of it)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        create_app(cfg),
        host=cfg.ui_host,
        port=cfg.ui_port,
        log_config=None,  # the logging set up by logs.setup
        log_level=cfg.log_level.lower(),
        access_log=cfg.log_level == "DEBUG",
        server_header=False,
    )
    return 0


COMMANDS = {
    "migrate": (_cmd_migrate, "apply db/ to DATABASE_URL (run-once migrations, functions, cron)"),
    "listen": (_cmd_listen, "embed claimed rows as they come (LISTEN/NOTIFY, poll as fallback)"),
    "drain": (_cmd_drain, "embed everything claimable now, then exit (non-zero if rows failed)"),
    "status": (_cmd_status, "show the embedding queue: counts, oldest waiting, recent errors"),
    "reembed": (_cmd_reembed, "queue every row embedded by another model than EMBEDDING_MODEL"),
    "search": (_cmd_search, "free-text search in one user's questions"),
    "check-duplicate": (
        _cmd_check_duplicate,
        "before inserting a question: its near-duplicates in the user's bank",
    ),
    "ui": (_cmd_ui, "the reference web UI: search, similar questions, duplicates, clusters"),
}


def build_parser() -> argparse.ArgumentParser:
    settings = "\n".join(f"  {s.env:<22} {s.flag:<26} {s.help}" for s in SETTINGS)
    parser = argparse.ArgumentParser(
        prog="study-embed",
        description="Keep bge-m3 embeddings of study_questions correct inside PostgreSQL.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (environment variable, flag; `study-embed COMMAND --help` shows the "
        "defaults and which apply):\n" + settings,
    )
    parser.add_argument("--version", action="version", version=f"study-embed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p, name)
        if name == "migrate":
            p.add_argument(
                "--no-cron",
                action="store_true",
                help="do not schedule the pg_cron tick (same as STUDY_EMBED_CRON=off)",
            )
            p.add_argument(
                "--force",
                action="store_true",
                help="re-apply functions, triggers and views even if unchanged",
            )
        if name == "status":
            p.add_argument(
                "--json", action="store_true", help="print one JSON document (for scripts)"
            )
            p.add_argument(
                "--errors",
                type=int,
                default=10,
                metavar="N",
                help="show up to N failed rows (default 10)",
            )
        if name in ("search", "check-duplicate"):
            p.add_argument(
                "--user",
                type=int,
                required=True,
                metavar="ID",
                help="the user whose questions are searched (no other user's ever are)",
            )
        if name == "search":
            p.add_argument("text", help="what to look for")
            p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
            p.add_argument(
                "--dense",
                action="store_true",
                help="rank by embedding similarity only (default: fused with the words' "
                "lexical ranking, search_questions_hybrid)",
            )
            p.add_argument(
                "--topic", type=int, default=None, metavar="ID", help="only this study topic"
            )
        if name == "check-duplicate":
            p.add_argument("--question", required=True, help="the question text")
            p.add_argument(
                "--choices",
                nargs=4,
                required=True,
                metavar="CHOICE",
                help="the four choices, in order",
            )
            p.add_argument(
                "--correct",
                type=int,
                choices=(1, 2, 3, 4),
                default=None,
                help="the correct choice: only questions whose correct choice reads the same "
                "are near-duplicates (settings.duplicate_same_answer)",
            )
            p.add_argument(
                "--threshold",
                type=float,
                default=None,
                help="cosine similarity (default: the model's in study_embed.model_thresholds, "
                "else settings.duplicate_threshold)",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = Settings.resolve(args, args.command)
        logs.setup(cfg.log_level, cfg.log_format)
        fn, _ = COMMANDS[args.command]
        return fn(cfg, args)
    except ConfigError as e:
        print(f"study-embed {args.command}: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except NotMigrated:
        print(
            f"{args.command}: the study_embed schema is missing: run `make migrate`",
            file=sys.stderr,
        )
        return 1
    except psycopg.OperationalError as e:
        print(f"{args.command}: cannot connect to the database: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
