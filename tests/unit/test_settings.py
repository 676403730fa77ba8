"""Settings: one table, one set of defaults, clear errors."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys

import pytest

from study_embed.settings import SETTINGS, ConfigError, Settings, add_arguments

URL = {"DATABASE_URL": "postgresql:///x"}


def test_every_setting_is_a_field_and_every_field_a_setting():
    assert sorted(s.field for s in SETTINGS) == sorted(f.name for f in dataclasses.fields(Settings))


def test_defaults_come_from_settings_alone():
    s = Settings.resolve(None, "listen", URL)
    assert s == Settings(database_url="postgresql:///x")
    assert (s.batch_size, s.embedding_timeout, s.embedding_api) == (10, 15.0, "tei")


def test_flag_wins_over_environment_and_values_are_parsed():
    p = argparse.ArgumentParser()
    add_arguments(p, "listen")
    args = p.parse_args(["--batch-size", "7"])
    s = Settings.resolve(args, "listen", {**URL, "BATCH_SIZE": "3", "LEASE_SECONDS": "2.5"})
    assert s.batch_size == 7 and s.lease_seconds == 2.5


def test_settings_of_other_commands_are_not_read():
    s = Settings.resolve(None, "status", {**URL, "BATCH_SIZE": "not a number"})
    assert s.batch_size == 10


@pytest.mark.parametrize(
    "env,message",
    [
        ({"EMBEDDING_API": "grpc"}, "EMBEDDING_API='grpc': must be one of tei, openai, ollama"),
        ({"BATCH_SIZE": "0"}, "BATCH_SIZE='0': must be at least 1"),
        ({"BATCH_SIZE": "2.5"}, "must be a whole number"),
        ({"EMBEDDING_TIMEOUT": "soon"}, "EMBEDDING_TIMEOUT='soon': must be a number"),
        ({"EMBEDDING_TIMEOUT": "inf"}, "must be greater than 0"),
        ({"EMBEDDING_URL": "ftp://x"}, "must be an http(s) URL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml'"),
    ],
)
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(ConfigError) as e:
        Settings.resolve(None, "listen", {**URL, **env})
    assert message in str(e.value)


def test_cron_switch():
    assert (
        Settings.resolve(None, "migrate", {**URL, "STUDY_EMBED_CRON": "off"}).study_embed_cron
        is False
    )
    with pytest.raises(ConfigError, match="must be on or off"):
        Settings.resolve(None, "migrate", {**URL, "STUDY_EMBED_CRON": "maybe"})


def test_no_database_url_is_an_error_not_a_guess():
    with pytest.raises(ConfigError, match="DATABASE_URL is not set"):
        Settings.resolve(None, "status", {})


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().batch_size = 3  # type: ignore[misc]


def test_the_readers_read_where_database_read_url_says_and_the_listener_never_does():
    env = {"DATABASE_URL": "postgresql://p/app", "DATABASE_READ_URL": "postgresql://s1,s2/app"}
    for command in ("status", "search", "check-duplicate", "ui"):
        assert Settings.resolve(None, command, env).read_url == "postgresql://s1,s2/app"
    for command in ("listen", "drain", "migrate"):
        cfg = Settings.resolve(None, command, env)
        assert cfg.database_read_url is None and cfg.read_url == "postgresql://p/app"
    alone = Settings.resolve(None, "search", {"DATABASE_URL": "postgresql://p/app"})
    assert alone.read_url == "postgresql://p/app"


def test_the_command_line_starts_no_blas_threads():
    """numpy's OpenBLAS starts a thread per core at import, spinning there; the commands' numpy
    work is 1-D vectors, which no BLAS thread helps (cli.py keeps it to one, as the listener's
    image would)."""
    count = "import os; print(len(os.listdir('/proc/self/task')))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}

    def threads(imports: str) -> int:
        return int(subprocess.check_output([sys.executable, "-c", imports + count], env=env))

    if (os.cpu_count() or 1) > 1:  # else OpenBLAS starts none, with or without cli.py
        assert threads("import numpy; ") > 1  # what the setting prevents
    assert threads("import study_embed.cli, numpy; ") == 1
