"""What a database error means (study_embed.database): retry, retry a few times, or raise it
typed."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import PoolTimeout

from study_embed.database import (
    DatabaseError,
    DatabaseUnavailable,
    NotMigrated,
    NotPermitted,
    clean_text,
    is_conflict,
    is_connection_error,
    typed,
)


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


@pytest.mark.parametrize(
    "exc,kind",
    [
        (psycopg.OperationalError("connection refused"), DatabaseUnavailable),
        (errors.AdminShutdown(), DatabaseUnavailable),
        (PoolTimeout("no connection"), DatabaseUnavailable),
        (errors.UndefinedFunction("function study_embed.claim does not exist"), NotMigrated),
        (errors.InvalidSchemaName("schema study_embed does not exist"), NotMigrated),
        (errors.UndefinedTable("relation study_questions does not exist"), NotMigrated),
        (errors.InsufficientPrivilege("permission denied"), NotPermitted),
        (errors.QueryCanceled("statement timeout"), DatabaseError),
        (errors.LockNotAvailable("lock timeout"), DatabaseError),
        (errors.CheckViolation("violates check"), DatabaseError),
    ],
)
def test_each_error_is_raised_as_its_type(exc, kind):
    e = typed(exc)
    assert type(e) is kind and isinstance(e, DatabaseError)


def test_not_migrated_is_worded_once_and_says_what_to_do():
    message = str(typed(errors.UndefinedFunction("function study_embed.claim() does not exist")))
    assert message.startswith("the database is not migrated") and "make migrate" in message
    assert "study_embed.claim" in message
