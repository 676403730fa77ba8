"""The `study-embed` command: migrate, listen, drain, status, reembed."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from urllib.parse import urlparse

from . import __version__, logs
from .config import ConfigError, add_arguments, resolve

EXIT_CONFIG = 2
log = logging.getLogger("study_embed")


# -- migrate ---------------------------------------------------------------------------------------

def _cmd_migrate(cfg: dict, args: argparse.Namespace) -> int:
    from .migrate import MigrationError, Migrator

    try:
        report = Migrator(cfg["database_url"], embedding_dim=cfg["embedding_dim"],
                          cron=cfg["study_embed_cron"] and not args.no_cron).run(force=args.force)
    except MigrationError as e:
        print(f"migrate: {e}", file=sys.stderr)
        return 1
    print(report.summary(), file=sys.stderr)
    return 0


# -- listen / drain --------------------------------------------------------------------------------

def _client_config(cfg: dict):
    from .embedders import ClientConfig

    url = urlparse(cfg["embedding_url"])
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ConfigError(f"EMBEDDING_URL={cfg['embedding_url']!r}: must be an http(s) URL "
                          "such as http://127.0.0.1:8080")
    return ClientConfig(api=cfg["embedding_api"], url=cfg["embedding_url"],
                        model=cfg["embedding_model"], api_key=cfg["embedding_api_key"],
                        timeout=cfg["embedding_timeout"], max_inputs=cfg["embedding_max_inputs"])


class Progress:
    """drain's progress: a bar on a terminal, a log line every few seconds otherwise."""

    def __init__(self, worker, total: int, stream=sys.stderr) -> None:
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
        return (f"[{bar}] {done}/{total} done, {left} waiting, {st.failed_total} failed, "
                f"{rate:.0f} rows/s, ETA {eta}")

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


async def _run_worker(cfg: dict, mode: str) -> int:
    from .embedders import make_client
    from .worker import StartupError, Worker, WorkerSettings

    client = make_client(_client_config(cfg))
    worker = Worker(WorkerSettings(
        database_url=cfg["database_url"], model=cfg["embedding_model"],
        batch_size=cfg["batch_size"], concurrency=cfg["concurrency"],
        lease_seconds=cfg["lease_seconds"], poll_interval=cfg.get("poll_interval", 30.0),
        shutdown_timeout=cfg["shutdown_timeout"]), client)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    progress_task = None
    try:
        await worker.open()
        await worker.startup_checks(wait_for_server=mode == "listen", stop=stop)
        progress = None
        if mode == "drain":
            total = await worker.waiting()
            progress = Progress(worker, total)
            progress_task = asyncio.create_task(progress.run())
        task = asyncio.create_task(worker.listen(stop) if mode == "listen" else worker.drain(stop))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            log.info("stopping: finishing in-flight batches", extra={"fields": {
                "timeout_s": cfg["shutdown_timeout"], "in_flight_rows": sum(
                    len(r) for r in worker._held.values())}})
            done, _ = await asyncio.wait({task}, timeout=cfg["shutdown_timeout"])
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        stopper.cancel()
        if not task.cancelled():
            task.result()  # re-raise a crash of the loop
        if progress_task:
            progress_task.cancel()
            progress.show(final=True)
    except StartupError as e:
        log.error(str(e))
        return EXIT_CONFIG if e.config else 1
    finally:
        if progress_task:
            progress_task.cancel()
        await worker.close()
    if mode == "drain":
        return _drain_summary(worker, interrupted=stop.is_set())
    log.info("listener stopped", extra={"fields": {
        "embedded": worker.stats.embedded, "failed": worker.stats.failed_total}})
    return 0


def _drain_summary(worker, interrupted: bool) -> int:
    st = worker.stats
    elapsed = time.monotonic() - st.started
    rate = st.embedded / elapsed if elapsed > 0 else 0.0
    print(f"drain: embedded {st.embedded} rows in {elapsed:.1f} s ({rate:.0f} rows/s); "
          f"failed {st.failed_total}; superseded by edits {st.superseded}; "
          f"given back {st.released}" + ("; interrupted" if interrupted else ""), file=sys.stderr)
    for reason, n in st.failed.most_common(10):
        print(f"  failed x{n}: {reason}", file=sys.stderr)
    left_failed = _left_failed(worker)
    if left_failed:
        print(f"drain: {left_failed} row(s) are left failed: see `study-embed status`",
              file=sys.stderr)
    return 1 if left_failed or interrupted else 0


