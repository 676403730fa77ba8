"""Settings: every one is an environment variable and a command-line flag (the flag wins).

`Settings` holds the values, typed, with the one set of defaults; the table `SETTINGS` says for
each field its variable, help text, parser and the commands it applies to.  The CLI builds its
flags from the table, `--help` lists it, and the README's settings table is checked against it by
the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

EXIT_CONFIG = 2  # the exit status of every command refused for its configuration


class ConfigError(Exception):
    """Bad configuration: the CLI prints the message and exits with EXIT_CONFIG."""


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    database_read_url: str | None = None
    embedding_api: str = "tei"
    embedding_url: str = "http://127.0.0.1:8080"
    embedding_model: str = "BAAI/bge-m3"
    embedding_api_key: str | None = None
    embedding_timeout: float = 15.0
    embedding_max_inputs: int | None = None  # None: the protocol's (embedders)
    embedding_rpm: int | None = None
    embedding_tpm: int | None = None
    next_embedding_api: str | None = None
    next_embedding_url: str | None = None
    next_embedding_model: str | None = None
    next_embedding_api_key: str | None = None
    batch_size: int = 10
    concurrency: int = 2
    lease_seconds: float = 120.0
    poll_interval: float = 30.0
    shutdown_timeout: float = 20.0
    drain_give_up_after: float = 120.0
    log_format: str = "text"
    log_level: str = "INFO"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    ui_port: int = 8765
    ui_host: str = "127.0.0.1"
    embedding_dim: int | None = None
    study_embed_cron: bool = True

    @classmethod
    def resolve(
        cls, args: argparse.Namespace | None, command: str, environ: dict[str, str] | None = None
    ) -> Settings:
        """Flag, else environment, else default; parsed and validated.  Settings that do not
        apply to `command` keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for s in SETTINGS:
            if command not in s.commands:
                continue
            raw = getattr(args, s.field, None) if args is not None else None
            source = f"{s.flag} ({s.env})"
            if raw is None:
                raw, source = env.get(s.env), s.env
            if raw is None or raw == "":
                continue
            if s.choices and raw not in s.choices:
                raise ConfigError(f"{source}={raw!r}: must be one of {', '.join(s.choices)}")
            try:
                values[s.field] = s.parse(raw)
            except ValueError as e:
                raise ConfigError(f"{source}={raw!r}: {e}") from None
        if command in DB and not values.get("database_url"):
            raise ConfigError(
                "DATABASE_URL is not set: point it at the app's PostgreSQL, for example "
                "postgresql://study_embed@db/app (on a checkout, `make db-up` starts a local "
                "cluster and `make db-url` prints its URL)"
            )
        if bool(values.get("next_embedding_url")) != bool(values.get("next_embedding_model")):
            raise ConfigError(
                "NEXT_EMBEDDING_URL and NEXT_EMBEDDING_MODEL go together: the other model's "
                "server and its name"
            )
        if values.get("next_embedding_model") and values["next_embedding_model"] == values.get(
            "embedding_model", default_of("embedding_model")
        ):
            raise ConfigError(
                f"NEXT_EMBEDDING_MODEL is EMBEDDING_MODEL ({values['next_embedding_model']}): "
                "the next model must be another one"
            )
        return cls(**values)

    @property
    def read_url(self) -> str:
        """Where the readers read: DATABASE_READ_URL, else DATABASE_URL."""
        return self.database_read_url or self.database_url


def default_of(name: str) -> Any:
    return {f.name: f.default for f in dataclasses.fields(Settings)}[name]


@dataclass(frozen=True)
class Setting:
    env: str
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    commands: tuple[str, ...] = ("listen", "drain")

    @property
    def field(self) -> str:
        return self.env.lower()

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")

    @property
    def default(self) -> Any:
        return default_of(self.field)


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


