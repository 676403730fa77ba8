"""What a database error means to the queue client: retry, retry a few times, or raise."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import PoolTimeout

from study_embed.queue import clean_text, is_conflict, is_connection_error


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.OperationalError("connection refused"),  # no SQLSTATE: never connected
        errors.AdminShutdown(),
        errors.CannotConnectNow(),
        errors.ConnectionFailure(),
        PoolTimeout("no connection"),
    ],
)
def test_connection_class_failures_are_retried(exc):
    assert is_connection_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        errors.QueryCanceled(),
        errors.LockNotAvailable(),
        errors.InsufficientPrivilege(),
        errors.UndefinedFunction(),
        errors.DataError(),
        ValueError("bug"),
    ],
)
def test_everything_else_is_raised(exc):
    assert not is_connection_error(exc)


def test_conflicts_are_retried_a_few_times():
    assert is_conflict(errors.SerializationFailure()) and is_conflict(errors.DeadlockDetected())
    assert not is_conflict(errors.QueryCanceled())


def test_text_for_postgres_has_no_nul_and_a_bound():
    assert clean_text("a\x00b") == "ab"
    assert len(clean_text("x" * 5000)) == 2000