def _left_failed(worker) -> int:
    import psycopg

    from .sqlfiles import queries

    with psycopg.connect(worker.s.database_url) as conn:
        rows = dict((r[0], r[1]) for r in conn.execute(queries()["status"]))
    return int(rows.get("failed", 0))


def _cmd_listen(cfg: dict, args: argparse.Namespace) -> int:
    return asyncio.run(_run_worker(cfg, "listen"))


def _cmd_drain(cfg: dict, args: argparse.Namespace) -> int:
    return asyncio.run(_run_worker(cfg, "drain"))


# -- status / reembed ------------------------------------------------------------------------------

def _fmt_age(td) -> str:
    if td is None:
        return "-"
    s = int(td.total_seconds())
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _cmd_status(cfg: dict, args: argparse.Namespace) -> int:
    import psycopg

    from .sqlfiles import queries

    q = queries()
    try:
        with psycopg.connect(cfg["database_url"], application_name="study-embed status") as conn:
            rows = conn.execute(q["status"]).fetchall()
            failures = conn.execute(q["failures"], {"limit": args.errors}).fetchall()
    except psycopg.OperationalError as e:
        print(f"status: cannot connect to the database: {e}", file=sys.stderr)
        return 1
    except psycopg.errors.UndefinedTable:
        print("status: the study_embed schema is missing: run `make migrate`", file=sys.stderr)
        return 1
    print(f"{'status':<8} {'live':>10} {'deleted':>8}  oldest waiting")
    for status, live, deleted, oldest in rows:
        print(f"{status:<8} {live:>10} {deleted:>8}  {_fmt_age(oldest)}")
    if failures:
        print(f"\nfailed rows (up to {args.errors}):")
        print(f"{'id':>10} {'attempts':>8}  {'next retry':<20} last error")
        for qid, attempts, err, next_at, waiting in failures:
            when = "after an edit" if waiting else next_at.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{qid:>10} {attempts:>8}  {when:<20} {(err or '')[:100]}")
    return 0


def _cmd_reembed(cfg: dict, args: argparse.Namespace) -> int:
    import psycopg

    from .sqlfiles import queries

    # one bounded batch per transaction (autocommit): listeners embed meanwhile
    total, after = 0, 0
    with psycopg.connect(cfg["database_url"], autocommit=True,
                         application_name="study-embed reembed") as conn:
        while after is not None:
            n, after = conn.execute(queries()["requeue_model"],
                                    {"model": cfg["embedding_model"], "after_id": after}).fetchone()
            total += n
            if after is not None and sys.stderr.isatty():
                print(f"\rreembed: {total} row(s) queued, up to id {after}", end="",
                      file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"reembed: queued {total} row(s) embedded by another model than "
          f"{cfg['embedding_model']}; they keep their old vector until the listener replaces it",
          file=sys.stderr)
    return 0


# -- search / check-duplicate ---------------------------------------------------------------------

def _embed_text(cfg: dict, text: str):
    """One text through the configured embedding server."""
    from .embedders import EmbeddingError, make_client

    async def run():
        client = make_client(_client_config(cfg))
        try:
            [vec] = await client.embed([text])
            return vec
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except EmbeddingError as e:
        raise SystemExit(f"the embedding server at {cfg['embedding_url']} failed: {e}") from None


def _search_rows(cfg: dict, query: str, params: dict) -> list[tuple]:
    import psycopg
    from pgvector.psycopg import register_vector

    from .sqlfiles import queries

    with psycopg.connect(cfg["database_url"], application_name="study-embed search") as conn:
        register_vector(conn)
        return conn.execute(queries()[query], params).fetchall()


