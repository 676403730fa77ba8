"""Settings: every one is an environment variable and a command-line flag (flag wins).

The table SETTINGS is the single source: the CLI builds its flags from it, `--help` lists it,
and the README's settings table is checked against it by the tests.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable


class ConfigError(Exception):
    """Bad configuration: the CLI prints the message and exits with status 2."""


@dataclass(frozen=True)
class Setting:
    env: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    commands: tuple[str, ...] = ("listen", "drain")

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")

    @property
    def dest(self) -> str:
        return self.env.lower()


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise ValueError("must be a whole number") from None
    if v < 1:
        raise ValueError("must be at least 1")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise ValueError("must be a number") from None
    if not 0 < v < float("inf"):
        raise ValueError("must be greater than 0")
    return v


def _on_off(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "on", "true", "yes"):
        return True
    if v in ("0", "off", "false", "no"):
        return False
    raise ValueError("must be on or off")


DB = ("listen", "drain", "status", "reembed", "migrate", "search", "check-duplicate")
EMBED = ("listen", "drain", "search", "check-duplicate")

SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", None, "PostgreSQL connection URL (default: the project-local "
            "cluster of `make db-up`)", commands=DB),
    Setting("EMBEDDING_API", "tei", "embedding server protocol", choices=("tei", "openai", "ollama"),
            commands=EMBED),
    Setting("EMBEDDING_URL", "http://127.0.0.1:8080", "embedding server base URL", commands=EMBED),
    Setting("EMBEDDING_MODEL", "BAAI/bge-m3", "model name sent to the server and stored in "
            "embedding_model", commands=(*EMBED, "reembed")),
    Setting("EMBEDDING_API_KEY", None, "bearer token for the embedding server (optional)",
            commands=EMBED),
    Setting("EMBEDDING_TIMEOUT", 15.0, "seconds to wait for one embedding request",
            _positive_float, commands=EMBED),
    Setting("EMBEDDING_MAX_INPUTS", 32, "most texts per HTTP request (TEI's default "
            "max_client_batch_size is 32); larger batches are split", _positive_int,
            commands=EMBED),
    Setting("BATCH_SIZE", 10, "rows claimed per batch", _positive_int),
    Setting("CONCURRENCY", 2, "batches in flight at once", _positive_int),
    Setting("LEASE_SECONDS", 120.0, "how long a claim is held before another listener may take "
            "the row over", _positive_float),
    Setting("POLL_INTERVAL", 30.0, "seconds between scans when no NOTIFY arrives (the fallback "
            "for databases without pg_cron)", _positive_float, commands=("listen",)),
    Setting("SHUTDOWN_TIMEOUT", 20.0, "seconds to finish in-flight batches on SIGTERM/SIGINT "
            "before releasing them", _positive_float),
    Setting("LOG_FORMAT", "text", "log format", choices=("text", "json"),
            commands=("listen", "drain", "status", "reembed", "migrate", "search",
                      "check-duplicate")),
    Setting("LOG_LEVEL", "INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
            commands=("listen", "drain", "status", "reembed", "migrate", "search",
                      "check-duplicate")),
    Setting("EMBEDDING_DIM", None, "embedding dimension for a new schema (default 1024, "
            "bge-m3); an existing column keeps its own", _positive_int, commands=("migrate",)),
    Setting("STUDY_EMBED_CRON", True, "schedule the pg_cron tick (off for databases without "
            "pg_cron)", _on_off, commands=("migrate",)),
)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    group = parser.add_argument_group("settings (flag or environment variable)")
    for s in SETTINGS:
        if command not in s.commands:
            continue
        default = "unset" if s.default is None else s.default
        if isinstance(default, bool):
            default = "on" if default else "off"
        group.add_argument(s.flag, dest=s.dest, metavar=s.env, default=None,
                           help=f"{s.help}; env {s.env}, default {default}"
                           + (f" ({' | '.join(s.choices)})" if s.choices else ""))


def resolve(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Flag, else environment, else default; parsed and validated."""
    out: dict[str, Any] = {}
    for s in SETTINGS:
        if command not in s.commands:
            continue
        raw = getattr(args, s.dest, None)
        source = f"{s.flag} ({s.env})"
        if raw is None:
            raw = os.environ.get(s.env)
            source = s.env
        if raw is None or raw == "":
            out[s.dest] = s.default
            continue
        if s.choices and raw not in s.choices:
            raise ConfigError(f"{source}={raw!r}: must be one of {', '.join(s.choices)}")
        try:
            out[s.dest] = s.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{source}={raw!r}: {e}") from None
    if "database_url" in out and not out["database_url"]:
        from .localdb import default_url

        out["database_url"] = default_url()
    return out
