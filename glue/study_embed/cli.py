"""The `study-embed` command."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import ConfigError, add_arguments, resolve

EXIT_CONFIG = 2


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


COMMANDS = {
    "migrate": (_cmd_migrate, "apply db/ to DATABASE_URL (run-once migrations, functions, cron)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="study-embed",
        description="Keep bge-m3 embeddings of study_questions correct inside PostgreSQL.")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = resolve(args, args.command)
    except ConfigError as e:
        print(f"study-embed {args.command}: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    fn, _ = COMMANDS[args.command]
    return fn(cfg, args)


if __name__ == "__main__":
    sys.exit(main())