def _port(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise ValueError("must be a port number") from None
    if not 1 <= v <= 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return v


def _http_url(s: str) -> str:
    url = urlparse(s)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError("must be an http(s) URL such as http://127.0.0.1:8080")
    return s


ALL = (
    "listen",
    "drain",
    "status",
    "reembed",
    "migrate",
    "model",
    "search",
    "check-duplicate",
    "ui",
)
DB = ALL
READERS = ("status", "search", "check-duplicate", "ui")  # what may read from a standby
EMBED = ("listen", "drain", "search", "check-duplicate", "ui")

SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "PostgreSQL connection URL (required)", commands=DB),
    Setting(
        "DATABASE_READ_URL",
        "where the readers read (a streaming standby, or several: postgresql://h1,h2/db?"
        "target_session_attrs=prefer-standby); DATABASE_URL when unset.  The listener, the "
        "tick and migrate always use DATABASE_URL, the primary",
        commands=READERS,
    ),
    Setting(
        "EMBEDDING_API",
        "embedding server protocol",
        choices=("tei", "openai", "ollama"),
        commands=EMBED,
    ),
    Setting("EMBEDDING_URL", "embedding server base URL", _http_url, commands=EMBED),
    Setting(
        "EMBEDDING_MODEL",
        "model name sent to the server and stored in embedding_model (migrate: the model "
        "whose vectors an adopted bank keeps)",
        commands=(*EMBED, "reembed", "migrate"),
    ),
    Setting(
        "EMBEDDING_API_KEY", "bearer token for the embedding server (optional)", commands=EMBED
    ),
    Setting(
        "EMBEDDING_TIMEOUT",
        "seconds to wait for one embedding request",
        _positive_float,
        commands=EMBED,
    ),
    Setting(
        "EMBEDDING_MAX_INPUTS",
        "most texts per HTTP request (unset: 32 for tei, TEI's default "
        "max_client_batch_size; 128 for openai and ollama); larger batches are split, and "
        "a server that refuses a request for its size gets smaller ones from then on",
        _positive_int,
        commands=EMBED,
    ),
    Setting(
        "EMBEDDING_RPM",
        "requests per minute the listener keeps under (a paid API's budget; off when unset, "
        "and the server's x-ratelimit-limit-requests when smaller)",
        _positive_int,
        commands=EMBED,
    ),
    Setting(
        "EMBEDDING_TPM",
        "tokens per minute the listener keeps under, estimated from the texts' length "
        "(off when unset; the server's x-ratelimit-limit-tokens when smaller)",
        _positive_int,
        commands=EMBED,
    ),
    Setting(
        "NEXT_EMBEDDING_URL",
        "the other model's embedding server during a model change (`study-embed model`): the "
        "listener builds that generation with it, after the served one's queue",
        _http_url,
        commands=EMBED,
    ),
    Setting(
        "NEXT_EMBEDDING_MODEL",
        "the other model's name (with NEXT_EMBEDDING_URL); each generation is embedded by the "
        "embedder whose model it holds",
        commands=EMBED,
    ),
    Setting(
        "NEXT_EMBEDDING_API",
        "the other model's server protocol (default: EMBEDDING_API)",
        choices=("tei", "openai", "ollama"),
        commands=EMBED,
    ),
    Setting(
        "NEXT_EMBEDDING_API_KEY",
        "bearer token for the other model's server (default: EMBEDDING_API_KEY)",
        commands=EMBED,
    ),
    Setting("BATCH_SIZE", "rows claimed per batch", _positive_int),
    Setting("CONCURRENCY", "batches in flight at once", _positive_int),
    Setting(
        "LEASE_SECONDS",
        "how long a claim is held before another listener may take the row over",
        _positive_float,
    ),
    Setting(
        "POLL_INTERVAL",
        "seconds between scans when no NOTIFY arrives (the fallback for databases without pg_cron)",
        _positive_float,
        commands=("listen",),
    ),
    Setting(
        "SHUTDOWN_TIMEOUT",
        "seconds to finish in-flight batches on SIGTERM/SIGINT before releasing them",
        _positive_float,
    ),
    Setting(
        "DRAIN_GIVE_UP_AFTER",
        "`drain` stops, rows waiting, when the embedding server has served no batch for this "
        "many seconds (a rate limit does not count)",
        _positive_float,
        commands=("drain",),
    ),
    Setting("LOG_FORMAT", "log format", choices=("text", "json"), commands=ALL),
    Setting("LOG_LEVEL", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), commands=ALL),
    Setting(
        "METRICS_PORT",
        "serve /metrics, /healthz and /readyz on this port (off when unset)",
        _port,
    ),
    Setting("METRICS_HOST", "address the metrics endpoint binds to (the container: 0.0.0.0)"),
    Setting("UI_PORT", "port of `study-embed ui`, the reference web UI", _port, commands=("ui",)),
    Setting(
        "UI_HOST",
        "address the UI binds to (loopback: it has no authentication of its own)",
        commands=("ui",),
    ),
    Setting(
        "EMBEDDING_DIM",
        "embedding dimension for a new schema (default 1024, bge-m3); an "
        "existing column keeps its own",
        _positive_int,
        commands=("migrate",),
    ),
    Setting(
        "STUDY_EMBED_CRON",
        "schedule the pg_cron tick (off for databases without pg_cron)",
        _on_off,
        commands=("migrate",),
    ),
)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    group = parser.add_argument_group("settings (flag or environment variable)")
    for s in SETTINGS:
        if command not in s.commands:
            continue
        default = s.default
        shown = (
            ("on" if default else "off")
            if isinstance(default, bool)
            else ("unset" if default in (None, "") else default)
        )
        group.add_argument(
            s.flag,
            dest=s.field,
            metavar=s.env,
            default=None,
            help=f"{s.help}; env {s.env}, default {shown}"
            + (f" ({' | '.join(s.choices)})" if s.choices else ""),
        )