def _print_hits(rows: list[tuple], empty: str) -> None:
    if not rows:
        print(empty)
        return
    print(f"{'similarity':>10} {'id':>10}  question")
    for qid, sim, text in rows:
        first = " ".join(text.split())
        print(f"{sim:>10.3f} {qid:>10}  {first[:100]}")


def _cmd_search(cfg: dict, args: argparse.Namespace) -> int:
    vec = _embed_text(cfg, args.text)
    rows = _search_rows(cfg, "search", {"user_id": args.user, "query": vec, "k": args.k,
                                        "topic_id": args.topic})
    _print_hits(rows, f"no embedded questions of user {args.user}")
    return 0


def _cmd_check_duplicate(cfg: dict, args: argparse.Namespace) -> int:
    import psycopg

    from .sqlfiles import queries

    with psycopg.connect(cfg["database_url"]) as conn:   # the pipeline's own renderer
        text = conn.execute(queries()["render"], {
            "question_text": args.question, "choice_1": args.choices[0],
            "choice_2": args.choices[1], "choice_3": args.choices[2],
            "choice_4": args.choices[3]}).fetchone()[0]
    vec = _embed_text(cfg, text)
    rows = _search_rows(cfg, "find_duplicates", {"user_id": args.user, "query": vec,
                                                 "threshold": args.threshold})
    _print_hits(rows, f"no near-duplicates among user {args.user}'s questions")
    return 0


COMMANDS = {
    "migrate": (_cmd_migrate, "apply db/ to DATABASE_URL (run-once migrations, functions, cron)"),
    "listen": (_cmd_listen, "embed claimed rows as they come (LISTEN/NOTIFY, poll as fallback)"),
    "drain": (_cmd_drain, "embed everything claimable now, then exit (non-zero if rows failed)"),
    "status": (_cmd_status, "show the embedding queue: counts, oldest waiting, recent errors"),
    "reembed": (_cmd_reembed, "queue every row embedded by another model than EMBEDDING_MODEL"),
    "search": (_cmd_search, "free-text search in one user's questions"),
    "check-duplicate": (_cmd_check_duplicate,
                        "before inserting a question: its near-duplicates in the user's bank"),
}


def build_parser() -> argparse.ArgumentParser:
    from .config import SETTINGS

    settings = "\n".join(f"  {s.env:<22} {s.flag:<26} {s.help}" for s in SETTINGS)
    parser = argparse.ArgumentParser(
        prog="study-embed",
        description="Keep bge-m3 embeddings of study_questions correct inside PostgreSQL.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (environment variable, flag; `study-embed COMMAND --help` shows the "
               "defaults and which apply):\n" + settings)
    parser.add_argument("--version", action="version", version=f"study-embed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p, name)
        if name == "migrate":
            p.add_argument("--no-cron", action="store_true",
                           help="do not schedule the pg_cron tick (same as STUDY_EMBED_CRON=off)")
            p.add_argument("--force", action="store_true",
                           help="re-apply functions, triggers and views even if unchanged")
        if name == "status":
            p.add_argument("--errors", type=int, default=10, metavar="N",
                           help="show up to N failed rows (default 10)")
        if name in ("search", "check-duplicate"):
            p.add_argument("--user", type=int, required=True, metavar="ID",
                           help="the user whose questions are searched (no other user's ever are)")
        if name == "search":
            p.add_argument("text", help="what to look for")
            p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
            p.add_argument("--topic", type=int, default=None, metavar="ID",
                           help="only this study topic")
        if name == "check-duplicate":
            p.add_argument("--question", required=True, help="the question text")
            p.add_argument("--choices", nargs=4, required=True, metavar="CHOICE",
                           help="the four choices, in order")
            p.add_argument("--threshold", type=float, default=None,
                           help="cosine similarity (default: settings.duplicate_threshold)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = resolve(args, args.command)
        logs.setup(cfg.get("log_level", "INFO"), cfg.get("log_format", "text"))
        fn, _ = COMMANDS[args.command]
        return fn(cfg, args)
    except ConfigError as e:
        print(f"study-embed {args.command}: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
