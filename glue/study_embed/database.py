"""The database layer: the pool, the one way a named statement runs, and the one place that
decides what a database error means.  The queue client (queue.py) and the app-facing reads
(bank.py) are built on it; nothing above this module catches a psycopg error.

What an error becomes (every one a `DatabaseError`, the psycopg error as its __cause__):

- `DatabaseUnavailable`: the server went away, cannot be reached, or the pool has no
  connection.  Retried with backoff until it passes; after close(), or for a call made with
  `retry=False`, raised at once, so that a shutdown never waits for a database that is down.
- `NotMigrated`: the study_embed schema, one of its functions or pgvector is missing.
- `NotPermitted`: the connected role lacks a privilege (SQLSTATE 42501).
- `DatabaseError` itself for the rest (a statement or lock timeout, a constraint, a bad
  argument): retrying would only repeat it.  Deadlocks and serialization failures are first
  retried a few times.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector_async
from psycopg import errors, sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .backoff import Backoff
from .sqlfiles import queries

log = logging.getLogger("study_embed.database")
CONFLICT_RETRIES = 3  # deadlock / serialization failure: tries before giving up
CONNECT_TIMEOUT = 10.0  # seconds to wait for a pooled connection before trying again
MESSAGE_LIMIT = 2000  # characters of an error message kept in a row
NOT_MIGRATED = (
    "the database is not migrated (no pgvector type or no study_embed schema): "
    "run `make migrate` (or `study-embed migrate`)"
)


class DatabaseError(Exception):
    """A database error, with its SQLSTATE where the server sent one."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class Replica:
    """A standby a reader reads from: seconds since the last replayed transaction committed on
    the primary (None before the first; it also grows while the primary commits nothing) and
    bytes received but not replayed yet."""

    lag_seconds: float | None
    replay_bytes_behind: int | None


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached (and the client is closing, or was asked not to wait)."""


class NotMigrated(DatabaseError):
    """The schema study-embed needs is not there."""

    def __init__(self, detail: str = "", sqlstate: str | None = None) -> None:
        super().__init__(NOT_MIGRATED + (f" ({detail})" if detail else ""), sqlstate)


class NotPermitted(DatabaseError):
    """The connected role may not do this."""


def is_connection_error(e: BaseException) -> bool:
    """Lost or no connection: worth retrying.  psycopg raises OperationalError for these, but
    also for QueryCanceled (statement_timeout) and LockNotAvailable (lock_timeout), which are
    not."""
    if isinstance(e, PoolTimeout):
        return True
    if not isinstance(e, psycopg.OperationalError):
        return False
    state = e.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def is_conflict(e: BaseException) -> bool:
    return isinstance(e, (errors.SerializationFailure, errors.DeadlockDetected))


_MISSING = (errors.UndefinedFunction, errors.InvalidSchemaName, errors.UndefinedTable,
            errors.UndefinedObject)  # fmt: skip


def typed(e: psycopg.Error) -> DatabaseError:
    """What a psycopg error means to study-embed."""
    state = getattr(e, "sqlstate", None)
    if is_connection_error(e):
        return DatabaseUnavailable(first_line(e), state)
    if isinstance(e, _MISSING):
        return NotMigrated(first_line(e), state)
    if isinstance(e, errors.InsufficientPrivilege):
        return NotPermitted(first_line(e), state)
    return DatabaseError(first_line(e), state)


def clean_text(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """What a text column accepts: no NUL (PostgreSQL refuses it), and not unbounded."""
    return text.replace("\x00", "")[:limit]


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


@asynccontextmanager
async def _typed_errors() -> AsyncIterator[None]:
    try:
        yield
    except psycopg.Error as e:
        raise typed(e) from e


class VectorRows:
    """Vectors of one dimension, sent as one `vector[]` parameter (a batch's complete()): numpy
    writes the array's binary form in one step.  psycopg's list dumper made a pgvector.Vector
    of each element and packed it alone (BENCHMARKS.md, "CPU per embedded row")."""

    def __init__(self, vectors: Sequence[np.ndarray]) -> None:
        shape = vectors[0].shape if len(vectors) else ()
        if len(shape) != 1 or any(v.shape != shape for v in vectors):
            raise ValueError("not a batch of vectors of one dimension")
        # (np.concatenate: np.stack costs ten times as much for a batch of 1-D arrays)
        self.matrix = (
            np.concatenate(vectors).astype(np.float32, copy=False).reshape(len(vectors), shape[0])
        )


class _VectorRowsDumper(Dumper):
    format = Format.BINARY
    element_oid = 0  # pgvector's type, as this connection knows it (_configure)

    def dump(self, obj: VectorRows) -> bytes:
        n, dim = obj.matrix.shape
        # array_send's form: one dimension, no NULL, the element type, n elements from index 1;
        # then each element's length and vector_send's form: dim, 0, big-endian float4s
        items = np.empty(
            n, dtype=[("length", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("x", ">f4", (dim,))]
        )
        items["length"] = 4 + 4 * dim
        items["dim"] = dim
        items["unused"] = 0
        items["x"] = obj.matrix
        return struct.pack(">iiIii", 1, 0, self.element_oid, n, 1) + items.tobytes()


async def _configure(conn: psycopg.AsyncConnection) -> None:
    """A new pooled connection: pgvector's adapters, and VectorRows as `vector[]`."""
    await register_vector_async(conn)
    vector = conn.adapters.types["vector"]
    dumper = type(
        "VectorRowsDumper",
        (_VectorRowsDumper,),
        {"oid": vector.array_oid, "element_oid": vector.oid},
    )
    conn.adapters.register_dumper(VectorRows, dumper)


class Database:
    """A pool of autocommit connections and the statements of some db/queries/*.sql files."""

    def __init__(
        self, url: str, *query_files: str, max_size: int = 4, app_name: str = "study-embed"
    ) -> None:
        self.url = url
        self.app_name = app_name
        self.closing = False
        self.q = queries("database", *query_files)
        self.pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "application_name": app_name},
            configure=_configure,
            check=AsyncConnectionPool.check_connection,
            name=app_name,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self, timeout: float = 15.0) -> None:
        """Check the schema on a connection of its own (a database that cannot be reached is
        said at once, not waited for), then fill the pool."""
        has_vector, has_api = await self.schema_ready()
        if not (has_vector and has_api):
            raise NotMigrated
        try:
            await self.pool.open(wait=True, timeout=timeout)
        except PoolTimeout as e:
            raise DatabaseUnavailable(f"no connection within {timeout:.0f} s: {e}") from e

    async def close(self, timeout: float = 5.0) -> None:
        self.closing = True
        await self.pool.close(timeout=timeout)

    async def schema_ready(self) -> tuple[bool, bool]:
        """(pgvector's type exists, the queue API exists)."""
        async with _typed_errors():
            async with await psycopg.AsyncConnection.connect(
                self.url, application_name=self.app_name
            ) as conn:
                cur = await conn.execute(self.q["schema_ready"])
                row = await cur.fetchone()
        assert row is not None
        return row[0], row[1]

    # -- the one way a statement runs ------------------------------------------------------------

    async def run(
        self, name: str, params: dict[str, Any] | None = None, retry: bool = True
    ) -> list[tuple]:
        """Run the statement `name` and return its rows, under the error policy above."""
        backoff = Backoff(base=0.5, cap=10.0)
        conflicts = 0
        while True:
            try:
                wait = CONNECT_TIMEOUT if retry and not self.closing else 1.0
                async with self.pool.connection(timeout=wait) as conn:
                    cur = await conn.execute(self.q[name], params or {})
                    return await cur.fetchall() if cur.description else []
            except (psycopg.Error, PoolTimeout) as e:
                if is_connection_error(e):
                    if self.closing or not retry:
                        raise typed(e) from e  # DatabaseUnavailable
                    delay = backoff.next_delay()
                    log.warning(
                        "database unavailable; retrying",
                        extra={
                            "fields": {
                                "query": name,
                                "error": first_line(e),
                                "retry_in_s": round(delay, 1),
                            }
                        },
                    )
                    await asyncio.sleep(delay)
                elif is_conflict(e) and conflicts < CONFLICT_RETRIES:
                    conflicts += 1
                    await asyncio.sleep(0.05 * conflicts)
                else:
                    raise typed(e) from e

    async def scalar(self, name: str, params: dict[str, Any] | None = None) -> Any:
        rows = await self.run(name, params)
        return rows[0][0] if rows else None

    async def replica(self) -> Replica | None:
        """On a standby, how far behind its replay is; None on a primary."""
        [(standby, seconds, pending)] = await self.run("replica")
        return Replica(seconds, pending) if standby else None

    async def ping(self) -> bool:
        """Does the database answer (one try, no retry)?"""
        return bool(await self.run("ping", retry=False))

    # -- LISTEN ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def listening(self, channel: str) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection of its own that LISTENs on `channel`; its errors come out typed (the
        caller reconnects on DatabaseUnavailable)."""
        async with _typed_errors():
            async with await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, application_name=self.app_name + " (LISTEN)"
            ) as conn:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                yield conn
