"""The `study-embed` command: migrate, model, listen, drain, status, reembed, search,
check-duplicate, ui.  Each command is declared once, with its flags, right above its handler
(`@command`); the settings every command shares come from settings.SETTINGS.  The database's
errors arrive typed (database.py) and main() says each in one line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

# Set before numpy is imported (by .database), unless the operator set it: the commands' numpy
# work is small 1-D arrays, which no BLAS thread helps, and OpenBLAS starts a thread per core at
# numpy's import that spins there (0.1 CPU s of every start on 2 cores; more on a big machine).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import __version__, logs
from .database import Database, DatabaseError, DatabaseUnavailable, NotMigrated
from .settings import EXIT_CONFIG, SETTINGS, ConfigError, Settings, add_arguments

T = TypeVar("T")
Handler = Callable[[Settings, argparse.Namespace], int]
Arg = tuple[tuple[str, ...], dict[str, Any]]  # add_argument's positional and keyword arguments


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: Handler
    arguments: tuple[Arg, ...]


COMMANDS: dict[str, Command] = {}


def arg(*flags: str, **options: Any) -> Arg:
    """One argument of a command, as argparse's add_argument takes it."""
    return flags, options


def command(name: str, help: str, *arguments: Arg) -> Callable[[Handler], Handler]:
    """Declare a command: its name, its one-line help and its own arguments."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(name, help, handler, arguments)
        return handler

    return register


async def _with(db: Database, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(db)` for a one-shot command: open (a database that cannot be reached or is
    not migrated is said at once, by main()), work, close."""
    await db.open()
    try:
        return await work(db)
    finally:
        await db.close()


def _queue(cfg: Settings, app: str, read: bool = False):
    """The queue client: on the primary (DATABASE_URL), or with `read`, where the readers read
    (DATABASE_READ_URL)."""
    from .queue import QueueClient

    url = cfg.read_url if read else cfg.database_url
    return QueueClient(url, max_size=1, app_name=f"study-embed {app}")


def _bank_db(cfg: Settings, app: str) -> Database:
    """The app's reads, where the readers read (DATABASE_READ_URL, else DATABASE_URL)."""
    from .bank import Bank

    return Bank.database(cfg.read_url, max_size=1, app_name=f"study-embed {app}")


# -- migrate ---------------------------------------------------------------------------------------


@command(
    "migrate",
    "apply db/ to DATABASE_URL (run-once migrations, functions, cron)",
    arg(
        "--no-cron",
        action="store_true",
        help="do not schedule the pg_cron tick (same as STUDY_EMBED_CRON=off)",
    ),
    arg(
        "--force",
        action="store_true",
        help="re-apply functions, triggers and views even if unchanged",
    ),
    arg(
        "--reembed-all",
        action="store_true",
        help="adopting a bank embedded before study-embed: keep none of its vectors, queue "
        "every row (by default ready rows made by EMBEDDING_MODEL are kept)",
    ),
)
def _cmd_migrate(cfg: Settings, args: argparse.Namespace) -> int:
    from .migrate import MigrationError, Migrator

    try:
        report = Migrator(
            cfg.database_url,
            embedding_dim=cfg.embedding_dim,
            model=cfg.embedding_model,
            reembed=args.reembed_all,
            cron=cfg.study_embed_cron and not args.no_cron,
        ).run(force=args.force)
    except MigrationError as e:
        print(f"migrate: {e}", file=sys.stderr)
        return 1
    print(report.summary(), file=sys.stderr)
    return 0


# -- model: a change of the embedding model ----------------------------------------------------


@command(
    "model",
    "change the embedding model without a wrong answer: begin the next generation beside the "
    "served one, switch to it (and back), drop the other one",
    arg(
        "step",
        choices=("status", "begin", "switch", "drop"),
        help="status: the generations and how far the next one is; begin MODEL --dimension N; "
        "switch (refused until the other generation covers every live row, unless --force); "
        "drop (the generation not served: no switch back after it)",
    ),
    arg("next_model", nargs="?", metavar="MODEL", help="begin: the next model's name"),
    arg("--dimension", type=int, metavar="N", help="begin: the next model's dimension"),
    arg(
        "--force",
        action="store_true",
        help="switch even though rows are missing from the other generation (they are missing "
        "from search until they are embedded)",
    ),
    arg("--json", action="store_true", help="status: print one JSON document"),
)
def _cmd_model(cfg: Settings, args: argparse.Namespace) -> int:
    from .migrate import MigrationError, Migrator

    if args.step == "begin" and (not args.next_model or not args.dimension):
        raise ConfigError("model begin needs the next model's name and --dimension N")
    if args.step != "begin" and (args.next_model or args.dimension):
        raise ConfigError(f"model {args.step} takes no MODEL or --dimension")
    if args.step != "status":
        try:
            Migrator(cfg.database_url, cron=False).generation(
                args.step,
                model=args.next_model or "",
                dimension=args.dimension or 0,
                force=args.force,
            )
        except MigrationError as e:
            print(f"model {args.step}: {e}", file=sys.stderr)
            return 1

    async def read(queue):
        return await queue.generation_status()

    generations = asyncio.run(_with(_queue(cfg, "model"), read))
    if args.json:
        print(json.dumps(_generations_document(generations), indent=2))
    else:
        done = {
            "begin": "began the next generation; listeners with NEXT_EMBEDDING_URL and "
            "NEXT_EMBEDDING_MODEL for it build it",
            "switch": "switched: search now serves the other generation; `model switch` "
            "again switches back, `model drop` drops the one not served",
            "drop": "dropped the generation that was not served",
        }
        if args.step in done:
            print(f"model {args.step}: {done[args.step]}", file=sys.stderr)
        _print_generations(generations)
    return 0


def _print_generations(generations) -> None:
    print(f"{'generation':<10} {'model':<32} {'dim':>5} {'ready':>10} {'live':>10}  {'':>6}")
    for g in generations:
        share = f"{100 * g.ready / g.live:.1f}%" if g.live else "-"
        print(f"{g.role:<10} {g.model:<32} {g.dimension:>5} {g.ready:>10} {g.live:>10}  {share:>6}")


def _generations_document(generations) -> list[dict]:
    return [
        {
            "slot": g.slot,
            "role": g.role,
            "model": g.model,
            "dimension": g.dimension,
            "since": g.since.isoformat(),
            "live": g.live,
            "ready": g.ready,
            "failed": g.failed,
            "missing": g.live - g.ready,
        }
        for g in generations
    ]


# -- listen / drain --------------------------------------------------------------------------------


@command("listen", "embed claimed rows as they come (LISTEN/NOTIFY, poll as fallback)")
def _cmd_listen(cfg: Settings, args: argparse.Namespace) -> int:
    from . import listener

    return asyncio.run(listener.run(cfg, "listen"))


@command("drain", "embed everything claimable now, then exit (non-zero if rows failed)")
def _cmd_drain(cfg: Settings, args: argparse.Namespace) -> int:
    from . import listener

    return asyncio.run(listener.run(cfg, "drain"))


# -- status / reembed ------------------------------------------------------------------------------


def _fmt_age(td) -> str:
    if td is None:
        return "-"
    s = int(td.total_seconds())
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@command(
    "status",
    "show the embedding queue: counts, oldest waiting, recent errors",
    arg("--json", action="store_true", help="print one JSON document (for scripts)"),
    arg(
        "--errors",
        type=int,
        default=10,
        metavar="N",
        help="show up to N failed rows (default 10)",
    ),
)
def _cmd_status(cfg: Settings, args: argparse.Namespace) -> int:
    async def read(queue):
        return (
            await queue.status(),
            await queue.failures(args.errors),
            await queue.generation_status(),
            await queue.replica(),
        )

    rows, failures, generations, replica = asyncio.run(
        _with(_queue(cfg, "status", read=True), read)
    )
    if args.json:
        doc = _status_document(rows, failures)
        doc["generations"] = _generations_document(generations)
        doc["replica"] = None if replica is None else dataclasses.asdict(replica)
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return 0
    if replica is not None:
        lag = (
            "no transaction replayed yet"
            if replica.lag_seconds is None
            else (f"last replayed commit {replica.lag_seconds:.1f} s ago")
        )
        print(
            f"read from a standby: {lag}, {replica.replay_bytes_behind or 0} bytes received "
            "and not yet replayed (the counts below are as of its replay)\n"
        )
    _print_generations(generations)
    print()
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


@command(
    "reembed",
    "queue every row of the served generation embedded by another model than the served one",
)
def _cmd_reembed(cfg: Settings, args: argparse.Namespace) -> int:
    # one bounded batch per transaction: listeners embed meanwhile
    async def requeue(queue) -> int:
        served = await queue.served_model()
        if served != cfg.embedding_model:
            raise ConfigError(
                f"the database serves model {served}, not EMBEDDING_MODEL={cfg.embedding_model}. "
                "To change the model without a window of wrong answers: `study-embed model "
                f"begin {cfg.embedding_model} --dimension N`, then `model switch`."
            )
        total, after = 0, 0
        while after is not None:
            n, after = await queue.requeue_model(served, after)
            total += n
            if after is not None and sys.stderr.isatty():
                print(
                    f"\rreembed: {total} row(s) queued, up to id {after}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        return total

    total = asyncio.run(_with(_queue(cfg, "reembed"), requeue))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(
        f"reembed: queued {total} row(s) embedded by another model than "
        f"{cfg.embedding_model}; they keep their old vector until the listener replaces it",
        file=sys.stderr,
    )
    return 0


@asynccontextmanager
async def _embedding(cfg: Settings):
    """The configured embedding clients (EMBEDDING_*, and NEXT_EMBEDDING_* during a model
    change): a query is embedded by the one whose model the database serves.  No such client,
    or a server that cannot embed, ends the command."""
    from .bank import ModelMismatch
    from .embedders import ClientConfig, EmbeddingError, make_client

    configs = [ClientConfig.of(cfg)]
    if (nxt := ClientConfig.next_of(cfg)) is not None:
        configs.append(nxt)
    clients = [make_client(c) for c in configs]
    try:
        yield clients
    except ModelMismatch as e:
        raise ConfigError(str(e)) from None
    except EmbeddingError as e:
        raise SystemExit(f"the embedding server failed: {e}") from None
    finally:
        for client in clients:
            await client.aclose()


def _print_hits(hits, empty: str) -> None:
    if not hits:
        print(empty)
        return
    print(f"{'similarity':>10} {'id':>10}  question")
    for h in hits:
        first = " ".join(h.question_text.split())
        print(f"{h.similarity:>10.3f} {h.id:>10}  {first[:100]}")


USER = arg(
    "--user",
    type=int,
    required=True,
    metavar="ID",
    help="the user whose questions are searched (no other user's ever are)",
)


@command(
    "search",
    "free-text search in one user's questions",
    USER,
    arg("text", help="what to look for"),
    arg("-k", type=int, default=10, help="how many results (default 10)"),
    arg(
        "--dense",
        action="store_true",
        help="rank by embedding similarity only (default: fused with the words' "
        "lexical ranking, search_questions_hybrid)",
    ),
    arg("--topic", type=int, default=None, metavar="ID", help="only this study topic"),
)
def _cmd_search(cfg: Settings, args: argparse.Namespace) -> int:
    from .bank import Bank

    async def search(db):
        async with _embedding(cfg) as clients:
            return await Bank(db).search(
                args.user, clients, args.text, args.k, args.topic, dense=args.dense
            )

    hits = asyncio.run(_with(_bank_db(cfg, "search"), search))
    _print_hits(hits, f"no embedded questions of user {args.user}")
    return 0


@command(
    "check-duplicate",
    "before inserting a question: its near-duplicates in the user's bank",
    USER,
    arg("--question", required=True, help="the question text"),
    arg(
        "--choices",
        nargs=4,
        required=True,
        metavar="CHOICE",
        help="the four choices, in order",
    ),
    arg(
        "--correct",
        type=int,
        choices=(1, 2, 3, 4),
        default=None,
        help="the correct choice: only questions whose correct choice reads the same "
        "are near-duplicates (settings.duplicate_same_answer)",
    ),
    arg(
        "--threshold",
        type=float,
        default=None,
        help="cosine similarity (default: the model's in study_embed.model_thresholds, "
        "else settings.duplicate_threshold)",
    ),
)
def _cmd_check_duplicate(cfg: Settings, args: argparse.Namespace) -> int:
    from .bank import Bank, Draft

    try:
        draft = Draft(args.question, tuple(args.choices), args.correct)
    except ValueError as e:
        print(f"check-duplicate: {e}", file=sys.stderr)
        return EXIT_CONFIG

    async def check(db):
        async with _embedding(cfg) as clients:
            return await Bank(db).check_draft(args.user, clients, draft, args.threshold)

    hits = asyncio.run(_with(_bank_db(cfg, "check-duplicate"), check))
    _print_hits(hits, f"no near-duplicates among user {args.user}'s questions")
    return 0


@command("ui", "the reference web UI: search, similar questions, duplicates, clusters")
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

    async def preflight(db):
        await check_role(Bank(db, retry=False))

    try:
        asyncio.run(_with(_bank_db(cfg, "ui"), preflight))
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
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help, description=c.help)
        add_arguments(p, c.name)
        for flags, options in c.arguments:
            p.add_argument(*flags, **options)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = Settings.resolve(args, args.command)
        logs.setup(cfg.log_level, cfg.log_format)
        return COMMANDS[args.command].handler(cfg, args)
    except ConfigError as e:
        print(f"study-embed {args.command}: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except NotMigrated as e:
        print(f"{args.command}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except DatabaseUnavailable as e:
        print(f"{args.command}: cannot connect to the database: {e}", file=sys.stderr)
        return 1
    except DatabaseError as e:
        print(f"{args.command}: database error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
